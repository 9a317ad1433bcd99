"""The in-process runner: the same plan and step function the Temporal workflow uses.

Used for debugging (``starsmith build --in-process``), as the benchmark baseline for the
workflow's overhead, and by tests of the warehouse logic that do not need a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from starsmith.errors import StarsmithError
from starsmith.log import get_logger
from starsmith.orchestration.messages import BuildPlan, DayOutcome, StepRequest
from starsmith.orchestration.step import run_step
from starsmith.registry import Catalogue

log = get_logger(__name__)
Listener = Callable[[str, str, str], None]  # (logical date, model, state)


def run_day(plan: BuildPlan, day: str, *, landing: str, warehouse: str, memory_limit: str,
            catalogue: Catalogue, staging: str = "", listener: Listener | None = None,
            job_key: str = "", memory_budget: str = "") -> DayOutcome:
    """Run every model of the plan for one day; a failure skips only its dependants."""
    cat = catalogue
    job_key = job_key or uuid.uuid4().hex
    outcome = DayOutcome(day, first_date=plan.ranges.get(day, ""))
    for planned in plan.models:
        blocked = [n for n in planned.needs if n in outcome.failed or n in outcome.skipped]
        if blocked:
            outcome.skipped[planned.name] = blocked[0]
            if listener:
                listener(day, planned.name, "skipped")
            continue
        if listener:
            listener(day, planned.name, "running")
        request = StepRequest(planned.name, day, plan.run_ids[day], landing, warehouse,
                              full_refresh=plan.full_refresh, memory_limit=memory_limit,
                              staging=staging, job_key=job_key, memory_budget=memory_budget,
                              project=cat.project, accept_changes=plan.accept_changes,
                              first_date=plan.ranges.get(day, ""))
        try:
            outcome.built.append(run_step(request, cat))
        except StarsmithError as err:
            log.error("%s %s failed: %s", planned.name, day, err)
            outcome.failed[planned.name] = str(err)
        if listener:
            listener(day, planned.name, "failed" if planned.name in outcome.failed else "built")
    return outcome


def run_plan(plan: BuildPlan, *, landing: str, warehouse: str, catalogue: Catalogue,
             memory_limit: str = "4GB", staging: str = "", listener: Listener | None = None,
             memory_budget: str = "") -> list[DayOutcome]:
    """Days in order, after the plan's restatement phases; stops after the first day that did
    not fully build (SCD needs order)."""
    outcomes = []
    days = [(stage, day) for stage in (*plan.phases, plan) for day in stage.dates]
    for i, (stage, day) in enumerate(days):
        outcome = run_day(stage, day, landing=landing, warehouse=warehouse,
                          memory_limit=memory_limit, staging=staging, listener=listener,
                          catalogue=catalogue, memory_budget=memory_budget)
        outcomes.append(outcome)
        last = i == len(days) - 1 or not outcome.ok
        upkeep(warehouse, memory_limit, midway=not last)  # the day's steps are done
        if not outcome.ok:
            log.error("stopping after %s: later days wait until it builds", day)
            return outcomes
    return outcomes


def upkeep(warehouse: str, memory_limit: str = "4GB", *, midway: bool = False) -> str:
    """The warehouse's upkeep once a day's steps are done (``Warehouse.upkeep``), best effort:
    a failure leaves the file as it was, the next day or build tries again, and its message is
    returned ("" when all went well). The in-process runner calls it after each day, not only
    at the end, so that a long backfill's file never grows far past its data (``midway``: a
    looser bound between its days, the usual one after its last)."""
    from starsmith.loaders.connect import open_warehouse

    try:
        open_warehouse(warehouse, memory_limit=memory_limit).upkeep(midway=midway)
    except Exception as err:
        log.warning("upkeep of %s failed, the next build tries again: %s", warehouse, err)
        return str(err)
    return ""
