"""Extract throughput from PostgreSQL: ``starsmith``'s extract against ``COPY ... TO STDOUT``.

A private PostgreSQL server (tests/pg_server.py) holds N order rows (``INSERT ... SELECT
generate_series``): int8, text, text with NULLs, numeric(12,2) with NULLs, int4, timestamptz.
Each contender runs in a fresh child process, three rounds interleaved, medians reported:

- ``starsmith``: the extract of one day (``loaders/extract``): ADBC's Arrow stream, conversion
  to the contract's types (numeric to Decimal(12,2), dead-letter checks), a zstd Parquet file,
  its manifest;
- ``copy``: ``psql -c "COPY (the same SELECT: columns, window, order) TO STDOUT (FORMAT csv)"``
  into a file: the server's fastest text export, no typing, no conversion.

Prints rows/s for each and the ratio (starsmith / COPY).
Usage: python benchmarks/pg_extract.py [--rows 2000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg_server

DAY = date(2024, 1, 1)
COLUMNS = "id, customer, note, amount, qty, updated_at"
SELECT = (f"SELECT {COLUMNS} FROM orders WHERE updated_at IS NOT NULL AND updated_at < "
          "TIMESTAMPTZ '2024-01-02T00:00:00+00:00' ORDER BY updated_at")


def load(server: object, rows: int) -> None:
    server.psql(  # type: ignore[attr-defined]
        "CREATE TABLE orders (id int8 PRIMARY KEY, customer text, note text, "
        "amount numeric(12,2), qty int4, updated_at timestamptz NOT NULL); "
        "ALTER TABLE orders OWNER TO starsmith; "
        "INSERT INTO orders SELECT g, 'customer ' || (g % 50000), "
        "CASE WHEN g % 10 = 0 THEN NULL ELSE 'note ' || (g % 977) END, "
        "CASE WHEN g % 20 = 0 THEN NULL ELSE ((g::int8 * 7919) % 10000000) / 100.0 END, "
        "CASE WHEN g % 15 = 0 THEN NULL ELSE (g % 9)::int4 END, "
        f"TIMESTAMPTZ '2024-01-01 00:00+00' + (g % 86000) * interval '1 second' "
        f"FROM generate_series(1, {rows}) g; ANALYZE orders")


def child_starsmith(folder: Path, uri: str) -> None:
    import polars as pl
    from harness import report

    from starsmith.contract import Cadence, Column, Source
    from starsmith.loaders.extract.land import extract_day
    from starsmith.loaders.extract.spec import Postgres

    os.environ["STARSMITH_CONN_BENCH"] = uri
    source = Source("orders", "parquet", (
        Column("id", pl.Int64(), nullable=False), Column("customer", pl.String()),
        Column("note", pl.String()), Column("amount", pl.Decimal(12, 2)),
        Column("qty", pl.Int32()), Column("updated_at", pl.Datetime("us", "UTC"))),
        cadence=Cadence.CHANGE_FEED,
        extract=Postgres(connection="bench", table="orders", cursor="updated_at"))
    landing = folder / "landing"
    shutil.rmtree(landing, ignore_errors=True)
    clock = time.perf_counter()
    result = extract_day(source, DAY, landing, None)
    seconds = time.perf_counter() - clock
    (folder / "starsmith.rows").write_text(str(result.rows))
    report(folder, "starsmith", seconds)


def child_copy(folder: Path, uri: str, psql: str) -> None:
    target = folder / "copy.csv"
    clock = time.perf_counter()
    with target.open("wb") as fh:
        subprocess.run([psql, uri, "-X", "-q", "-c",
                        f"COPY ({SELECT}) TO STDOUT (FORMAT csv)"], stdout=fh, check=True)
    seconds = time.perf_counter() - clock
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (folder / "copy.measure").write_text(f"{seconds} {rss}")
    (folder / "copy.rows").write_text(str(sum(1 for _ in target.open("rb"))))
    target.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, uri, *rest = args.child
        if kind == "starsmith":
            child_starsmith(Path(folder), uri)
        else:
            child_copy(Path(folder), uri, rest[0])
        return

    from harness import measure

    from tests.pg_server import pg_server

    script = str(Path(__file__).resolve())
    with pg_server() as server, tempfile.TemporaryDirectory(prefix="pg-extract-") as tmp:
        folder = Path(tmp)
        clock = time.perf_counter()
        load(server, args.rows)
        print(f"loaded {args.rows:,} rows in {time.perf_counter() - clock:.1f} s")
        psql = str(server.bindir / "psql")
        uri = server.uri()
        times: dict[str, list[float]] = {"starsmith": [], "copy": []}
        rss: dict[str, list[float]] = {"starsmith": [], "copy": []}
        for _ in range(args.rounds):
            for kind in ("copy", "starsmith"):
                seconds, mib = measure(script, kind, folder, uri, psql)
                rows = int((folder / f"{kind}.rows").read_text())
                assert rows == args.rows, f"{kind} read {rows} rows, expected {args.rows}"
                times[kind].append(seconds)
                rss[kind].append(mib)
                print(f"  {kind:9s} {seconds:6.2f} s  {args.rows / seconds:12,.0f} rows/s  "
                      f"peak RSS {mib:6.0f} MiB")
        med = {k: statistics.median(v) for k, v in times.items()}
        for kind in ("copy", "starsmith"):
            print(f"{kind:9s} median {med[kind]:6.2f} s  {args.rows / med[kind]:12,.0f} rows/s  "
                  f"peak RSS {statistics.median(rss[kind]):6.0f} MiB")
        print(f"ratio starsmith / COPY (rows/s): {med['copy'] / med['starsmith']:.2f}")


if __name__ == "__main__":
    main()
