"""The demo build reading its landing zone from S3 against reading the same files from a folder.

The same landed days (``starsmith demo``'s generator) are written to a local folder and uploaded
to a bucket of moto's S3 server, started here on 127.0.0.1. Each round builds every model for
every day in a fresh child process (``run_plan``, no Temporal) into a fresh DuckDB file: once
from the folder, once from ``s3://``; rounds are interleaved and their order alternates. What
the S3 build adds is the object store's round trips: a LIST and a GET of the manifest per source
and day, the sha256 of each file streamed, the files scanned by Polars' cloud readers. The
emulator is local and in memory, so this shows the client's overhead, not a network's.

Prints the medians, their ratio, and whether both builds end with the same tables (row counts
and an order-free hash of every row, per table).
Usage: python benchmarks/s3_landing.py [--days 3] [--scale 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
from harness import measure, report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.s3_helpers import moto_server  # noqa: E402

BUCKET, PREFIX = "bench-landing", "zone"
KINDS = ("folder", "s3")


def child(kind: str, folder: Path, days: int) -> None:
    """Build the demo from the folder or from the bucket into ``<kind>.duckdb``, and report."""
    from starsmith.orchestration.local import run_plan
    from starsmith.orchestration.plan import make_plan
    from starsmith.scaffold import demo_catalogue

    wh = folder / f"{kind}.duckdb"
    wh.unlink(missing_ok=True)
    landing = str(folder / "landing") if kind == "folder" else f"s3://{BUCKET}/{PREFIX}"
    cat = demo_catalogue()
    dates = [date(2024, 1, 1) + timedelta(days=i) for i in range(days)]
    started = time.perf_counter()
    outcomes = run_plan(make_plan(cat, list(cat.order), dates), landing=landing,
                        warehouse=str(wh), memory_limit="2GB", catalogue=cat)
    elapsed = time.perf_counter() - started
    assert all(o.ok for o in outcomes), [o.failed for o in outcomes]
    report(folder, kind, elapsed)


def fingerprint(wh: Path) -> dict[str, tuple[int, int]]:
    """Per table of the star: its row count and the sum of its rows' hashes (order-free)."""
    with duckdb.connect(str(wh), read_only=True) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        out = {}
        for name in names:
            row = con.execute(f'SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) '
                              f'FROM main."{name}" t').fetchone()
            assert row is not None
            out[name] = (int(row[0]), int(row[1]))
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    from starsmith.demo_data import write_landing
    from starsmith.loaders.store import ObjectPath, upload

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp, \
            moto_server() as s3:
        folder = Path(tmp)
        write_landing(folder / "landing", days=args.days, scale=args.scale)
        files = [p for p in (folder / "landing").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        s3.bucket(BUCKET)
        os.environ.update(s3.env())  # the children read the bucket through the AWS_* chain
        upload(folder / "landing", ObjectPath("s3", BUCKET, PREFIX))
        print(f"{args.days} days at scale {args.scale}: {len(files)} files, "
              f"{size / 2**20:.1f} MiB, in {folder / 'landing'} and s3://{BUCKET}/{PREFIX} "
              f"(moto on {s3.endpoint})")
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
        for r in range(args.rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                res[kind].append(measure(__file__, kind, folder, str(args.days)))
        same = fingerprint(folder / "folder.duckdb") == fingerprint(folder / "s3.duckdb")
        tables = fingerprint(folder / "folder.duckdb")
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for k, v in res.items()}
    print(f"every model x {args.days} days, in process, medians of {args.rounds} rounds:")
    for k, (t, rss) in med.items():
        print(f"  {k:7s} {t:6.2f} s  peak RSS {rss:6.0f} MiB  "
              f"rounds {', '.join(f'{x[0]:.2f}' for x in res[k])}")
    print(f"  ratio s3 / folder: {med['s3'][0] / med['folder'][0]:.2f}; same tables "
          f"({len(tables)}, {sum(n for n, _ in tables.values()):,} rows): {same}")
    if not same:
        raise SystemExit("the builds differ")


if __name__ == "__main__":
    main()
