"""``starsmith schedule ...``: Temporal Schedules for the nightly build.

A scheduled run's logical date is its scheduled time (the workflow reads it from Temporal's
``TemporalScheduledStartTime``); the overlap policy skips a run while the previous one is still
going, so two builds of one warehouse never run at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.shell import config, exit_now, guard

if TYPE_CHECKING:  # temporalio costs ~0.5 s to import: only schedule commands pay it
    from temporalio.client import Client

app = typer.Typer(no_args_is_help=True, help="Temporal Schedules for the nightly build.")
console = Console()
Address = Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS",
                                             help="Temporal cluster (schedules need a running one)")]


def schedule_id(cfg: ProjectConfig, name: str) -> str:
    from starsmith.temporal_cli import warehouse_tag

    return f"starsmith-{warehouse_tag(cfg)}-{name}"


def _run(address: str | None, action: object) -> None:
    from starsmith.temporal_cli import Connection, session

    cfg = guard(config)

    async def go() -> None:
        async with session(cfg, Connection.from_env(address), local_worker=False) as client:
            await action(client, cfg)  # type: ignore[operator]

    asyncio.run(go())
    exit_now(0)  # as every Temporal command: temporalio can crash in finalisation


@app.command()
def create(cron: Annotated[str, typer.Option(help='cron, e.g. "0 2 * * *"')],
           timezone: Annotated[str, typer.Option(help="IANA time zone of the cron")] = "UTC",
           name: str = "nightly", address: Address = None) -> None:
    """Create the schedule: each run builds the landed days up to its scheduled date."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
    )

    from starsmith.orchestration.messages import BuildRequest, Paths
    from starsmith.orchestration.worker import TASK_QUEUE
    from starsmith.orchestration.workflows import BuildWorkflow

    async def action(client: Client, cfg: ProjectConfig) -> None:
        paths = Paths(str(cfg.landing.resolve()), cfg.warehouse_ref, cfg.memory_limit,
                      str(cfg.staging.resolve()), cfg.memory_budget)
        sid = schedule_id(cfg, name)
        # No fingerprint: a scheduled run builds the project as its workers have it then.
        request = BuildRequest(paths, project=cfg.project.name if cfg.project else "")
        await client.create_schedule(sid, Schedule(
            action=ScheduleActionStartWorkflow(BuildWorkflow.run, request,
                                               id=f"{sid}-run", task_queue=TASK_QUEUE),
            spec=ScheduleSpec(cron_expressions=[cron], time_zone_name=timezone),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        ))
        console.print(f"created schedule {sid} ({cron}, {timezone})")

    _run(address, action)


@app.command("list")
def list_schedules(address: Address = None) -> None:
    """List this warehouse's schedules."""
    async def action(client: Client, cfg: ProjectConfig) -> None:
        table = Table()
        for col in ("schedule", "paused", "next run"):
            table.add_column(col)
        prefix = schedule_id(cfg, "")
        async for entry in await client.list_schedules():
            if not entry.id.startswith(prefix):
                continue
            info = entry.info
            paused = entry.schedule.state.paused if entry.schedule else False
            nxt = info.next_action_times[0].isoformat() if info and info.next_action_times else "-"
            table.add_row(entry.id, str(paused), nxt)
        console.print(table)

    _run(address, action)


def _simple(verb: str) -> None:
    def command(name: str = "nightly", address: Address = None) -> None:
        async def action(client: Client, cfg: ProjectConfig) -> None:
            handle = client.get_schedule_handle(schedule_id(cfg, name))
            if verb == "pause":
                await handle.pause(note="paused with starsmith")
            elif verb == "unpause":
                await handle.unpause(note="unpaused with starsmith")
            elif verb == "trigger":
                from temporalio.client import ScheduleOverlapPolicy

                await handle.trigger(overlap=ScheduleOverlapPolicy.SKIP)
            else:
                await handle.delete()
            console.print(f"{verb}: {handle.id}")

        _run(address, action)

    command.__doc__ = f"{verb.capitalize()} the schedule."
    app.command(verb)(command)


for _verb in ("pause", "unpause", "trigger", "delete"):
    _simple(_verb)
