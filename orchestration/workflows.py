"""The nightly build workflow: days in order, each day's models as a DAG.

A model starts as soon as all its inputs are built (no layer barriers), with at most
``max_parallel`` steps in flight. A failed step skips only its dependants; independent branches
finish. After a day that did not fully build, later days are not started (an SCD needs its days in
order), and the result says which. Workflow code is deterministic: no I/O, no clocks, no polars.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from starsmith.loaders.extract.messages import ExtractRequest, ExtractResult
    from starsmith.orchestration.messages import (
        BuildPlan,
        BuildReport,
        BuildRequest,
        DayOutcome,
        Finished,
        StepRequest,
        StepResult,
    )

SCHEDULED_AT = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=30), maximum_attempts=5)
STEP_TIMEOUT = timedelta(hours=2)
# A database that is down is waited for longer than a step is retried: 1 s doubling to 2 min
EXTRACT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(minutes=2), maximum_attempts=8)
EXTRACT_TIMEOUT = timedelta(hours=2)
HEARTBEAT_TIMEOUT = timedelta(seconds=10)


def _reason(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError) else err
    return str(cause.message if isinstance(cause, ApplicationError) else cause)


@workflow.defn(name="StarsmithBuild")
class BuildWorkflow:
    def __init__(self) -> None:
        self._states: dict[str, dict[str, str]] = {}

    @workflow.query(name="progress")
    def progress(self) -> dict[str, dict[str, str]]:
        """Every model's state per logical date: pending, running, built, failed or skipped."""
        return self._states

    @workflow.run
    async def run(self, req: BuildRequest) -> BuildReport:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_AT)
        if scheduled is not None and not req.dates and not req.until:
            # a Schedule's run: its logical date is the scheduled time
            req = dataclasses.replace(req, until=scheduled.date().isoformat())
        started = workflow.now()
        report = await self._build(req)
        if workflow.patched("upkeep"):  # histories from before it replay without it
            await self._upkeep(req)
        if scheduled is not None:  # nobody waits on a schedule's run: its end is notified
            await workflow.execute_activity(
                "notify_build", Finished(report, req.paths.warehouse, started.isoformat(),
                                         workflow.now().isoformat()),
                result_type=list[str], start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=1))
        return report

    async def _upkeep(self, req: BuildRequest) -> None:
        """The warehouse's upkeep, once every step is done (a DuckDB file grown past its data
        is rewritten); best effort: it never fails the build."""
        try:
            problem: str = await workflow.execute_activity(
                "upkeep", req.paths, result_type=str, start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=1),
                summary="upkeep")
        except ActivityError as err:
            problem = _reason(err)
        if problem:
            workflow.logger.warning("upkeep of %s failed: %s", req.paths.warehouse, problem)

    async def _extract(self, req: BuildRequest) -> list[DayOutcome]:
        """Land the database extracts the build needs, before it plans: a source's days in
        order (each continues from the previous day's watermark), sources side by side. A
        failed extract (after retries, or at once for bad credentials or a dropped column) is
        reported as a failed ``extract <source>`` on its day; that day waits, the rest builds."""
        todo: list[ExtractRequest] = await workflow.execute_activity(
            "due_extracts", req, result_type=list[ExtractRequest],
            start_to_close_timeout=timedelta(minutes=5), retry_policy=STEP_RETRY)
        by_source: dict[str, list[ExtractRequest]] = {}
        for item in todo:
            by_source.setdefault(item.source, []).append(item)
        failed: dict[str, dict[str, str]] = {}

        async def one_source(items: list[ExtractRequest]) -> None:
            for item in sorted(items, key=lambda i: i.day):
                try:
                    await workflow.execute_activity(
                        "extract_source", item, result_type=ExtractResult,
                        start_to_close_timeout=EXTRACT_TIMEOUT, retry_policy=EXTRACT_RETRY,
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        summary=f"extract {item.source} {item.day}")
                except ActivityError as err:
                    failed.setdefault(item.day, {})[f"extract {item.source}"] = _reason(err)
                    return  # its later days would read past a watermark not yet landed

        await asyncio.gather(*(one_source(items) for _, items in sorted(by_source.items())))
        return [DayOutcome(day, failed=dict(sorted(f.items()))) for day, f in sorted(failed.items())]

    async def _build(self, req: BuildRequest) -> BuildReport:
        # histories recorded before extracts existed replay without them
        extracts = await self._extract(req) if workflow.patched("extracts") else []
        plan: BuildPlan = await workflow.execute_activity(
            "plan_build", req, result_type=BuildPlan,
            start_to_close_timeout=timedelta(minutes=5), retry_policy=STEP_RETRY,
        )
        # Phases run first, in order (a restatement's, or the models a stopped catch-up left
        # behind), then the plan's own days.
        stages = [(f"phase {i + 1}: ", phase) for i, phase in enumerate(plan.phases)]
        stages.append(("", plan))
        todo = [(label + day, stage, day) for label, stage in stages for day in stage.dates]
        for key, stage, _ in todo:
            self._states[key] = {m.name: "pending" for m in stage.models}
        report = BuildReport(days=extracts)
        for i, (key, stage, day) in enumerate(todo):
            outcome = await self._run_day(stage, req, day, key)
            report.days.append(outcome)
            if not outcome.ok:
                report.not_started = [k for k, _, _ in todo[i + 1:]]
                break
        return report

    async def _run_day(self, plan: BuildPlan, req: BuildRequest, day: str, key: str
                       ) -> DayOutcome:
        outcome = DayOutcome(day, first_date=plan.ranges.get(day, ""))
        states = self._states[key]
        needs = {m.name: set(m.needs) for m in plan.models}
        order = [m.name for m in plan.models]
        running: dict[str, asyncio.Task[StepResult]] = {}
        while any(states[m] in ("pending", "running") for m in order):
            for name in order:
                if states[name] != "pending":
                    continue
                blocked = [n for n in needs[name] if states[n] in ("failed", "skipped")]
                if blocked:
                    states[name] = "skipped"
                    outcome.skipped[name] = blocked[0]
                elif (all(states[n] == "built" for n in needs[name])
                      and len(running) < max(1, plan.max_parallel)):
                    states[name] = "running"
                    running[name] = asyncio.ensure_future(self._step(plan, req, day, name))
            if not running:
                continue
            done, _ = await workflow.wait(list(running.values()),
                                          return_when=asyncio.FIRST_COMPLETED)
            for name in [n for n, t in running.items() if t in done]:
                task = running.pop(name)
                try:
                    outcome.built.append(task.result())
                    states[name] = "built"
                except ActivityError as err:
                    states[name] = "failed"
                    outcome.failed[name] = _reason(err)
        return outcome

    async def _step(self, plan: BuildPlan, req: BuildRequest, day: str, name: str
                    ) -> StepResult:
        step = StepRequest(name, day, plan.run_ids[day], req.paths.landing, req.paths.warehouse,
                           full_refresh=plan.full_refresh, memory_limit=req.paths.memory_limit,
                           staging=req.paths.staging, job_key=workflow.info().run_id,
                           memory_budget=req.paths.memory_budget, project=req.project,
                           fingerprint=req.fingerprint, accept_changes=plan.accept_changes,
                           first_date=plan.ranges.get(day, ""))
        result: StepResult = await workflow.execute_activity(
            "build_model", step, result_type=StepResult, start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=STEP_RETRY,
            summary=f"{name} {day}",
        )
        return result


@workflow.defn(name="StarsmithBackfill")
class BackfillWorkflow:
    """Days in order as child builds; a re-run resumes from the first day not yet done."""

    def __init__(self) -> None:
        self._done: list[str] = []

    @workflow.query(name="progress")
    def progress(self) -> list[str]:
        return self._done

    @workflow.run
    async def run(self, req: BuildRequest) -> BuildReport:
        todo: list[str] = await workflow.execute_activity(
            "days_not_built", req, result_type=list[str],
            start_to_close_timeout=timedelta(minutes=5), retry_policy=STEP_RETRY,
        )
        self._done = [d for d in req.dates if d not in todo]
        report = BuildReport()
        for i, day in enumerate(todo):
            child = dataclasses.replace(req, dates=(day,), until="")
            result = await workflow.execute_child_workflow(
                BuildWorkflow.run, child, id=f"{workflow.info().workflow_id}-{day}")
            report.days.extend(result.days)
            if not result.ok:
                report.not_started = todo[i + 1:]
                break
            self._done.append(day)
        return report


WORKFLOWS = [BuildWorkflow, BackfillWorkflow]
