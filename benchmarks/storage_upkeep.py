"""Storage upkeep over many nights: DuckDB's own vacuum against starsmith's compaction.

An SCD publish deletes the changed versions' rows and inserts them again, so deleted rows
pile up in the table's row groups. DuckDB's default vacuums at every checkpoint; starsmith turns
that off (``max_vacuum_tasks=0``) and rewrites the table once deleted rows pass ``COMPACT_AT`` of
those stored (``loaders/duckdb/warehouse.py``, whose connection and bookkeeping run here). Each
night does the publish's DuckDB work on the 10M-row dimension of ``scd2_merge.py``: 150k
scattered keys have their rows deleted, then their closed and their new versions inserted,
commit, close (the checkpoint). Reports the time a night (median, and mean with the
compactions), the compactions, rows stored against rows live, and the file's size, for both.
Usage: python benchmarks/storage_upkeep.py [--nights 30] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from scd2_merge import make_warehouse

from starsmith.loaders.duckdb import DuckDBWarehouse, records

NIGHT = (
    "CREATE TEMP TABLE old AS SELECT * FROM dim_customer"
    " WHERE customer_id IN (SELECT customer_id FROM _k) AND is_current",
    "DELETE FROM dim_customer WHERE customer_id IN (SELECT customer_id FROM _k)",
    "INSERT INTO dim_customer SELECT * REPLACE (TIMESTAMP '2024-03-01' AS valid_to,"
    " false AS is_current) FROM old",
    "INSERT INTO dim_customer SELECT * REPLACE (customer_key + {offset} AS customer_key,"
    " TIMESTAMP '2024-03-01' AS valid_from) FROM old",
    "DROP TABLE old",
)


def nights(path: Path, count: int, rows: int, *, compact: bool) -> tuple[list[float], int]:
    """Run the nights on ``path``; returns each night's seconds and how many compactions ran.

    With ``compact``, a night runs on the warehouse's own connection (DuckDB's vacuum off) and
    ends with its own bookkeeping: the deleted rows counted, the table compacted past the
    threshold. Without, on a plain connection with DuckDB's defaults.
    """
    rng = np.random.default_rng(7)
    wh = DuckDBWarehouse(path)
    seconds, compactions = [], 0
    for n in range(count):
        with wh.connect() if compact else contextlib.closing(duckdb.connect(str(path))) as con:
            con.register("_k", pa.table({"customer_id": rng.choice(rows, 150_000,
                                                                   replace=False) + 1}))
            started = time.perf_counter()
            con.execute("BEGIN")
            deleted = 0
            for statement in NIGHT:
                result = con.execute(statement.format(offset=2 * rows + n * 200_000)).fetchall()
                deleted += int(result[0][0]) if statement.startswith("DELETE") else 0
            if compact:
                records.count_deleted(con, "dim_customer", deleted, reset=False)
            con.execute("COMMIT")
            if compact:
                before = con.sql("SELECT count(*) FROM _starsmith.table_upkeep").fetchall()[0][0]
                records.compact(con, "dim_customer", at=wh.compact_at,
                                min_rows=wh.compact_min_rows)
                compactions += before > con.sql(
                    "SELECT count(*) FROM _starsmith.table_upkeep").fetchall()[0][0]
        seconds.append(time.perf_counter() - started)  # the close (checkpoint) included
    return seconds, compactions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        base = make_warehouse(folder, args.rows)
        print(f"{args.nights} nights of 150k changed keys on a {args.rows:,}-row dimension")
        for kind, compact in (("duckdb_vacuum", False), ("starsmith", True)):
            path = folder / f"{kind}.duckdb"
            shutil.copyfile(base, path)
            seconds, compactions = nights(path, args.nights, args.rows, compact=compact)
            con = duckdb.connect(str(path), read_only=True)
            stored = con.sql("SELECT estimated_size FROM duckdb_tables() "
                             "WHERE table_name = 'dim_customer'").fetchall()[0][0]
            live = con.sql("SELECT count(*) FROM dim_customer").fetchall()[0][0]
            con.close()
            print(f"  {kind:>13}: night median {statistics.median(seconds):.2f} s, mean "
                  f"{statistics.mean(seconds):.2f} s (with {compactions} compaction(s)); "
                  f"rows stored {stored:,} for {live:,} live; "
                  f"file {path.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
