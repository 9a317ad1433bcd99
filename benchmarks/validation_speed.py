"""Validation against build: the same 9-rule suite on a staged layer of 1M and 10M rows.

The "build" is a staging step's work on the layer (read the day's Parquet, deduplicate, derive
columns, write the staged Parquet). The suite is checked by starsmith's SQL fast path (one DuckDB
pass over the staged file) and by great-expectations on pandas (what GX offers for this data
without patches). Each runs in a fresh child process; times and peak RSS (VmHWM) are its own.
Usage: python benchmarks/validation_speed.py [--rows 1000000 10000000] [--gx-max 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from harness import measure, report

SUITE = [
    ("expect_column_values_to_not_be_null", {"column": "order_id"}),
    ("expect_column_values_to_not_be_null", {"column": "product_id", "mostly": 0.99}),
    ("expect_column_values_to_not_be_null", {"column": "line_ts"}),
    ("expect_compound_columns_to_be_unique", {"column_list": ["order_id", "line_no"]}),
    ("expect_column_values_to_be_between", {"column": "quantity", "min_value": -100,
                                            "max_value": 100}),
    ("expect_column_values_to_be_between", {"column": "net_amount", "min_value": -1e5,
                                            "max_value": 1e5}),
    ("expect_column_values_to_be_in_set", {"column": "channel",
                                           "value_set": ["web", "store", "phone"]}),
    ("expect_column_values_to_match_regex", {"column": "sku", "regex": r"^SKU-\d{7}$"}),
    ("expect_table_row_count_to_be_between", {"min_value": 1}),
]


def make_landing(path: Path, rows: int) -> None:
    rng = np.random.default_rng(5)
    pl.DataFrame({
        "order_id": rng.integers(1, rows // 3, rows), "line_no": np.arange(rows) % 7 + 1,
        "product_id": rng.integers(1, 100_000, rows), "quantity": rng.integers(1, 6, rows),
        "unit_price": rng.uniform(1, 500, rows).round(2), "discount": np.zeros(rows),
        "line_ts": np.datetime64("2024-01-01", "us") + rng.integers(
            0, 86_400 * 10**6, rows).astype("timedelta64[us]"),
        "channel": rng.choice(["web", "store", "phone"], rows),
    }).with_columns(order_id=pl.col("order_id") * 7 + pl.col("line_no")).write_parquet(path)


def child(kind: str, folder: Path) -> None:
    started = time.perf_counter()
    staged = folder / "staged.parquet"
    if kind == "build":
        (pl.scan_parquet(folder / "landing.parquet").unique()
         .with_columns(sale_date=pl.col("line_ts").dt.date(),
                       net_amount=pl.col("quantity") * pl.col("unit_price") - pl.col("discount"),
                       sku="SKU-" + pl.col("product_id").cast(pl.String).str.zfill(7))
         .sink_parquet(staged))
    elif kind == "sql":
        from starsmith.loaders.duckdb import DuckDBWarehouse
        from starsmith.quality.expect import Expect
        from starsmith.quality.sql_engine import run_sql

        wh = DuckDBWarehouse(folder / "wh.duckdb", memory_limit="4GB")
        with wh.session():
            out = run_sql(wh, f"read_parquet('{staged}')",
                          [Expect(t, **kw) for t, kw in SUITE])
        assert len(out) == len(SUITE)
    else:
        from starsmith.quality.expect import Expect
        from starsmith.quality.gx_engine import run_expectations

        frame = pl.read_parquet(staged)
        out = run_expectations(frame, "bench", [Expect(t, **kw) for t, kw in SUITE])
        assert len(out) == len(SUITE)
    report(folder, kind, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--gx-max", type=int, default=1_000_000,
                        help="largest layer to also run through GX on pandas (slow)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    for rows in args.rows:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            folder = Path(tmp)
            make_landing(folder / "landing.parquet", rows)
            kinds = ["build", "sql"] + (["gx"] if rows <= args.gx_max else [])
            res: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    res[kind].append(measure(__file__, kind, folder))
            med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
                   for k, v in res.items()}
            print(f"{rows:,} rows, 9 rules, medians of {args.rounds}:")
            for k, (t, rss) in med.items():
                print(f"  {k:6s} {t:6.2f} s  peak RSS {rss:6.0f} MiB  "
                      f"({t / med['build'][0]:.2f}x the build)")


if __name__ == "__main__":
    main()
