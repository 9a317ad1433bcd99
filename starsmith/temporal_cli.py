"""The CLI's Temporal side: connect (or start a local server), run builds, workers, schedules.

With no address configured, a build starts the local dev server (state in ``.state/temporal``)
and an in-process worker, waits for the workflow and stops what it started. With an address
(``--address`` or ``TEMPORAL_ADDRESS``; ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY`` and
``TEMPORAL_TLS`` for a hosted cluster) it submits to that cluster, where ``starsmith worker``
processes run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.runtime import Runtime

from starsmith.config import ProjectConfig
from starsmith.orchestration.messages import BuildPlan, BuildReport, BuildRequest, Paths
from starsmith.orchestration.server import LocalServer, start_local_server
from starsmith.orchestration.worker import TASK_QUEUE, make_worker
from starsmith.orchestration.workflows import BackfillWorkflow, BuildWorkflow
from starsmith.registry import Catalogue
from starsmith.summary import finish, outcome_rows, summary_table


@dataclass(frozen=True)
class Connection:
    address: str | None = None
    namespace: str = "default"
    api_key: str | None = None
    tls: bool = False

    @classmethod
    def from_env(cls, address: str | None = None) -> Connection:
        return cls(
            address=address or os.environ.get("TEMPORAL_ADDRESS") or None,
            namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
            api_key=os.environ.get("TEMPORAL_API_KEY") or None,
            tls=os.environ.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes"),
        )


def warehouse_tag(cfg: ProjectConfig) -> str:
    """A short stable id of the warehouse, so workflow ids are unique per warehouse."""
    return hashlib.sha1(cfg.warehouse_ref.encode()).hexdigest()[:8]


def build_id(cfg: ProjectConfig, plan: BuildPlan, kind: str = "build") -> str:
    """What the build means, in its id: the warehouse, the days, a full refresh, the models. A
    build of other models or with other flags never joins a running one by accident."""
    import hashlib

    dates = sorted({d for stage in (*plan.phases, plan) for d in stage.all_days()}) or ["none"]
    span = dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}"
    models = hashlib.sha256(",".join(m.name for m in plan.models).encode()).hexdigest()[:8]
    refresh = "-full-refresh" if plan.full_refresh else ""
    return f"starsmith-{warehouse_tag(cfg)}-{kind}{refresh}-{span}-{models}"


def request_for(cfg: ProjectConfig, plan: BuildPlan, cat: Catalogue,
                select: tuple[str, ...] = ()) -> BuildRequest:
    paths = Paths(str(cfg.landing.resolve()), cfg.warehouse_ref, cfg.memory_limit,
                  str(cfg.staging.resolve()), cfg.memory_budget)
    return BuildRequest(paths, select if select else tuple(m.name for m in plan.models),
                        plan.all_days(), plan.full_refresh, plan.max_parallel, project=cat.project,
                        fingerprint=cat.fingerprint, accept_changes=plan.accept_changes)


@asynccontextmanager
async def session(cfg: ProjectConfig, conn: Connection, *, local_worker: bool | None = None
                  ) -> AsyncIterator[Client]:
    """A client; without an address also a local server and an in-process worker."""
    server: LocalServer | None = None
    if conn.address is None:
        server = await asyncio.to_thread(start_local_server, cfg.state / "temporal")
    try:
        client = await _connect(server.address if server else conn.address, conn)
        if local_worker if local_worker is not None else server is not None:
            assert cfg.project is not None
            async with make_worker(client, cfg.project, max_activities=cfg.max_parallel):
                yield client
        else:
            yield client
    finally:
        if server:
            server.stop()


async def _connect(address: str | None, conn: Connection, runtime: Runtime | None = None
                   ) -> Client:
    assert address
    last: Exception | None = None
    for _ in range(50):  # the dev server accepts TCP a moment before it serves RPCs
        try:
            return await Client.connect(address, namespace=conn.namespace, api_key=conn.api_key,
                                        tls=conn.tls, runtime=runtime)
        except RuntimeError as err:
            last = err
            await asyncio.sleep(0.2)
    raise RuntimeError(f"cannot reach Temporal at {address}: {last}")


async def follow(handle: WorkflowHandle[Any, BuildReport], console: Console,
                 total: int) -> BuildReport:
    """Render the workflow's progress query live until it finishes."""
    result = asyncio.ensure_future(handle.result())
    if not console.is_terminal:
        return await result
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("building", total=total)
        while not result.done():
            try:
                states = await handle.query("progress", result_type=dict[str, dict[str, str]])
            except Exception:
                states = {}
            flat = [s for day in states.values() for s in day.values()]
            running = [f"{d} {m}" for d, ms in states.items() for m, s in ms.items()
                       if s == "running"]
            bar.update(task, completed=sum(s in ("built", "failed", "skipped") for s in flat),
                       description=", ".join(running[:3]) or "waiting")
            await asyncio.wait([result], timeout=0.5)
    return await result


def report_rows(report: BuildReport) -> list[tuple[str, str, str, str]]:
    return outcome_rows(report.days, report.not_started)


def run_with_temporal(plan: BuildPlan, cfg: ProjectConfig, console: Console, *,
                      address: str | None, catalogue: Catalogue, wait: bool = True,
                      backfill: bool = False, forced: str = "") -> int:
    conn = Connection.from_env(address)
    req = dataclasses.replace(request_for(cfg, plan, catalogue), forced=forced)
    workflow_id = build_id(cfg, plan, "backfill" if backfill else "build")

    async def go() -> int:
        async with session(cfg, conn) as client:
            await _end_older_builds(client, cfg, workflow_id, console)
            handle = await client.start_workflow(
                BackfillWorkflow.run if backfill else BuildWorkflow.run, req, id=workflow_id,
                task_queue=TASK_QUEUE, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            if not wait:
                console.print(f"submitted {workflow_id} (run {handle.result_run_id})")
                return 0
            steps = sum(len(s.dates) * len(s.models) for s in (*plan.phases, plan))
            started = datetime.now()
            report = await follow(handle, console, steps)
            last = await asyncio.to_thread(finish, cfg, catalogue.project, report.days,
                                           report.not_started, started)
        console.print(summary_table(report_rows(report)))
        console.print(escape(last))
        console.print(f"workflow {workflow_id}")
        return 0 if report.ok else 1

    return asyncio.run(go())


async def _end_older_builds(client: Client, cfg: ProjectConfig, keep: str, console: Console
                            ) -> None:
    """A build of this warehouse still running from an earlier, crashed or abandoned command is
    said and ended, not left to run beside this one. The same build (same id: same days, models
    and flags) is resumed instead: start_workflow joins it."""
    query = (f'WorkflowId STARTS_WITH "starsmith-{warehouse_tag(cfg)}-" AND '
             "ExecutionStatus = 'Running'")
    async for wf in client.list_workflows(query):
        if wf.id == keep or wf.id.startswith(f"{keep}-"):  # ours, or a child of ours
            console.print(escape(f"resuming {wf.id}: it is still running (started "
                                 f"{wf.start_time:%Y-%m-%d %H:%M:%S})"))
            continue
        if wf.parent_id:  # a backfill's day: ended with its parent
            continue
        console.print(escape(f"ending {wf.id}: an earlier build of this warehouse still running "
                             f"(started {wf.start_time:%Y-%m-%d %H:%M:%S}); this build replaces it"))
        await client.get_workflow_handle(wf.id).terminate(
            reason=f"superseded by {keep}: one build of a warehouse at a time")


def status(cfg: ProjectConfig, console: Console, workflow_id: str | None,
           address: str | None) -> int:
    conn = Connection.from_env(address)

    async def go() -> int:
        async with session(cfg, conn, local_worker=False) as client:
            wid = workflow_id
            if wid is None:
                query = f'WorkflowId STARTS_WITH "starsmith-{warehouse_tag(cfg)}-"'
                async for wf in client.list_workflows(query, limit=1):
                    wid = wf.id
                    break
            if wid is None:
                console.print("no build of this warehouse is known to Temporal")
                return 1
            handle = client.get_workflow_handle(wid, result_type=BuildReport)
            info = await handle.describe()
            console.print(f"{wid}: {info.status.name if info.status else 'UNKNOWN'}")
            if info.status == WorkflowExecutionStatus.COMPLETED:
                report = await handle.result()
                console.print(summary_table(report_rows(report)))
            elif info.status == WorkflowExecutionStatus.RUNNING:
                states = await handle.query("progress", result_type=dict[str, dict[str, str]])
                console.print(summary_table([(d, m, s, "") for d, ms in states.items()
                                             for m, s in ms.items()]))
            return 0

    return asyncio.run(go())
