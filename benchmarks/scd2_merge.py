"""SCD2 merge benchmark: starsmith's real dimension step against the same merge in plain DuckDB SQL.

A dim_customer of N current rows (default 10M) takes one day's change feed: 1% of keys changed
(address, so a new version), 0.5% new keys and 0.5% deleted. Both contenders start from a fresh
copy of the same DuckDB file, run in a fresh child process (so peak RSS is theirs alone), with the
same DuckDB memory limit, and end with the published table:

- starsmith: ``run_step(dim_customer)``, the production path: read the day's staging partition,
  read the touched keys' versions from DuckDB (then let go of the blocks that read cached), run
  the Polars SCD builder, stage, audit, publish in one transaction; its process has the Polars
  allocator settings a worker runs with (``starsmith.POLARS_ALLOCATOR``) and has preloaded what
  a step imports, as a worker has;
- baseline: one DuckDB transaction of SQL: type-1 update, close changed and deleted versions,
  insert new versions numbered after max(key).

Prints each round and the medians, the ratio, and peak RSS against the dimension's Parquet size.
``--history H`` gives every key H closed versions before its current row: a change then rewrites
the key's changed rows only (the baseline's UPDATE touches only current rows too).

Usage: python benchmarks/scd2_merge.py [--rows 10000000] [--rounds 3] [--history 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from harness import peak_rss_mib

from starsmith import POLARS_ALLOCATOR

DAY = date(2024, 3, 1)
PREV = datetime(2024, 2, 1)
OPEN = datetime(9999, 12, 31)


def with_history(dim: pl.DataFrame, history: int) -> pl.DataFrame:
    """Each key's current row plus ``history`` closed versions before it, 30 days apart (another
    address each), keyed after every current row."""
    rows = dim.height
    older = [dim.with_columns(
        customer_key=pl.col("customer_key") + h * rows, address=pl.lit(f"{h} Old Road"),
        valid_from=pl.col("valid_from") - pl.duration(days=30 * h),
        valid_to=pl.col("valid_from") - pl.duration(days=30 * (h - 1)),
        is_current=pl.lit(False)) for h in range(1, history + 1)]
    return pl.concat([dim, *older])


def make_warehouse(folder: Path, rows: int, history: int = 0) -> Path:
    """The dimension plus the day's staging partition, in a warehouse starsmith can build."""
    rng = np.random.default_rng(1)
    ids = np.arange(1, rows + 1)
    dim = pl.DataFrame({
        "customer_key": ids, "customer_id": ids,
        "name": "Customer " + pl.Series(rng.integers(0, 10**9, rows)).cast(pl.String),
        "email": pl.Series(rng.integers(0, 10**12, rows)).cast(pl.String) + "@example.com",
        "address": pl.Series(rng.integers(1, 999, rows)).cast(pl.String) + " Rua Augusta",
        "city": pl.Series(rng.choice(["Lisbon", "Porto", "Faro"], rows)),
        "segment": pl.Series(rng.choice(["CONS", "CORP", "SMB"], rows)),
        "valid_from": pl.Series(np.datetime64(PREV, "us")
                                - rng.integers(0, 365 * 86_400, rows).astype("timedelta64[s]")),
        "valid_to": pl.repeat(OPEN, rows, eager=True),
        "is_current": pl.repeat(True, rows, eager=True), "is_deleted": pl.repeat(False, rows, eager=True),
        "is_inferred": pl.repeat(False, rows, eager=True),
        "run_id": pl.repeat("build-2024-02-01", rows, eager=True),
    })
    reserved = dim.head(2).with_columns(
        customer_key=pl.Series([-1, -2]), customer_id=pl.lit(None, pl.Int64),
        name=pl.Series(["Unknown", "Not applicable"]), email=pl.Series(["Unknown", "Not applicable"]),
        address=pl.Series(["Unknown", "Not applicable"]), city=pl.Series(["Unknown", "Not applicable"]),
        segment=pl.Series(["Unknown", "Not applicable"]), valid_from=pl.lit(datetime(1900, 1, 1)),
        run_id=pl.lit("reserved"))
    pick = rng.permutation(rows)
    n_change, n_delete, n_new = rows // 100, rows // 200, rows // 200
    changed = dim[pick[:n_change]].with_columns(address=pl.lit("1 New Street"), op=pl.lit("U"))
    deleted = dim[pick[n_change:n_change + n_delete]].with_columns(op=pl.lit("D"))
    new_ids = np.arange(rows + 1, rows + n_new + 1)
    new = dim.head(n_new).with_columns(customer_id=pl.Series(new_ids), op=pl.lit("I"))
    cols = ["customer_id", "name", "email", "address", "city", "segment", "op"]
    batch = pl.concat([changed.select(cols), deleted.select(cols), new.select(cols)]).with_columns(
        updated_at=pl.lit(datetime(2024, 3, 1, 12)),
        change_seq=pl.int_range(pl.len(), dtype=pl.Int64),
        is_delete=pl.col("op") == "D", load_date=pl.lit(DAY),
    )
    path = folder / "base.duckdb"
    con = duckdb.connect(str(path))
    dim = with_history(dim, history)
    con.register("d", pl.concat([reserved, dim]).to_arrow())
    con.execute("CREATE TABLE dim_customer AS SELECT * FROM d")
    con.register("b", batch.to_arrow())
    con.execute("CREATE TABLE stg_customers AS SELECT * FROM b")
    con.close()
    dim.write_parquet(folder / "dim.parquet")
    return path


BASELINE_SQL = """
BEGIN;
CREATE TEMP TABLE b AS SELECT * FROM stg_customers WHERE load_date = DATE '{day}';
UPDATE dim_customer d SET name = b.name, email = b.email
  FROM b WHERE d.customer_id = b.customer_id AND NOT b.is_delete
  AND (d.name IS DISTINCT FROM b.name OR d.email IS DISTINCT FROM b.email);
CREATE TEMP TABLE changed AS
  SELECT b.* FROM b LEFT JOIN dim_customer d ON d.customer_id = b.customer_id AND d.is_current
  WHERE d.customer_id IS NULL OR b.is_delete <> d.is_deleted
     OR (NOT b.is_delete AND (d.address IS DISTINCT FROM b.address OR d.city IS DISTINCT FROM b.city
         OR d.segment IS DISTINCT FROM b.segment));
UPDATE dim_customer d SET valid_to = c.updated_at, is_current = false, run_id = 'build-{day}'
  FROM changed c WHERE d.customer_id = c.customer_id AND d.is_current;
INSERT INTO dim_customer
  SELECT (SELECT max(customer_key) FROM dim_customer) + row_number() OVER (ORDER BY customer_id),
         customer_id, name, email, address, city, segment, updated_at, TIMESTAMP '9999-12-31',
         true, is_delete, false, 'build-{day}'
  FROM changed;
COMMIT;
"""


def child(kind: str, path: str, memory_limit: str) -> None:
    """One contender in this fresh process; records its step time (after imports) and peak RSS."""
    if kind == "starsmith":
        from starsmith.orchestration.messages import StepRequest
        from starsmith.orchestration.step import preload, run_step
        from starsmith.scaffold import demo_catalogue

        cat = preload(demo_catalogue())  # a worker imports once, before its first step
        started = time.perf_counter()
        run_step(StepRequest("dim_customer", DAY.isoformat(), f"build-{DAY}", "/nonexistent", path,
                             memory_limit=memory_limit), cat)
    else:
        started = time.perf_counter()
        con = duckdb.connect(path, config={"memory_limit": memory_limit})
        con.execute(BASELINE_SQL.format(day=DAY))
        con.close()
    step_s = time.perf_counter() - started
    Path(path).with_suffix(".rss").write_text(f"{peak_rss_mib()} {step_s}")


def measure(kind: str, base: Path, memory_limit: str) -> tuple[float, float, float, int]:
    work = base.with_name(f"{kind}.duckdb")
    shutil.copyfile(base, work)
    started = time.perf_counter()
    # The allocator settings a starsmith worker runs with (its entry points set them before
    # Polars loads; this script imports Polars first, so the child gets them from here).
    env = os.environ | ({"_RJEM_MALLOC_CONF": POLARS_ALLOCATOR} if kind == "starsmith" else {})
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(work), memory_limit],
                            env=env)
    status = proc.wait()
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{kind} failed with status {status}")
    rss, step_s = (float(x) for x in work.with_suffix(".rss").read_text().split())
    con = duckdb.connect(str(work), read_only=True)
    rows = con.sql("SELECT count(*) FROM dim_customer").fetchall()[0][0]
    con.close()
    return elapsed, step_s, rss, int(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--history", type=int, default=0,
                        help="closed versions per key before its current one")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        base = make_warehouse(folder, args.rows, args.history)
        parquet_mb = (folder / "dim.parquet").stat().st_size / 2**20
        print(f"dimension: {args.rows:,} keys x {args.history + 1} versions, Parquet {parquet_mb:.0f} MiB "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        results: dict[str, list[tuple[float, float, float, int]]] = {"starsmith": [], "duckdb_sql": []}
        for r in range(args.rounds):
            for kind in ("starsmith", "duckdb_sql") if r % 2 == 0 else ("duckdb_sql", "starsmith"):
                wall, step, rss, rows = measure(kind, base, args.memory_limit)
                results[kind].append((wall, step, rss, rows))
                print(f"round {r + 1} {kind:>10}: step {step:6.2f} s, process {wall:6.2f} s, "
                      f"peak RSS {rss:7.0f} MiB, rows {rows:,}")
        med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
        s, d = med["starsmith"], med["duckdb_sql"]
        print(f"\nmedians over {args.rounds} rounds (memory_limit {args.memory_limit}):")
        print(f"  starsmith  step {s[1]:.2f} s, process {s[0]:.2f} s, peak RSS {s[2]:.0f} MiB")
        print(f"  duckdb_sql step {d[1]:.2f} s, process {d[0]:.2f} s, peak RSS {d[2]:.0f} MiB")
        print(f"  ratio starsmith / duckdb_sql: step {s[1] / d[1]:.2f}, process {s[0] / d[0]:.2f}")
        print(f"  starsmith peak RSS / dimension Parquet size ({parquet_mb:.0f} MiB): "
              f"{s[2] / parquet_mb:.2f}x")
        rows_s = {v[0][3] for v in results.values()}
        print(f"  both end with the same row count: {len(rows_s) == 1} ({rows_s})")

if __name__ == "__main__":
    main()
