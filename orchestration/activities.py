"""Temporal activities: plan a build, build one model. Sync functions run in a thread pool.

Polars work is CPU-bound, so activities are plain ``def``s on the worker's thread pool (an
``async def`` would block the event loop and starve heartbeats). A helper thread heartbeats every
half second while the step works, so a killed worker is noticed within the heartbeat timeout and
the step retried elsewhere. A StarsmithError becomes an ApplicationError whose ``non_retryable``
says what the error class says: bad data and bad configuration are not retried.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from starsmith.errors import ProjectMismatch, StarsmithError
from starsmith.loaders.extract.messages import ExtractRequest, ExtractResult
from starsmith.loaders.store import landing_root, local_folder
from starsmith.orchestration.messages import (
    WARNINGS,
    BuildPlan,
    BuildRequest,
    Finished,
    Paths,
    StepRequest,
    StepResult,
)
from starsmith.project import Project
from starsmith.registry import Catalogue

T = TypeVar("T")
HEARTBEAT_EVERY_S = 0.5


@contextmanager
def heartbeating() -> Iterator[None]:
    """Heartbeat from a helper thread while the body runs in this one."""
    stop = threading.Event()
    ctx = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            ctx.run(activity.heartbeat)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _as_temporal(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StarsmithError as err:
        raise ApplicationError(str(err), type=type(err).__name__,
                               non_retryable=not err.retryable) from err


class ProjectActivities:
    """The activities of one project: a worker serves the project it was started with.

    Every task carries the fingerprint of the project the client planned with; a worker whose
    copy differs (other model code or contracts) refuses the task, non-retryably, instead of
    running other code against the warehouse.
    """

    def __init__(self, project: Project) -> None:
        self.project = project

    def catalogue(self, fingerprint: str) -> Catalogue:
        from starsmith.discover import load_catalogue

        cat = load_catalogue(self.project)
        if fingerprint and cat.fingerprint != fingerprint:
            raise ProjectMismatch(
                f"this worker's copy of project {self.project.name!r} (fingerprint "
                f"{cat.fingerprint}) differs from the one the build was planned with "
                f"({fingerprint})", where=f"worker {socket.gethostname()} pid {os.getpid()}, "
                f"project {self.project.root}",
                fix="Deploy the same project files to every worker and restart them (`starsmith "
                    "worker --project DIR`), then build again")
        return cat

    @activity.defn(name="plan_build")
    def plan_build(self, req: BuildRequest) -> BuildPlan:
        """Select the models and the dates (by default every landed day not yet built)."""
        from starsmith.loaders.connect import open_warehouse
        from starsmith.orchestration.plan import pending_dates
        from starsmith.orchestration.restate import with_restatement

        def go() -> BuildPlan:
            cat = self.catalogue(req.fingerprint)
            models = cat.select(list(req.select) or None)
            wh = open_warehouse(req.paths.warehouse, memory_limit=req.paths.memory_limit)
            if req.dates:
                dates = [date.fromisoformat(d) for d in req.dates]
            else:
                dates = pending_dates(cat, models, landing_root(req.paths.landing), wh).days
                if req.until:
                    dates = [d for d in dates if d <= date.fromisoformat(req.until)]
            if req.full_refresh:  # one rebuild from history as of the last day, not one a day
                dates = dates[-1:]
            # Any restatement is decided here, when the build runs (a schedule's, a backfill's
            # day, a CLI build), and runs inside this workflow before the days: never beside it.
            return with_restatement(
                cat, models, dates, wh, landing_root(req.paths.landing),
                forced=date.fromisoformat(req.forced) if req.forced else None,
                full_refresh=req.full_refresh, accept_changes=req.accept_changes,
                max_parallel=req.max_parallel)

        return _as_temporal(go)

    @activity.defn(name="days_not_built")
    def days_not_built(self, req: BuildRequest) -> list[str]:
        """Of the requested days, those some selected model has not built yet (backfill resume)."""
        from starsmith.loaders.connect import open_warehouse

        def go() -> list[str]:
            cat = self.catalogue(req.fingerprint)
            models = [m for m in cat.select(list(req.select) or None) if cat.models[m].inputs]
            marks = open_warehouse(req.paths.warehouse, memory_limit=req.paths.memory_limit
                                   ).watermarks()
            built = {(m, d.isoformat()) for m, d in marks.select("model", "logical_date").iter_rows()}
            return [d for d in req.dates if any((m, d) not in built for m in models)]

        return _as_temporal(go)

    @activity.defn(name="build_model")
    def build_model(self, req: StepRequest) -> StepResult:
        """Build one model for one logical date (idempotent: a retry re-runs it from scratch)."""
        from starsmith.orchestration.metrics import record_step
        from starsmith.orchestration.step import run_step

        clock = time.perf_counter()
        try:
            with heartbeating():
                result: StepResult = _as_temporal(
                    lambda: run_step(req, self.catalogue(req.fingerprint)))
        except Exception:  # each failed attempt counts, retries included
            record_step(req.model, "failed", 0, 0, 0, time.perf_counter() - clock)
            raise
        record_step(result.model, result.status, result.rows_written, result.rows_quarantined,
                    result.rows_read, result.duration_s)
        return result

    @activity.defn(name="due_extracts")
    def due_extracts(self, req: BuildRequest) -> list[ExtractRequest]:
        """The database extracts the build needs first: for each database source its models
        read, the days it builds (its dates, a schedule's date, else today) not landed yet."""
        from starsmith.loaders.extract.run import due, extracting

        def go() -> list[ExtractRequest]:
            cat = self.catalogue(req.fingerprint)
            sources = extracting(cat, cat.select(list(req.select) or None))
            if not sources or req.full_refresh:
                return []
            days = [date.fromisoformat(d) for d in req.dates] or \
                [date.fromisoformat(req.until) if req.until else date.today()]
            return [ExtractRequest(s.name, d.isoformat(), req.paths.landing, req.project,
                                   req.fingerprint)
                    for s, d in due(sources, days, local_folder(req.paths.landing, "an extract"))]

        return _as_temporal(go)

    @activity.defn(name="extract_source")
    def extract_source(self, req: ExtractRequest) -> ExtractResult:
        """Land one source's extract for one day (a no-op once landed; an attempt that died
        before the manifest is simply extracted again, from the same watermark)."""
        from starsmith.loaders.extract.land import extract_day
        from starsmith.loaders.extract.run import extracting

        def go() -> ExtractResult:
            (source,) = extracting(self.catalogue(req.fingerprint), names=[req.source])
            return extract_day(source, date.fromisoformat(req.day),
                               local_folder(req.landing, "an extract"),
                               self.project.secrets_file, force=req.force)

        with heartbeating():
            return _as_temporal(go)

    @activity.defn(name="notify_build")
    def notify_build(self, done: Finished) -> list[str]:
        """Tell the project's webhook / e-mail how a scheduled build ended (its settings decide
        whether); what could not be delivered is returned, never raised."""
        from datetime import datetime

        from starsmith.notify import BuildSummary, notify

        warned = [(d.logical_date, r.model) for d in done.report.days for r in d.built
                  if r.details.get(WARNINGS)]
        summary = BuildSummary.from_report(
            done.report, project=self.project.name, warehouse=done.warehouse,
            started=datetime.fromisoformat(done.started),
            finished=datetime.fromisoformat(done.finished), warned=warned)
        return notify(summary, self.project.notify)

    @activity.defn(name="upkeep")
    def upkeep(self, paths: Paths) -> str:
        """The warehouse's upkeep after a build's last step (``Warehouse.upkeep``); what
        failed is returned, never raised: the next build tries again."""
        from starsmith.orchestration.local import upkeep

        with heartbeating():
            return upkeep(paths.warehouse, paths.memory_limit)

    def all(self) -> list[Callable[..., object]]:
        return [self.due_extracts, self.extract_source,
                self.plan_build, self.days_not_built, self.build_model, self.notify_build,
                self.upkeep]
