"""A fleet: three ``starsmith worker`` processes share one build, reading a landing zone in S3
(moto's server) and publishing to BigQuery (the local emulator), through the Temporal dev server.

This is what several machines do, on one: each worker is the installed command with the same
project files, the bucket's and the warehouse's addresses, and nothing else in common. One worker
is killed (SIGKILL) in the middle of a step; Temporal notices when its heartbeat stops (the
step's heartbeat timeout, 10 s) and gives the step to another worker. The build must end ok and
every star table must equal the plainest build of the same days: one process, a local folder, a
DuckDB file. Every server here binds 127.0.0.1; the workers bind nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowHandle

from starsmith.demo_data import write_landing
from starsmith.discover import load_catalogue
from starsmith.loaders.bigquery.warehouse import MERGE_MODE_ENV, BigQueryWarehouse
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.store import ObjectPath, landing_root, upload
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import BuildReport, BuildRequest, Paths
from starsmith.orchestration.plan import make_plan
from starsmith.orchestration.server import LocalServer, stop_process
from starsmith.orchestration.workflows import BuildWorkflow
from starsmith.project import Project
from starsmith.scaffold import ensure_demo
from tests.bigquery_emulator import PROJECT, Emulator
from tests.s3_helpers import S3, SECRET, moto_server, pointed_at
from tests.test_bigquery_target import _star

pytestmark = [pytest.mark.temporal, pytest.mark.slow, pytest.mark.bigquery]

STARSMITH = Path(sys.executable).parent / "starsmith"
DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(3)]
SCALE = 0.3
DOOMED_AT = "dim_customer"  # the doomed worker dies after staging this model, before publishing
QUEUE = "fleet"


@dataclass
class Worker:
    """One ``starsmith worker`` process and its log."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def identity(self) -> str:
        """How Temporal's history names it (the SDK's default worker identity: pid@host)."""
        import socket

        return f"{self.process.pid}@{socket.gethostname()}"

    def said(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_polling(self, timeout_s: float = 90) -> None:
        """Until the worker has loaded the project and polls (it says so on its first line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "polling" in self.log.read_text(errors="replace"):
                return
            assert self.process.poll() is None, f"the worker exited:\n{self.said()}"
            time.sleep(0.1)
        raise AssertionError(f"the worker did not poll in {timeout_s} s:\n{self.said()}")


def _cloud_free_env() -> dict[str, str]:
    """A machine's shell without this test process's Temporal, cloud or project settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TEMPORAL_", "AWS_", "GOOGLE_", "STORAGE_EMULATOR",
                                 "STARSMITH_"))}


@pytest.fixture
def fleet() -> Iterator[list[Worker]]:
    """The workers the test starts (stopped, by their pid, at its end)."""
    started: list[Worker] = []
    yield started
    for worker in started:
        stop_process(worker.process)


def _start_worker(fleet: list[Worker], project: Project, address: str, s3: S3, log: Path,
                  **extra: str) -> Worker:
    env = {**_cloud_free_env(), **s3.env(), "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
           # The emulator aborts a transaction holding a MERGE: the accumulating snapshot's
           # upsert runs as its delete-and-insert equivalent (as in test_bigquery_target.py).
           MERGE_MODE_ENV: "delete_insert", **extra}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(STARSMITH), "worker", "--project", str(project.root), "--address", address,
             "--task-queue", QUEUE], cwd=log.parent, env=env, stdout=out,
            stderr=subprocess.STDOUT)
    worker = Worker(proc, log)
    fleet.append(worker)
    return worker


async def _steps(handle: WorkflowHandle[BuildWorkflow, BuildReport]) -> dict[str, tuple[str, str]]:
    """Activity id -> (model, logical date) of every build step scheduled so far."""
    out = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "build_model":
                body = json.loads(attrs.input.payloads[0].data)
                out[attrs.activity_id] = (body["model"], body["logical_date"])
    return out


async def _until_started_on(handle: WorkflowHandle[BuildWorkflow, BuildReport], worker: Worker,
                            step: tuple[str, str], timeout_s: float = 90) -> None:
    """Until ``worker`` runs ``step`` (Temporal's pending activities say who took each)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.process.poll() is None or worker.process.returncode == -9, worker.said()
        steps = await _steps(handle)
        pending = (await handle.describe()).raw_description.pending_activities
        if any(steps.get(p.activity_id) == step and p.last_worker_identity == worker.identity
               and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
               for p in pending) or worker.process.poll() == -9:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{step} never started on the doomed worker:\n{worker.said()}")


async def _who_built(handle: WorkflowHandle[BuildWorkflow, BuildReport]
                     ) -> dict[tuple[str, str], tuple[str, int]]:
    """(model, date) -> (the worker whose attempt completed it, that attempt's number)."""
    steps = await _steps(handle)
    scheduled: dict[int, tuple[str, str]] = {}
    started: dict[int, tuple[str, int]] = {}
    built = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_id in steps:
                scheduled[event.event_id] = steps[attrs.activity_id]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            st = event.activity_task_started_event_attributes
            started[st.scheduled_event_id] = (st.identity, st.attempt)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes.scheduled_event_id
            if done in scheduled:
                built[scheduled[done]] = started[done]
    return built


def test_a_fleet_with_a_killed_worker_builds_what_one_process_builds(
        temporal_server: LocalServer, emulator: Emulator, fleet: list[Worker],
        tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    write_landing(folder, days=len(DAYS), scale=SCALE)
    project = ensure_demo(tmp_path / "shop")  # the project files every machine would deploy
    cat = load_catalogue(project)
    dataset = f"fleet_{uuid.uuid4().hex[:8]}"
    ref = f"bigquery://{PROJECT}/{dataset}?endpoint={emulator.endpoint}"
    uri = "s3://fleet-landing/zone"
    with moto_server() as s3:
        s3.bucket("fleet-landing")
        root = landing_root(uri)
        assert isinstance(root, ObjectPath)
        with pointed_at(s3):
            assert upload(folder, root) > len(DAYS) * 5
        doomed = _start_worker(fleet, project, temporal_server.address, s3,
                               tmp_path / "doomed.log",
                               STARSMITH_FAILPOINT=f"after_stage:{DOOMED_AT}")
        doomed.wait_polling()
        request = BuildRequest(Paths(uri, ref, "1GB"), dates=tuple(d.isoformat() for d in DAYS),
                               project=cat.project, fingerprint=cat.fingerprint)
        first = (DOOMED_AT, DAYS[0].isoformat())

        async def build() -> tuple[BuildReport, dict[tuple[str, str], tuple[str, int]], float]:
            client = await Client.connect(temporal_server.address)
            handle: WorkflowHandle[BuildWorkflow, BuildReport] = await client.start_workflow(
                BuildWorkflow.run, request, id=f"fleet-{uuid.uuid4().hex}", task_queue=QUEUE)
            # The doomed worker alone polls until it has taken the step it dies in; then the
            # rest of the fleet joins (so the kill cannot miss: nobody else could take it).
            await _until_started_on(handle, doomed, first)
            for n in (1, 2):
                _start_worker(fleet, project, temporal_server.address, s3,
                              tmp_path / f"worker-{n}.log")
            while doomed.process.poll() is None:
                await asyncio.sleep(0.1)
            killed = time.monotonic()
            report = await asyncio.wait_for(handle.result(), timeout=180)
            took = time.monotonic() - killed
            return report, await _who_built(handle), took

        report, who, after_kill = asyncio.run(build())
        assert doomed.process.returncode == -9, doomed.said()
        healthy = fleet[1:]
        assert report.ok, ([d.failed for d in report.days], [w.said() for w in healthy])
        assert [d.logical_date for d in report.days] == [d.isoformat() for d in DAYS]
        for worker in healthy:
            assert worker.process.poll() is None, worker.said()  # still serving
            said = worker.said()
            assert SECRET not in said and "Traceback" not in said, said

    # Who built what: the doomed worker finished steps before it died, the step it died in was
    # retried (attempt 2 or later) and completed elsewhere, and the rest spread over the fleet.
    assert set(who) == {(m, d.isoformat()) for m in cat.order for d in DAYS}
    by = Counter(identity for identity, _ in who.values())
    assert by[doomed.identity] > 0, by
    identity, attempt = who[first]
    assert identity != doomed.identity and attempt >= 2, who[first]
    assert set(by) == {w.identity for w in fleet}, by  # every worker completed steps
    print(f"\nsteps per worker {dict(by)}; the build ended {after_kill:.1f} s after the kill")

    bq = BigQueryWarehouse.from_ref(ref)
    log = bq.run_log().filter(pl.col("status") == "success").with_columns(
        pl.col("logical_date").cast(pl.String))
    per_step = Counter(zip(log["model"], log["logical_date"], strict=True))
    assert set(per_step) == set(who)
    # The step killed between staging and publishing published nothing: one success, the retry.
    # A step the doomed worker had published but not yet reported is run again (steps are
    # idempotent): only those, at most its other activity slots, may show twice.
    assert per_step[first] == 1, per_step[first]
    again = {step for step, n in per_step.items() if n > 1}
    assert len(again) <= 3 and all(n <= 2 for n in per_step.values()), per_step
    assert all(who[step][1] >= 2 for step in again), (again, who)

    duck = tmp_path / "one-process.duckdb"
    plan = make_plan(cat, cat.select(None), DAYS)
    assert all(o.ok for o in run_plan(plan, landing=str(folder), warehouse=str(duck),
                                      catalogue=cat))
    got, want = _star(bq, cat), _star(DuckDBWarehouse(duck), cat)
    assert got.keys() == want.keys() and len(want) >= len(cat.order)
    for name in want:
        assert got[name].height == want[name].height, name
        assert got[name].equals(want[name]), name
    assert want["fact_sales"].height > 0 and want["dim_customer"]["is_current"].sum() > 0
