"""What Temporal costs: the demo build in-process against the same build as a workflow.

Same landing zone, same plan, a fresh warehouse per run, rounds interleaved. The local dev server
is started once and its start-up is reported apart (a nightly cluster is already running).
Then the parallel-branch plan with one activity slot against two slots in one worker, and against
two worker processes (which share one DuckDB file: DuckDB admits one writing process at a time,
so that figure shows the lock contention a fleet would need a shared target for).

Usage: python benchmarks/temporal_overhead.py [--days 3] [--scale 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from temporalio.client import Client

from starsmith.demo_data import write_landing
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import BuildRequest, Paths
from starsmith.orchestration.plan import make_plan
from starsmith.orchestration.server import start_local_server
from starsmith.orchestration.worker import make_worker
from starsmith.orchestration.workflows import BuildWorkflow
from starsmith.scaffold import demo_catalogue as load_catalogue
from starsmith.scaffold import demo_project


def in_process(landing: Path, wh: Path, dates: list[date]) -> float:
    cat = load_catalogue()
    plan = make_plan(cat, list(cat.order), dates)
    started = time.perf_counter()
    outcomes = run_plan(plan, landing=str(landing), warehouse=str(wh), memory_limit="2GB",
                       catalogue=cat)
    assert all(o.ok for o in outcomes)
    return time.perf_counter() - started


async def workflow(address: str, landing: Path, wh: Path, dates: list[date], *, slots: int,
                   external_workers: int = 0) -> float:
    client = await Client.connect(address)
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    req = BuildRequest(Paths(str(landing), str(wh), "2GB"),
                       dates=tuple(d.isoformat() for d in dates), max_parallel=4)
    procs = [subprocess.Popen([sys.executable, "-m", "starsmith", "worker", "--address", address,
                               "--task-queue", queue, "--max-activities", str(slots)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(external_workers)]
    try:
        if external_workers:
            await asyncio.sleep(3)  # let the workers import and poll
            started = time.perf_counter()
            report = await client.execute_workflow(BuildWorkflow.run, req, id=queue, task_queue=queue)
        else:
            async with make_worker(client, demo_project(), task_queue=queue, max_activities=slots):
                started = time.perf_counter()
                report = await client.execute_workflow(BuildWorkflow.run, req, id=queue,
                                                       task_queue=queue)
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    assert report.ok, report
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        landing = root / "landing"
        write_landing(landing, days=args.days, scale=args.scale)
        dates = [date(2024, 1, 1) + timedelta(days=i) for i in range(args.days)]
        steps = args.days * len(load_catalogue().order)
        t0 = time.perf_counter()
        server = start_local_server(root / "temporal")
        print(f"local dev server ready in {time.perf_counter() - t0:.2f} s")
        try:
            times: dict[str, list[float]] = {"in-process": [], "temporal 1 worker x 4 slots": []}
            for r in range(args.rounds):
                times["in-process"].append(in_process(landing, root / f"a{r}.duckdb", dates))
                times["temporal 1 worker x 4 slots"].append(asyncio.run(workflow(
                    server.address, landing, root / f"b{r}.duckdb", dates, slots=4)))
            par: dict[str, list[float]] = {"1 worker x 1 slot": [], "1 worker x 2 slots": [],
                                           "2 worker processes x 1 slot": []}
            for r in range(args.rounds):
                par["1 worker x 1 slot"].append(asyncio.run(workflow(
                    server.address, landing, root / f"c{r}.duckdb", dates, slots=1)))
                par["1 worker x 2 slots"].append(asyncio.run(workflow(
                    server.address, landing, root / f"d{r}.duckdb", dates, slots=2)))
                par["2 worker processes x 1 slot"].append(asyncio.run(workflow(
                    server.address, landing, root / f"e{r}.duckdb", dates, slots=1,
                    external_workers=2)))
        finally:
            server.stop()
        med = {k: statistics.median(v) for k, v in (times | par).items()}
        print(f"\n{steps} model steps ({args.days} days x {steps // args.days} models), "
              f"scale {args.scale}, medians of {args.rounds}:")
        for k, v in med.items():
            print(f"  {k:32s} {v:6.2f} s   rounds: {', '.join(f'{x:.2f}' for x in (times | par)[k])}")
        base, serial = med["in-process"], med["1 worker x 1 slot"]
        print(f"  overhead, both one step at a time: {serial / base - 1:+.1%} of the build, "
              f"{(serial - base) / steps * 1000:+.0f} ms per model step")
        print(f"  Temporal with 4 slots vs in-process: "
              f"{med['temporal 1 worker x 4 slots'] / base:.2f}x the time (parallel branches)")
        one = med["1 worker x 1 slot"]
        print(f"  2 slots vs 1: {med['1 worker x 2 slots'] / one:.2f}x the time; "
              f"2 processes vs 1: {med['2 worker processes x 1 slot'] / one:.2f}x")


if __name__ == "__main__":
    main()
