"""A nightly incremental fact run against a full rebuild, on a warehouse holding a year of days.

Lands N days (default 365) of the demo business, builds staging and dimensions, rebuilds each
fact in full as of the last day, then runs the last day's nightly (incremental) step again: it
rebuilds only the partitions that day touched plus the lookback window. Each step runs in a
fresh process, as a worker runs it, and is timed with the checkpoint of what it wrote (median
of rounds); the nightly run must leave the rebuilt table as it was, which is checked.
Then memory: the same full rebuild in a fresh child process with all partitions in one batch,
with ``batch_days`` of 31 and 7, and under each ``--budgets`` memory budget (batches sized to fit
it, orchestration/budget.py), reporting each one's peak RSS against the budget and the size of
the fact's input in memory. At ``--scale 25`` the inventory input (~1 GiB) is larger than the
512MB budget it is built under.
Usage: python benchmarks/fact_incremental.py [--days 365] [--scale 0.5] [--rounds 3]
       [--budgets 512MB 1GB]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from harness import measure, report

from starsmith.demo_data import write_landing
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.orchestration.budget import parse_size
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import StepRequest
from starsmith.orchestration.plan import make_plan, run_id_for
from starsmith.orchestration.step import run_step
from starsmith.registry import Catalogue
from starsmith.scaffold import demo_catalogue as load_catalogue

FACTS = ("fact_sales", "fact_inventory_daily")


def step_child(kind: str, folder: Path, fact: str, day: str) -> None:
    """One step of ``fact`` in this (fresh) process, with the checkpoint of what it wrote.

    ``full`` and ``nightly`` run with the project's batching; ``batchN`` is a full rebuild with
    ``batch_days`` = N under a 1GB DuckDB memory limit. ``nightly`` runs twice and times the
    second run, as a long-lived worker runs it night after night; the first (cold process, right
    after a full rebuild) is reported too.
    """
    cat = load_catalogue()
    models = dict(cat.models)
    memory, budget = "4GB", ""
    if kind.startswith("budget"):  # budgetSIZE: a full rebuild under that memory budget
        budget = kind[6:]
    if kind.startswith("batch"):  # batchN or batchN@LIMIT (DuckDB's memory limit, e.g. 256MB)
        batch, _, memory = kind[5:].partition("@")
        spec = models[fact].fact
        assert spec is not None
        models[fact] = replace(models[fact], fact=replace(spec, batch_days=int(batch)))
        memory = memory or "1GB"
    req = StepRequest(fact, day, run_id_for(day), str(folder / "landing"),
                      str(folder / "wh.duckdb"), full_refresh=kind != "nightly",
                      memory_limit=memory, memory_budget=budget)
    runs = 2 if kind == "nightly" else 1
    for i in range(runs):
        started = time.perf_counter()
        res = run_step(req, Catalogue(models, cat.sources, cat.order))
        with DuckDBWarehouse(folder / "wh.duckdb").connect() as con:
            con.execute("CHECKPOINT")
        seconds = time.perf_counter() - started
        if i == 0 and runs == 2:  # the first run after a full rebuild, in a cold process
            (folder / "nightly_first.seconds").write_text(str(seconds))
    (folder / f"{kind}.rows").write_text(str(res.rows_written))
    report(folder, kind, seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", nargs="*", default=["512MB", "1GB"])
    args = parser.parse_args()
    if args.child:
        step_child(args.child[0], Path(args.child[1]), args.child[2], args.child[3])
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        days = write_landing(root / "landing", days=args.days, scale=args.scale)
        print(f"landed {len(days)} days at scale {args.scale} in {time.perf_counter() - t0:.1f} s")
        cat = load_catalogue()
        wh_path = root / "wh.duckdb"
        last = days[-1]
        upstream = [m for m in cat.order if not cat.models[m].fact]
        t0 = time.perf_counter()
        run_plan(make_plan(cat, [m for m in upstream if cat.models[m].kind.value == "staging"]
                           + ["dim_date"], [last], full_refresh=True),
                 landing=str(root / "landing"), warehouse=str(wh_path))
        # dimensions day by day (facts need their history), staging is already there
        dims = [m for m in upstream if cat.models[m].kind.value == "dimension"
                and m != "dim_date"]
        run_plan(make_plan(cat, dims, [last], full_refresh=True),
                 landing=str(root / "landing"), warehouse=str(wh_path))
        print(f"staging and dimensions built in {time.perf_counter() - t0:.1f} s")
        wh = DuckDBWarehouse(wh_path)
        for fact in FACTS:
            full, inc, first = [], [], []
            after_full: tuple[object, ...] = ()
            for _ in range(args.rounds):
                for kind, out in (("full", full), ("nightly", inc)):
                    seconds, _ = measure(__file__, kind, root, fact, last.isoformat())
                    out.append((seconds, int((root / f"{kind}.rows").read_text())))
                    if kind == "nightly":
                        first.append(float((root / "nightly_first.seconds").read_text()))
                    digest = wh.query(f"SELECT count(*) AS n, sum(hash(t)) AS h FROM {fact} t").row(0)
                    if kind == "full":
                        after_full = digest
                    elif digest != after_full:
                        raise SystemExit(f"{fact}: the nightly run changed the rebuilt table")
            rows = wh.query(f"SELECT count(*) AS n, count(DISTINCT {cat.models[fact].partition_by})"
                            f" AS p FROM {fact}").row(0)
            f_t, i_t = statistics.median(x[0] for x in full), statistics.median(x[0] for x in inc)
            print(f"{fact}: {rows[0]:,} rows in {rows[1]} partitions")
            print(f"  full rebuild  {f_t:6.2f} s  ({full[0][1]:,} rows written)")
            print(f"  nightly run   {i_t:6.2f} s  ({inc[0][1]:,} rows written; a warm worker's"
                  " night after a previous night)")
            print(f"  nightly / full: {i_t / f_t:.1%}")
            print(f"  first nightly after the full rebuild, cold process: "
                  f"{statistics.median(first):.2f} s ({statistics.median(first) / f_t:.1%}; it "
                  "pays DuckDB's one-off rewrite of the rebuilt table's row groups)")
        assert last - days[0] == timedelta(days=len(days) - 1) and isinstance(last, date)
        for fact in FACTS:
            primary = cat.models[fact].inputs[0].name
            size = wh.read(primary).estimated_size() / 2**20
            print(f"{fact} full rebuild, fresh process each; its input ({primary}) holds "
                  f"{size:,.0f} MiB in memory:")
            for batch in (len(days), 31, 7):
                t, rss = measure(__file__, f"batch{batch}", root, fact, last.isoformat())
                print(f"  batch_days={batch:<4d}     {t:6.2f} s  peak RSS {rss:6.0f} MiB")
            for budget in args.budgets:
                t, rss = measure(__file__, f"budget{budget}", root, fact, last.isoformat())
                cap = parse_size(budget) / 2**20
                print(f"  memory_budget={budget:<6s} {t:6.2f} s  peak RSS {rss:6.0f} MiB "
                      f"({rss / cap:.0%} of the budget; input / budget {size / cap:.2f}x)")


if __name__ == "__main__":
    main()
