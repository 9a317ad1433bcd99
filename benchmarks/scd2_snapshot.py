"""SCD2 from a full-snapshot source: starsmith's production step, plain DuckDB SQL, dbt snapshot.

A dimension of N accounts (default 10M) with 8 text attributes, all tracked (type 2), was built
from day 1's snapshot. Day 2's snapshot lands whole, as dbt snapshot expects: every row arrives,
1% of them with one attribute changed, 0.5% of the keys gone (deleted: their version closes) and
0.5% new. Each contender starts from a fresh copy of the same DuckDB file, in a fresh process (so
peak RSS is its own), with the same DuckDB memory limit, and ends with the day applied:

- starsmith: ``run_step(dim_account)`` on day 2, the production path (read the staged snapshot,
  run the model's transform, hash each record and join (key, hash) in the engine with the
  hashes stored for the live versions to find the records that can change something, build
  their keys' versions, stage, audit, publish in one transaction). The file it starts from is
  the one its day-1 step left: that step found nothing changed and stored the hashes;
- duckdb_sql: one transaction of plain SQL (full join of the current versions with the snapshot,
  ``IS DISTINCT FROM`` on every attribute, close changed and gone versions, insert new ones);
- dbt: ``dbt snapshot`` (strategy ``check`` on all 8 columns, ``hard_deletes: invalidate``) of
  dbt-duckdb, end to end as a user runs it (process start, parse, the snapshot's SQL). Needs the
  optional ``bench`` extra (``pip install -e '.[bench]'``) or ``--dbt PATH`` to a ``dbt`` binary;
  skipped with a note when there is none. Its snapshot of day 1 is taken when the file is made.

Prints each round, medians of the rounds (contenders interleaved), the ratios, and whether the
contenders end with the same current rows and the same number of versions.

Usage: python benchmarks/scd2_snapshot.py [--rows 10000000] [--rounds 3] [--dbt PATH]
       [--distinct 9]
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

DAY1, DAY2 = date(2024, 3, 1), date(2024, 3, 2)
OPEN = datetime(9999, 12, 31)
ATTRS = [f"a{i}" for i in range(1, 9)]
VALUES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]

TOML = """\
name = "bench"
models = "models"
landing = "landing"
state = ".state"
"""

MODEL = f'''\
import polars as pl

from starsmith import Cadence, Column, Input, Kind, Model, Source, Strategy
from starsmith.contract import dimension_columns
from starsmith.dimensions import ChangeDetection, DeletePolicy, DimensionSpec, SCDType

ATTRS = {ATTRS!r}
ACCOUNTS = Source("accounts", "parquet",
                  (Column("account_id", pl.Int64(), "account"),
                   *(Column(a, pl.String(), a) for a in ATTRS)), cadence=Cadence.SNAPSHOT)
STG = Model(
    name="stg_accounts", kind=Kind.STAGING, inputs=(Input("landing.accounts"),),
    columns=(*ACCOUNTS.columns, Column("load_date", pl.Date(), "landing day", nullable=False)),
    transform=lambda i, ctx: i["landing.accounts"], strategy=Strategy.PARTITION,
    partition_by="load_date", description="accounts")
SPEC = DimensionSpec(
    name="dim_account", surrogate_key="account_key", natural_key=("account_id",),
    columns=tuple((a, SCDType.VERSIONED) for a in ATTRS), detection=ChangeDetection.CHECK,
    snapshot=True, deletes=DeletePolicy.INVALIDATE)
DIM = Model(
    name="dim_account", kind=Kind.DIMENSION, inputs=(Input("stg_accounts"),),
    columns=dimension_columns(SPEC, ACCOUNTS.columns), transform=lambda i, ctx:
    i["stg_accounts"].select("account_id", *ATTRS), strategy=Strategy.SCD, dimension=SPEC,
    unique_key=("account_key",), description="accounts")
'''

DBT_PROJECT = """\
name: bench
version: "1.0"
profile: bench
snapshot-paths: ["snapshots"]
"""
DBT_PROFILES = """\
bench:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: {path}
      threads: 1
      settings:
        memory_limit: {memory_limit}
"""
DBT_SNAPSHOT = f"""\
{{% snapshot accounts_snapshot %}}
{{{{ config(target_schema='snapshots', unique_key='account_id', strategy='check',
          check_cols={ATTRS!r}, hard_deletes='invalidate') }}}}
select account_id, {", ".join(ATTRS)} from main.landing_accounts
{{% endsnapshot %}}
"""

BASELINE_SQL = f"""
BEGIN;
CREATE TEMP TABLE changed AS
  SELECT s.account_id AS new_id, d.account_id AS old_id, s.* EXCLUDE (account_id, load_date)
  FROM (SELECT * FROM stg_accounts WHERE load_date = DATE '{DAY2}') s
  FULL JOIN (SELECT * FROM dim_account WHERE is_current AND account_key >= 0) d
    ON s.account_id = d.account_id
  WHERE d.account_id IS NULL OR s.account_id IS NULL
     OR {" OR ".join(f"s.{a} IS DISTINCT FROM d.{a}" for a in ATTRS)};
UPDATE dim_account d SET valid_to = TIMESTAMP '{DAY2}', is_current = false,
       run_id = 'build-{DAY2}'
  FROM changed c WHERE d.account_id = c.old_id AND d.is_current;
INSERT INTO dim_account
  SELECT (SELECT max(account_key) FROM dim_account) + row_number() OVER (ORDER BY new_id),
         new_id, {", ".join(ATTRS)}, TIMESTAMP '{DAY2}', TIMESTAMP '9999-12-31', true, false,
         false, 'build-{DAY2}'
  FROM changed WHERE new_id IS NOT NULL;
COMMIT;
"""


def snapshots(rows: int, distinct: int = len(VALUES)) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Day 1's snapshot and day 2's (1% changed, 0.5% gone, 0.5% new). Each attribute takes one
    of ``distinct`` values: 9 words by default (they compress to a dictionary in DuckDB), or
    texts like ``alpha-483920`` (names and addresses do not)."""
    rng = np.random.default_rng(1)
    pool = pl.Series(VALUES)

    def values() -> pl.Series:
        if distinct <= len(VALUES):
            return pool.gather(rng.integers(0, distinct, rows))
        return pool.gather(rng.integers(0, len(VALUES), rows)) + "-" + pl.Series(
            rng.integers(0, distinct, rows)).cast(pl.String)

    day1 = pl.DataFrame({"account_id": np.arange(1, rows + 1)}).with_columns(
        **{a: values() for a in ATTRS})
    pick = rng.permutation(rows)
    n_change, n_gone, n_new = rows // 100, rows // 200, rows // 200
    changed = pl.Series(np.zeros(rows, dtype=bool)).scatter(pick[:n_change], True)
    gone = pl.Series(np.zeros(rows, dtype=bool)).scatter(pick[n_change:n_change + n_gone], True)
    day2 = day1.with_columns(a3=pl.when(changed).then(pl.lit("changed")).otherwise("a3")
                             ).filter(~gone)
    new = day1.head(n_new).with_columns(account_id=pl.int_range(rows + 1, rows + n_new + 1))
    return day1, pl.concat([day2, new]).sample(fraction=1.0, shuffle=True, seed=2)


def write_project(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "starsmith.toml").write_text(TOML)
    (folder / "models" / "accounts.py").write_text(MODEL)
    return folder


def make_warehouse(folder: Path, rows: int, dbt: str | None, memory_limit: str,
                   distinct: int = len(VALUES)) -> Path:
    """The dimension after day 1, day 2's staged snapshot, and (with dbt) dbt's snapshot of
    day 1 with day 2 in the table it reads."""
    day1, day2 = snapshots(rows, distinct)
    n = day1.height
    dim = day1.select(
        pl.int_range(1, n + 1, dtype=pl.Int64).alias("account_key"), "account_id", *ATTRS,
        pl.lit(datetime(2024, 3, 1)).alias("valid_from"), pl.lit(OPEN).alias("valid_to"),
        pl.lit(True).alias("is_current"), pl.lit(False).alias("is_deleted"),
        pl.lit(False).alias("is_inferred"), pl.lit(f"build-{DAY1}").alias("run_id"))
    reserved = dim.head(2).with_columns(
        account_key=pl.Series([-1, -2]), account_id=pl.lit(None, pl.Int64),
        **{a: pl.Series(["Unknown", "Not applicable"]) for a in ATTRS},
        valid_from=pl.lit(datetime(1900, 1, 1)), run_id=pl.lit("reserved"))
    path = folder / "base.duckdb"
    con = duckdb.connect(str(path))
    con.register("d", pl.concat([reserved, dim]).to_arrow())
    con.execute("CREATE TABLE dim_account AS SELECT * FROM d")
    con.register("s", day1.with_columns(load_date=pl.lit(DAY1)).to_arrow())
    con.execute("CREATE TABLE stg_accounts AS SELECT * FROM s")
    con.register("s", day2.with_columns(load_date=pl.lit(DAY2)).to_arrow())
    con.execute("INSERT INTO stg_accounts SELECT * FROM s")
    if dbt:
        con.register("l", day1.to_arrow())
        con.execute("CREATE TABLE landing_accounts AS SELECT * FROM l")
    con.close()
    # Day 1 as starsmith's nightly build leaves it: a step that finds nothing changed and stores
    # the live versions' hashes, as the first night on a dimension does (orchestration/row_hashes.py)
    subprocess.run([sys.executable, __file__, "--child", "day1", str(path), memory_limit,
                    str(folder / "project")], check=True)
    if dbt:
        run_dbt(dbt, folder / "dbt", path, memory_limit)
        con = duckdb.connect(str(path))
        con.execute("CREATE OR REPLACE TABLE landing_accounts AS"
                    f" SELECT * EXCLUDE (load_date) FROM stg_accounts WHERE load_date = '{DAY2}'")
        con.close()
    return path


def run_dbt(dbt: str, folder: Path, path: Path, memory_limit: str) -> None:
    """``dbt snapshot`` on the warehouse at ``path``, as a user runs it."""
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    (folder / "dbt_project.yml").write_text(DBT_PROJECT)
    (folder / "profiles.yml").write_text(DBT_PROFILES.format(path=path, memory_limit=memory_limit))
    (folder / "snapshots" / "accounts.sql").write_text(DBT_SNAPSHOT)
    subprocess.run([dbt, "snapshot", "--profiles-dir", str(folder), "--project-dir", str(folder),
                    "--quiet"], check=True, cwd=folder, env=os.environ | {"DO_NOT_TRACK": "1"})


def child(kind: str, path: str, memory_limit: str, project: str) -> None:
    """One contender in this fresh process; records its time (after imports) and peak RSS."""
    if kind in ("starsmith", "day1"):
        from starsmith.discover import load_catalogue
        from starsmith.orchestration.messages import StepRequest
        from starsmith.orchestration.step import preload, run_step
        from starsmith.project import load_project

        cat = preload(load_catalogue(load_project(project)))  # a worker imports once
        day = DAY1 if kind == "day1" else DAY2
        started = time.perf_counter()
        run_step(StepRequest("dim_account", day.isoformat(), f"build-{day}", "/nonexistent",
                             path, memory_limit=memory_limit), cat)
    else:
        started = time.perf_counter()
        con = duckdb.connect(path, config={"memory_limit": memory_limit})
        con.execute(BASELINE_SQL)
        con.close()
    Path(path).with_suffix(".rss").write_text(f"{peak_rss_mib()} {time.perf_counter() - started}")


CURRENT = {  # (current rows' fingerprint, versions) of what each contender writes
    "dim": "SELECT count(*), sum(hash(account_id, {a})) FROM dim_account"
           " WHERE is_current AND account_key >= 0",
    "dbt": "SELECT count(*), sum(hash(account_id, {a})) FROM snapshots.accounts_snapshot"
           " WHERE dbt_valid_to IS NULL",
}
VERSIONS = {"dim": "SELECT count(*) FROM dim_account WHERE account_key >= 0",
            "dbt": "SELECT count(*) FROM snapshots.accounts_snapshot"}


def measure(kind: str, base: Path, args: argparse.Namespace, project: Path
            ) -> tuple[float, float, float, tuple[object, ...]]:
    """(seconds end to end, seconds of the work, peak RSS MiB, what it ended with)."""
    work = base.with_name(f"{kind}.duckdb")
    shutil.copyfile(base, work)
    os.sync()  # the copy's and the previous contender's writes land outside anyone's clock
    started = time.perf_counter()
    if kind == "dbt":
        run_dbt(args.dbt, base.parent / "dbt", work, args.memory_limit)
        elapsed = step = time.perf_counter() - started
        rss = float("nan")  # its own process tree; see the note printed
    else:
        env = os.environ | ({"_RJEM_MALLOC_CONF": POLARS_ALLOCATOR} if kind == "starsmith" else {})
        subprocess.run([sys.executable, __file__, "--child", kind, str(work), args.memory_limit,
                        str(project)], env=env, check=True)
        elapsed = time.perf_counter() - started
        rss, step = (float(x) for x in work.with_suffix(".rss").read_text().split())
    which = "dbt" if kind == "dbt" else "dim"
    con = duckdb.connect(str(work), read_only=True)
    ended = (*con.sql(CURRENT[which].format(a=", ".join(ATTRS))).fetchall()[0],
             con.sql(VERSIONS[which]).fetchall()[0][0])
    con.close()
    return elapsed, step, rss, ended


def dbt_rss(base: Path, args: argparse.Namespace) -> float:
    """dbt's peak RSS: its run under /usr/bin/time when there is one, else NaN."""
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if not timer:
        return float("nan")
    work = base.with_name("dbt_rss.duckdb")
    shutil.copyfile(base, work)
    folder = base.parent / "dbt"
    (folder / "profiles.yml").write_text(
        DBT_PROFILES.format(path=work, memory_limit=args.memory_limit))
    done = subprocess.run([timer, "-f", "%M", args.dbt, "snapshot", "--profiles-dir", str(folder),
                           "--project-dir", str(folder), "--quiet"], capture_output=True,
                          text=True, check=True, cwd=folder)
    work.unlink()
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=len(VALUES),
                        help="values per attribute: 9 words (the default), or more texts")
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--dbt", default=shutil.which("dbt") or str(Path(sys.executable).with_name("dbt")))
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not Path(args.dbt).exists():
        print(f"no dbt at {args.dbt}: dbt snapshot is skipped (pip install -e '.[bench]')")
        args.dbt = None
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        project = write_project(folder / "project")
        base = make_warehouse(folder, args.rows, args.dbt, args.memory_limit, args.distinct)
        print(f"{args.rows:,} accounts x {len(ATTRS)} text attributes ({args.distinct:,} values "
              f"each); day 2: 1% changed, 0.5% "
              f"gone, 0.5% new (made in {time.perf_counter() - t0:.0f} s)")
        kinds = ["starsmith", "duckdb_sql", *(["dbt"] if args.dbt else [])]
        results: dict[str, list[tuple[float, float, float, tuple[object, ...]]]] = {
            k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                got = measure(kind, base, args, project)
                results[kind].append(got)
                print(f"round {r + 1} {kind:>10}: work {got[1]:6.2f} s, process {got[0]:6.2f} s,"
                      f" peak RSS {got[2]:7.0f} MiB, current/versions {got[3][0]:,}/{got[3][2]:,}")
        med = {k: [statistics.median(x[i] for x in v) for i in range(3)]  # type: ignore[misc]
               for k, v in results.items()}
        if args.dbt:
            med["dbt"][2] = dbt_rss(base, args)
        print(f"\nmedians over {args.rounds} rounds (DuckDB memory_limit {args.memory_limit}):")
        for k, (wall, step, rss) in med.items():
            print(f"  {k:>10}: work {step:.2f} s, process {wall:.2f} s, peak RSS {rss:.0f} MiB")
        s, d = med["starsmith"], med["duckdb_sql"]
        print(f"  starsmith / duckdb_sql: work {s[1] / d[1]:.2f}x, process {s[0] / d[0]:.2f}x,"
              f" peak RSS {s[2] / d[2]:.2f}x")
        if args.dbt:
            print(f"  dbt / starsmith (end to end): {med['dbt'][0] / s[0]:.1f}x")
        ends = {k: {v[3] for v in vs} for k, vs in results.items()}
        print(f"  each contender ends the same way every round: "
              f"{all(len(e) == 1 for e in ends.values())}")
        same = len({next(iter(e))[:2] for e in ends.values()}) == 1
        print(f"  all end with the same current rows: {same}; versions: "
              f"{ {k: next(iter(e))[2] for k, e in ends.items()} }")


if __name__ == "__main__":
    main()
