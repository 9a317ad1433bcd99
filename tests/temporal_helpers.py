"""Helpers for tests against the real Temporal dev server: run builds, read histories."""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from starsmith.orchestration.messages import BuildReport, BuildRequest, Paths
from starsmith.orchestration.worker import make_worker
from starsmith.orchestration.workflows import BackfillWorkflow, BuildWorkflow
from starsmith.project import Project
from starsmith.scaffold import demo_project


def request(landing: Path, wh: Path, dates: list[date], **kw: Any) -> BuildRequest:
    return BuildRequest(Paths(str(landing), str(wh), "1GB"), dates=tuple(d.isoformat() for d in dates),
                        **kw)


async def run_build(address: str, req: BuildRequest, *, backfill: bool = False,
                    workflow_id: str | None = None, project: Project | None = None
                    ) -> tuple[BuildReport, WorkflowHandle[Any, BuildReport]]:
    client = await Client.connect(address)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    async with make_worker(client, project or demo_project(), task_queue=queue,
                           max_activities=4):
        handle = await client.start_workflow(
            BackfillWorkflow.run if backfill else BuildWorkflow.run, req,
            id=workflow_id or f"test-{uuid.uuid4().hex}", task_queue=queue)
        report = await handle.result()
    return report, handle


def scheduled_steps(history_events: list[Any]) -> list[tuple[int, str, str]]:
    """(event id, model, logical date) of every build_model activity scheduled."""
    out = []
    for e in history_events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "build_model":
                body = json.loads(attrs.input.payloads[0].data)
                out.append((e.event_id, body["model"], body["logical_date"]))
    return out


def completions(history_events: list[Any]) -> dict[int, int]:
    """Scheduled event id -> event id of its completion."""
    return {e.activity_task_completed_event_attributes.scheduled_event_id: e.event_id
            for e in history_events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED}
