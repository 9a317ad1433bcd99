"""The whole star's full build: starsmith against a plain DuckDB SQL build of the same star.

The star is the Star Schema Benchmark-like project of ``tests/ssb_project.py`` at the issue's
shape by default: 150k customers, 200k parts, 10k suppliers (landed once), a date dimension, and
~6M order lines landed over 2,406 days (the fact's partitions are the order dates: 2,406 + the
two days an order can land late). Its date dimension is widened to the last landed year (the
project's ends in 1998; the fact's date-key check would refuse later days). The landing zone is
generated once and kept (``--data``); every contender reads the same files, in a fresh process
(so peak RSS is its own), with the same DuckDB memory limit, into a fresh project folder:

- starsmith: ``starsmith build --in-process --full-refresh --date LAST --landing ...`` run as the
  command runs it (``starsmith.cli.app``), every model; with ``--memory-budget X`` also a second
  contender ``starsmith@X`` with that flag;
- starsmith_catchup (``--catch-up``): ``starsmith build --in-process --landing ...``, no
  ``--full-refresh`` and no ``--date``: the catch-up a long backfill runs, every landed day not
  yet built, one after the other, into the same fresh warehouse (the issue's goal: at most 2x the
  full rebuild of those days);
- duckdb_sql: CTAS of the three dimensions (row_number over the natural key, the same reserved
  -1/-2 members and SCD columns), of the date dimension, and of the fact from the landed Parquet
  files joined to the dimensions on their natural keys, with the same measures and types. It
  keeps no staging table (starsmith's build also publishes ``stg_lineorder``, its 6M rows).

"build" is the command's (or the SQL's) own time, after the imports; "process" the child's
whole life, interpreter start and imports included.

Each contender must end with the same star: the same tables and column types, the same rows of
every dimension (natural key and attributes), the same date dimension, and a fact with the same
rows and measures whose keys resolve to the same customer, part, supplier and date.
Prints each round, medians (rounds interleaved), the ratios and the peak RSS of each (and the
catch-up's time over the full refresh's); ``--profile``
then builds once more under cProfile (and ``--verbose``) and prints each step's time, the time
outside the steps, the slowest SQL statements of the publishes and the top functions
(``--rounds 0 --profile``: the profile only).

Usage: python benchmarks/star_build.py [--scale-down 1] [--days N] [--lines N] [--rounds 3]
       [--memory-budget 2GB] [--catch-up] [--memory-limit 1GB] [--profile] [--data DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from harness import measure, report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ssb_project import Scale, land_all, landing_days, write_project  # noqa: E402

ISSUE = Scale(customers=150_000, parts=200_000, suppliers=10_000, days=2406, lines_per_day=2494)
DIMS = {  # table: (surrogate key, natural key, attributes, landed source)
    "dim_customer": ("customer_key", "custkey", ("name", "city", "nation", "region", "mktsegment"),
                     "customer"),
    "dim_part": ("part_key", "partkey", ("name", "mfgr", "category", "brand", "color"), "part"),
    "dim_supplier": ("supplier_key", "suppkey", ("name", "city", "nation", "region"), "supplier"),
}
STAR = (*DIMS, "dim_date", "fact_lineorder")
DATE_START = date(1992, 1, 1)
CATCH_UP = "starsmith_catchup"  # the contender building day after day, not in one full refresh
STATEMENT = re.compile(r"DEBUG starsmith\.loaders\.duckdb\.warehouse: ([0-9.]+) s: (.*)")


# ---------------------------------------------------------------- data, once per scale
def prepare(data: Path, scale: Scale, memory_limit: str) -> tuple[Path, Path, date]:
    """The project (date dimension widened, memory limit set) and its landing zone; the landing
    is generated only when ``data`` does not hold this scale's already."""
    marker, landing = data / "landed.txt", data / "landing"
    if not marker.exists() or marker.read_text() != repr(scale):
        shutil.rmtree(data, ignore_errors=True)
        started = time.perf_counter()
        land_all(landing, scale)
        marker.write_text(repr(scale))
        print(f"landed in {time.perf_counter() - started:.0f} s into {landing}")
    shutil.rmtree(data / "project", ignore_errors=True)
    project = write_project(data / "project")
    last = landing_days(scale)[-1]
    dim_date = project / "models" / "marts" / "dim_date.py"
    text = dim_date.read_text()
    assert "date(1998, 12, 31)" in text, "tests/ssb_project.py's calendar changed: update here"
    end = date_end(last)
    dim_date.write_text(text.replace("date(1998, 12, 31)", f"date({end.year}, 12, 31)"))
    toml = project / "starsmith.toml"
    toml.write_text(toml.read_text().replace('memory_limit = "1GB"',
                                             f'memory_limit = "{memory_limit}"'))
    return project, landing, last


def date_end(last: date) -> date:
    return max(date(1998, 12, 31), date(last.year, 12, 31))


def files(landing: Path, source: str) -> str:
    paths = sorted(landing.glob(f"{source}/date=*/*.parquet"))
    assert paths, f"nothing landed for {source}"
    return "read_parquet([" + ", ".join(f"'{p}'" for p in paths) + "])"


# ---------------------------------------------------------------- the contenders (children)
def starsmith_child(kind: str, folder: Path, landing: str, last: str, budget: str,
                    profile: str) -> None:
    """``starsmith build`` as the command runs it, in this fresh process: timed from the call of
    the command (after the imports a worker holds), to its end (its last act, ``exit_now``, would
    end the process at once: it records the exit code instead). ``kind`` is the build's mode:
    ``starsmith`` one full refresh as of ``last``, ``starsmith_catchup`` the catch-up (no date:
    every landed day not yet built)."""
    import starsmith.cli as cli  # starsmith first: it sets Polars' allocator, as the command
    from starsmith.orchestration import local, step  # noqa: F401  (loaded before the clock)

    codes: list[int] = []
    vars(cli)["exit_now"] = codes.append
    mode = [] if kind == CATCH_UP else ["--full-refresh", "--date", last]
    argv = [*(["--verbose"] if profile else []),  # the publishes' statements, timed
            "--project", str(folder), "build", "--in-process", *mode,
            "--landing", landing, *(["--memory-budget", budget] if budget else [])]
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    cli.app(args=argv, standalone_mode=False)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    seconds = time.perf_counter() - started
    if codes != [0]:
        raise SystemExit(f"starsmith build exited {codes}")
    report(folder, kind, seconds)


def sql_child(folder: Path, landing: Path, memory_limit: str, last: str) -> None:
    """The same star in plain DuckDB SQL: one CTAS per table."""
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect(str(folder / "warehouse.duckdb"), config={"memory_limit": memory_limit})
    for table, (sk, nk, attrs, source) in DIMS.items():
        reserved = " UNION ALL ".join(
            f"SELECT {key}::BIGINT AS {sk}, NULL::BIGINT AS {nk}, "
            + ", ".join(f"'{label}' AS {a}" for a in attrs)
            + ", TIMESTAMP '1900-01-01' AS valid_from, TIMESTAMP '9999-12-31' AS valid_to,"
            " true AS is_current, false AS is_inferred, 'reserved' AS run_id"
            for key, label in ((-2, "Not applicable"), (-1, "Unknown")))
        con.execute(f"""
            CREATE TABLE {table} AS
            {reserved}
            UNION ALL
            SELECT row_number() OVER (ORDER BY {nk}) AS {sk}, {nk}, {", ".join(attrs)},
                   TIMESTAMP '{landed_on(landing, source)}' AS valid_from,
                   TIMESTAMP '9999-12-31' AS valid_to, true AS is_current,
                   false AS is_inferred, 'build-{last}' AS run_id
            FROM {files(landing, source)}""")
    con.execute(f"""
        CREATE TABLE dim_date AS
        SELECT -2::BIGINT AS date_key, NULL::DATE AS date, NULL::INTEGER AS year,
               NULL::TINYINT AS quarter, NULL::TINYINT AS month, 'Not applicable' AS month_name,
               NULL::TINYINT AS day_of_month, NULL::TINYINT AS day_of_week,
               'Not applicable' AS day_name, NULL::INTEGER AS iso_year, NULL::TINYINT AS iso_week,
               NULL::BOOLEAN AS is_weekend, NULL::INTEGER AS fiscal_year,
               NULL::TINYINT AS fiscal_quarter, NULL::BOOLEAN AS is_holiday,
               NULL::VARCHAR AS holiday_name
        UNION ALL SELECT -1, NULL, NULL, NULL, NULL, 'Unknown', NULL, NULL, 'Unknown', NULL, NULL,
               NULL, NULL, NULL, NULL, NULL
        UNION ALL
        SELECT (year(d) * 10000 + month(d) * 100 + day(d))::BIGINT, d::DATE, year(d)::INTEGER,
               quarter(d)::TINYINT, month(d)::TINYINT, strftime(d, '%B'), day(d)::TINYINT,
               isodow(d)::TINYINT, strftime(d, '%A'), isoyear(d)::INTEGER, week(d)::TINYINT,
               isodow(d) >= 6, year(d)::INTEGER, quarter(d)::TINYINT, false, NULL
        FROM generate_series(DATE '{DATE_START}', DATE '{date_end(date.fromisoformat(last))}',
                             INTERVAL 1 DAY) t(d)""")
    con.execute(f"""
        CREATE TABLE fact_lineorder AS
        SELECT lo.orderkey, lo.linenumber, lo.orderdate,
               (year(lo.orderdate) * 10000 + month(lo.orderdate) * 100
                + day(lo.orderdate))::BIGINT AS date_key,
               coalesce(c.customer_key, -1) AS customer_key, coalesce(p.part_key, -1) AS part_key,
               coalesce(s.supplier_key, -1) AS supplier_key,
               lo.quantity, lo.extendedprice, lo.discount,
               (lo.extendedprice * lo.discount)::DECIMAL(18, 4) AS revenue
        FROM {files(landing, "lineorder")} lo
        LEFT JOIN dim_customer c ON c.custkey = lo.custkey
        LEFT JOIN dim_part p ON p.partkey = lo.partkey
        LEFT JOIN dim_supplier s ON s.suppkey = lo.suppkey""")
    con.close()
    report(folder, "duckdb_sql", time.perf_counter() - started)


def landed_on(landing: Path, source: str) -> str:
    """The day a reference source landed (its versions are valid from then)."""
    (folder,) = (landing / source).glob("date=*")
    return folder.name.removeprefix("date=")


# ---------------------------------------------------------------- what each ends with
def star_of(warehouse: Path) -> dict[str, object]:
    """Everything two builds of the same star must agree on (surrogate key values aside)."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    got: dict[str, object] = {"schema": con.sql(
        "SELECT table_name, list(column_name || ' ' || data_type ORDER BY ordinal_position) "
        f"FROM information_schema.columns WHERE table_schema = 'main' AND table_name IN {STAR} "
        "GROUP BY ALL ORDER BY ALL").fetchall()}
    for table, (sk, nk, attrs, _) in DIMS.items():
        got[table] = con.sql(f"SELECT count(*), count(*) FILTER (WHERE {sk} < 0), "
                             f"sum(hash({nk}, {', '.join(attrs)}, is_current)) FROM {table}"
                             ).fetchall()
    cols = [r[0] for r in con.sql("SELECT column_name FROM information_schema.columns WHERE "
                                  "table_name = 'dim_date' AND table_schema = 'main'").fetchall()]
    got["dim_date"] = con.sql(f"SELECT count(*), sum(hash({', '.join(cols)})) FROM dim_date"
                              ).fetchall()
    got["fact_lineorder"] = con.sql("""
        SELECT count(*), count(DISTINCT (f.orderkey, f.linenumber)), sum(f.quantity),
               sum(f.extendedprice), sum(f.discount), sum(f.revenue),
               count(*) FILTER (WHERE least(f.customer_key, f.part_key, f.supplier_key,
                                            f.date_key) < 0 OR d.date IS NULL),
               sum(hash(c.custkey, p.partkey, s.suppkey, d.date, f.orderkey, f.linenumber,
                        f.orderdate, f.quantity, f.extendedprice, f.discount, f.revenue))
        FROM fact_lineorder f
        LEFT JOIN dim_customer c USING (customer_key) LEFT JOIN dim_part p USING (part_key)
        LEFT JOIN dim_supplier s USING (supplier_key) LEFT JOIN dim_date d USING (date_key)
    """).fetchall()
    con.close()
    return got


def step_summary(warehouse: Path) -> str:
    """Each model's time over the build's steps, in run order, with how many steps when more than
    one (a catch-up runs one a day: its run log has thousands of rows)."""
    took: dict[str, list[float]] = {}
    for model, seconds in run_steps(warehouse):
        took.setdefault(model, []).append(seconds)
    return ", ".join(f"{m} {sum(t):.1f}{f' ({len(t)} steps)' if len(t) > 1 else ''}"
                     for m, t in took.items())


def run_steps(warehouse: Path) -> list[tuple[str, float]]:
    """starsmith's own per-step durations (its run log)."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT model, duration_s FROM _starsmith.run_log ORDER BY started_at"
                       ).fetchall()


# ---------------------------------------------------------------- the parent
def contend(kind: str, project: Path, landing: Path, last: date, work: Path,
            args: argparse.Namespace, profile: str = "") -> tuple[float, float, float, Path]:
    """One contender in a fresh project folder: (work s, process s, peak RSS MiB, warehouse)."""
    folder = work / kind.replace("@", "-")
    shutil.rmtree(folder, ignore_errors=True)
    if kind.startswith("starsmith"):
        shutil.copytree(project, folder)
        budget = kind.partition("@")[2]
        extra = [str(landing), last.isoformat(), budget, profile]
        warehouse = folder / ".state" / "warehouse.duckdb"
    else:
        folder.mkdir(parents=True)
        extra = [str(landing), args.memory_limit, last.isoformat()]
        warehouse = folder / "warehouse.duckdb"
    started = time.perf_counter()
    try:
        seconds, rss = measure(__file__, kind.partition("@")[0], folder, *extra)
    except subprocess.CalledProcessError:
        log = folder.with_suffix(".log")
        print(f"{kind} failed; the end of its output ({log}):\n{log.read_text()[-4000:]}")
        raise
    return seconds, time.perf_counter() - started, rss, warehouse


def print_profile(stats_file: str, warehouse: Path, seconds: float, log: Path) -> None:
    """Each step's time (run log), the slowest SQL statements of the publishes (the build's
    debug log), then the functions: starsmith's own by cumulative time (where the phases are)
    and all by own time (which engine call the time is spent in)."""
    print(f"\nprofile of one starsmith build ({seconds:.1f} s under cProfile; time spent in "
          "DuckDB or Polars counts as the Python call that started it):")
    steps = run_steps(warehouse)
    for model, took in steps:
        print(f"  step {model:<16} {took:7.2f} s (run log)")
    print(f"  outside the run log's step durations: {seconds - sum(t for _, t in steps):.2f} s")
    timed = [(float(m[1]), m[2]) for m in STATEMENT.finditer(log.read_text())]
    print(f"  the publishes' SQL statements: {sum(t for t, _ in timed):.2f} s in {len(timed)}; "
          "the slowest:")
    for took, statement in sorted(timed, reverse=True)[:8]:
        print(f"  {took:8.2f} s  {statement[:150]}")
    table = pstats.Stats(stats_file).stats  # type: ignore[attr-defined]
    rows = [(where(func), calls, own, cum) for func, (_, calls, own, cum, _) in table.items()]
    ours = [r for r in rows if not r[0].startswith(("<", "~", ".venv", "/"))]
    for title, chosen in (
            ("starsmith's functions by cumulative time", sorted(ours, key=lambda r: -r[3])[:30]),
            ("all functions by own time", sorted(rows, key=lambda r: -r[2])[:15])):
        print(f"\n  {title}:\n  {'cumulative s':>12} {'own s':>8} {'calls':>8}  function")
        for name, calls, own, cum in chosen:
            print(f"  {cum:12.2f} {own:8.2f} {calls:8}  {name}")


def where(func: tuple[str, int, str]) -> str:
    """``path:line(function)`` with the repository's prefix cut."""
    path, line, name = func
    if path == "~":
        return f"~{name}"
    rel = path.removeprefix(str(REPO) + "/")
    if "site-packages/" in rel:
        rel = "<lib>/" + rel.split("site-packages/", 1)[1]
    return f"{rel}:{line}({name})"


def compare(results: dict[str, list[tuple[float, float, float]]],
            ends: dict[str, list[dict[str, object]]], landed: int) -> None:
    """Medians, ratios to plain SQL, and whether every contender ended with the same star."""
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
    print(f"\nmedians over {len(results['duckdb_sql'])} round(s):")
    for k, (seconds, process, rss) in med.items():
        budget = k.partition("@")[2]
        print(f"  {k:>17}: build {seconds:6.2f} s, process {process:6.2f} s, peak RSS "
              f"{rss:6.0f} MiB{f' (budget {budget})' if budget else ''}")
    sql = med["duckdb_sql"]
    for k in [k for k in med if k != "duckdb_sql"]:
        s = med[k]
        print(f"  {k} / duckdb_sql: build {s[0] / sql[0]:.2f}x, process {s[1] / sql[1]:.2f}x,"
              f" peak RSS {s[2] / sql[2]:.2f}x")
    if CATCH_UP in med and "starsmith" in med:
        print(f"  {CATCH_UP} / starsmith (full refresh): "
              f"{med[CATCH_UP][0] / med['starsmith'][0]:.2f}x build time (goal: at most 2x)")
    reference = ends["duckdb_sql"][0]
    same = all(end == reference for runs in ends.values() for end in runs)
    fact = reference["fact_lineorder"][0]  # type: ignore[index]
    print(f"same rows: {same} (fact {fact[0]:,} rows of {landed:,} landed, revenue {fact[5]}, "
          f"{fact[6]} unresolved keys)")
    if not same:
        for k, runs in ends.items():
            for r, end in enumerate(runs, 1):
                for part, value in end.items():
                    if value != reference[part]:
                        print(f"  {k} (round {r}) differs in {part}: {value} vs duckdb_sql "
                              f"{reference[part]}")


def scale_of(args: argparse.Namespace) -> Scale:
    k = args.scale_down
    return Scale(customers=ISSUE.customers // k, parts=ISSUE.parts // k,
                 suppliers=ISSUE.suppliers // k, days=args.days or ISSUE.days // k,
                 lines_per_day=args.lines or ISSUE.lines_per_day)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-down", type=int, default=1,
                        help="divide the dimensions and the days by N (1: the issue's shape)")
    parser.add_argument("--days", type=int, default=0, help="landed days [2406 / scale-down]")
    parser.add_argument("--lines", type=int, default=0, help="order lines a day [2494]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB's, for every contender")
    parser.add_argument("--memory-budget", default="",
                        help="also run starsmith with --memory-budget SIZE")
    parser.add_argument("--catch-up", action="store_true",
                        help=f"also run {CATCH_UP}: build every landed day not yet built")
    parser.add_argument("--profile", action="store_true", help="then profile one starsmith build")
    parser.add_argument("--data", type=Path, default=None, help="landing cache folder")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, folder, *rest = args.child
        with open(Path(folder).with_suffix(".log"), "w") as log:  # the parent's output stays terse
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        if kind.startswith("starsmith"):
            starsmith_child(kind, Path(folder), *rest)
        else:
            sql_child(Path(folder), Path(rest[0]), rest[1], rest[2])
        return
    for name in [n for n in os.environ if n.startswith(("STARSMITH_", "TEMPORAL_"))]:
        del os.environ[name]  # the project and the flags say it all
    scale = scale_of(args)
    data = args.data or Path(tempfile.gettempdir()) / (
        f"star_build-{scale.customers}-{scale.parts}-{scale.suppliers}-{scale.days}"
        f"-{scale.lines_per_day}")
    project, landing, last = prepare(data, scale, args.memory_limit)
    kinds = ["starsmith", *([f"starsmith@{args.memory_budget}"] if args.memory_budget else []),
             *([CATCH_UP] if args.catch_up else []), "duckdb_sql"]
    work = Path(tempfile.mkdtemp(prefix="star_build-run-"))
    import duckdb

    with duckdb.connect() as con:
        landed = con.sql(f"SELECT count(*) FROM {files(landing, 'lineorder')}").fetchall()[0][0]
    print(f"star: {scale.customers:,} customers, {scale.parts:,} parts, {scale.suppliers:,} "
          f"suppliers, dim_date {DATE_START}..{date_end(last)}; {landed:,} order lines landed "
          f"over {scale.days:,} days (last {last}); DuckDB memory_limit {args.memory_limit}")
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    ends: dict[str, list[dict[str, object]]] = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                seconds, process, rss, warehouse = contend(kind, project, landing, last, work, args)
                results[kind].append((seconds, process, rss))
                ends[kind].append(star_of(warehouse))
                steps = ("; steps " + step_summary(warehouse)
                         if kind.startswith("starsmith") else "")
                print(f"round {r + 1} {kind:>17}: build {seconds:6.2f} s, process {process:6.2f} s,"
                      f" peak RSS {rss:6.0f} MiB{steps}", flush=True)
                shutil.rmtree(work / kind.replace("@", "-"), ignore_errors=True)
        if args.rounds:
            compare(results, ends, landed)
        if args.profile:
            stats = str(work / "profile.stats")
            seconds, _, _, warehouse = contend("starsmith", project, landing, last, work, args,
                                               stats)
            print_profile(stats, warehouse, seconds, work / "starsmith.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
