"""Point-in-time key lookups: starsmith's packed lookup (facts/keys.py) against DuckDB's range join.

Four SCD2 dimensions of K keys x 1-5 versions each (~3; boundaries spread over 2023), and N facts
with four natural keys and an event time. Two cases:

- ``night``: every event falls on the last day (a nightly batch: most facts are in their key's
  current version);
- ``year``: events spread over the year (a full rebuild: most facts are in older versions, and
  the keys with five versions send their oldest facts to the second level of slots).

Each contender runs in a fresh child process on the same Parquet inputs and writes its result as
Parquet (snappy, DuckDB's default codec, for both). starsmith packs each dimension once and keys
the facts ``--batch`` rows at a time, writing a part per batch, as the fact step builds and
stages batches of partitions. Peak RSS is the child's own (VmHWM). Key sums are compared to prove
both found the same keys.
Usage: python benchmarks/pit_lookup.py [--facts 5000000] [--keys 1000000] [--rounds 3]
       [--batch 5000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from harness import measure, report

DIMS = ("customer", "product", "store", "promo")
START = datetime(2023, 1, 1)
OPEN = datetime(9999, 12, 31)


def make_inputs(folder: Path, n_facts: int, n_keys: int, case: str) -> None:
    rng = np.random.default_rng(3)
    year_us = 365 * 86_400 * 10**6
    for name in DIMS:
        per_key = rng.integers(1, 6, n_keys)  # 1..5 versions, ~3 on average
        key = np.repeat(np.arange(1, n_keys + 1), per_key)
        first = np.r_[0, np.cumsum(per_key)[:-1]]
        offs = rng.integers(0, year_us, key.size)
        offs[first] = 0  # the first version starts at START
        df = pl.DataFrame({f"{name}_id": key, "_off": offs}).sort(f"{name}_id", "_off")
        start = pl.lit(START) + pl.duration(microseconds=pl.col("_off"))
        nxt = start.shift(-1).over(f"{name}_id")
        df = df.with_columns(valid_from=start, valid_to=pl.coalesce(nxt, pl.lit(OPEN)))
        df = df.with_columns(
            **{f"{name}_key": pl.int_range(1, pl.len() + 1, dtype=pl.Int64)},
            is_current=pl.col("valid_to") == OPEN).drop("_off")
        df.write_parquet(folder / f"dim_{name}.parquet")
    if case == "night":
        ts = np.datetime64(datetime(2023, 12, 31), "us") + rng.integers(
            0, 86_400 * 10**6, n_facts).astype("timedelta64[us]")
    else:
        ts = np.datetime64(START, "us") + rng.integers(0, year_us, n_facts).astype("timedelta64[us]")
    pl.DataFrame({
        "fact_id": np.arange(n_facts), "event_ts": ts,
        **{f"{n}_id": rng.integers(1, n_keys + 1, n_facts) for n in DIMS},
        "amount": rng.integers(1, 10_000, n_facts),
    }).write_parquet(folder / "facts.parquet")


def run_starsmith(folder: Path, batch: int) -> None:
    """Pack each dimension once, then key the facts ``batch`` rows at a time, each batch written
    as a Parquet part (as the fact step stages a batch of partitions): memory is one batch's."""
    from starsmith.dimensions import ChangeDetection, DimensionSpec
    from starsmith.facts.keys import KeyIndex
    from starsmith.facts.spec import KeyLookup

    indexes = []
    for name in DIMS:
        spec = DimensionSpec(name=f"dim_{name}", surrogate_key=f"{name}_key",
                             natural_key=(f"{name}_id",), columns=(),
                             detection=ChangeDetection.CHECK)
        versions = pl.scan_parquet(folder / f"dim_{name}.parquet")
        indexes.append(KeyIndex(versions, KeyLookup(spec, (f"{name}_id",), "event_ts")))
    out = folder / "out_starsmith"
    out.mkdir(exist_ok=True)
    rows = pl.scan_parquet(folder / "facts.parquet").select(pl.len()).collect().item()
    for part, offset in enumerate(range(0, rows, batch)):
        facts = pl.scan_parquet(folder / "facts.parquet").slice(offset, batch).collect()
        for index in indexes:
            facts = index.lookup(facts).facts.drop("_match").collect()
        facts.select("fact_id", "event_ts", "amount", *[f"{n}_key" for n in DIMS]).write_parquet(
            out / f"part-{part:04d}.parquet", compression="snappy")


def run_duckdb(folder: Path) -> None:
    import duckdb

    joins = "\n".join(
        f"LEFT JOIN read_parquet('{folder}/dim_{n}.parquet') d_{n} ON d_{n}.{n}_id = f.{n}_id "
        f"AND d_{n}.valid_from <= f.event_ts AND f.event_ts < d_{n}.valid_to" for n in DIMS)
    keys = ", ".join(f"coalesce(d_{n}.{n}_key, -1) AS {n}_key" for n in DIMS)
    con = duckdb.connect(config={"memory_limit": "8GB"})
    con.execute(f"""COPY (SELECT f.fact_id, f.event_ts, f.amount, {keys}
                    FROM read_parquet('{folder}/facts.parquet') f {joins})
                    TO '{folder}/out_duckdb.parquet' (FORMAT parquet)""")


def child(kind: str, folder: str, batch: str) -> None:
    started = time.perf_counter()
    if kind == "starsmith":
        run_starsmith(Path(folder), int(batch))
    else:
        run_duckdb(Path(folder))
    report(Path(folder), kind, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=5_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5_000_000,
                        help="facts keyed at once by starsmith")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for case in ("night", "year"):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            folder = Path(tmp)
            make_inputs(folder, args.facts, args.keys, case)
            res: dict[str, list[tuple[float, float]]] = {"starsmith": [], "duckdb": []}
            for r in range(args.rounds):
                for kind in ("starsmith", "duckdb") if r % 2 == 0 else ("duckdb", "starsmith"):
                    res[kind].append(measure(__file__, kind, folder, str(args.batch)))
            outputs = {"starsmith": folder / "out_starsmith" / "*.parquet",
                       "duckdb": folder / "out_duckdb.parquet"}
            sums = [pl.scan_parquet(outputs[k]).select(
                [pl.col(f"{n}_key").sum() for n in DIMS]).collect().row(0) for k in res]
            med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
                   for k, v in res.items()}
            print(f"{case}: {args.facts:,} facts x 4 lookups into {args.keys:,} keys x ~3 versions"
                  f" (starsmith keys {args.batch:,} facts at a time)")
            for k, (t, rss) in med.items():
                print(f"  {k:10s} {t:6.2f} s  peak RSS {rss:6.0f} MiB  "
                      f"rounds {', '.join(f'{x[0]:.2f}' for x in res[k])}")
            print(f"  ratio starsmith / duckdb: {med['starsmith'][0] / med['duckdb'][0]:.2f}; "
                  f"same keys: {sums[0] == sums[1]}")


if __name__ == "__main__":
    main()
