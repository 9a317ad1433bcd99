"""The in-process runner: the same plan and step function the Temporal workflow uses.

Used for debugging (``starsmith build --in-process``), as the benchmark baseline for the
workflow's overhead, and by tests of the warehouse logic that do not need a server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from starsmith.errors import StarsmithError, WriteConflict
from starsmith.log import get_logger
from starsmith.orchestration.messages import BuildPlan, DayOutcome, StepRequest, StepResult
from starsmith.orchestration.step import run_step
from starsmith.registry import Catalogue

log = get_logger(__name__)
Listener = Callable[[str, str, str], None]  # (logical date, model, state)
CONFLICT_ATTEMPTS = 5  # a step whose publish met another step's is run again, up to this often


def run_day(plan: BuildPlan, day: str, *, landing: str, warehouse: str, memory_limit: str,
            catalogue: Catalogue, staging: str = "", listener: Listener | None = None,
            job_key: str = "", memory_budget: str = "") -> DayOutcome:
    """Run every model of the plan for one day; a failure skips only its dependants.

    As the workflow does, every step whose dependencies are built starts, up to
    ``plan.max_parallel`` at once (threads, as a worker's activities run), so the dimensions of
    a star build beside its staging model instead of after it. Results are listed in plan order.
    Under a memory budget one step runs at a time: the budget is the process's peak, which a
    step measures as its own to size its batches (orchestration/budget.py).
    """
    cat = catalogue
    job_key = job_key or uuid.uuid4().hex
    outcome = DayOutcome(day, first_date=plan.ranges.get(day, ""))
    needs = {m.name: set(m.needs) for m in plan.models}
    state = dict.fromkeys(needs, "pending")
    results: dict[str, StepResult] = {}
    width = 1 if memory_budget else max(1, plan.max_parallel)

    def start(name: str) -> Future[StepResult]:
        request = StepRequest(name, day, plan.run_ids[day], landing, warehouse,
                              full_refresh=plan.full_refresh, memory_limit=memory_limit,
                              staging=staging, job_key=job_key, memory_budget=memory_budget,
                              project=cat.project, accept_changes=plan.accept_changes,
                              first_date=plan.ranges.get(day, ""))
        if listener:
            listener(day, name, "running")
        state[name] = "running"
        return pool.submit(_step, request, cat)

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="starsmith-step") as pool:
        running: dict[Future[StepResult], str] = {}
        while "pending" in state.values() or running:
            for name in [n for n, s in state.items() if s == "pending"]:
                blocked = [n for n in needs[name] if state[n] in ("failed", "skipped")]
                if blocked:
                    state[name] = "skipped"
                    outcome.skipped[name] = blocked[0]
                    if listener:
                        listener(day, name, "skipped")
                elif (all(state[n] == "built" for n in needs[name])
                      and len(running) < width):
                    running[start(name)] = name
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                    state[name] = "built"
                except StarsmithError as err:
                    log.error("%s %s failed: %s", name, day, err)
                    outcome.failed[name] = str(err)
                    state[name] = "failed"
                if listener:
                    listener(day, name, state[name])
    outcome.built = [results[m.name] for m in plan.models if m.name in results]
    return outcome


def _step(request: StepRequest, cat: Catalogue) -> StepResult:
    """One step; run again when its publish met another step's (what Temporal's retry does)."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return run_step(request, cat)
        except WriteConflict as err:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            log.info("%s %s: %s; run again", request.model, request.logical_date, err)
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


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
