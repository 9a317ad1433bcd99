"""One model's build step: read inputs by reference, transform, stage, audit, publish.

``run_step`` takes one small dataclass and returns one: table names, paths, dates and counts,
never data, so the same function runs in-process or as a Temporal activity on any worker that can
reach the landing zone and the warehouse. It is idempotent: what it stages is named by
(model, run), every strategy replaces what it writes, and the quarantine rows it is responsible
for are replaced, not appended.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from sqlglot import exp

from starsmith.contract import Model, Strategy, Window
from starsmith.errors import DataError, StarsmithError
from starsmith.loaders import sql
from starsmith.loaders.connect import open_warehouse
from starsmith.loaders.extract.land import dead_letter_details
from starsmith.loaders.landed import landed_dates
from starsmith.loaders.landing import fingerprints
from starsmith.loaders.landing_look import one_look, scope_of
from starsmith.loaders.store import Landing, landing_root
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, Warehouse
from starsmith.log import get_logger
from starsmith.orchestration.budget import duckdb_limit, parse_size
from starsmith.orchestration.fact_range import NotInOneGo
from starsmith.orchestration.fact_step import build_fact
from starsmith.orchestration.failures import typed as _typed
from starsmith.orchestration.inputs import input_days
from starsmith.orchestration.many_days import transformed
from starsmith.orchestration.messages import WARNINGS, StepRequest, StepResult
from starsmith.orchestration.output import StepOutput
from starsmith.orchestration.scd_step import build_scd
from starsmith.quality.contract import audit_staged
from starsmith.quality.gate import judge, refuse
from starsmith.quality.sql_engine import supported
from starsmith.registry import Catalogue

log = get_logger(__name__)
FAILPOINT = "STARSMITH_FAILPOINT"


def failpoint(name: str, model: str) -> None:
    """Kill this process at a named point when the environment asks (crash-safety tests)."""
    if os.environ.get(FAILPOINT) == f"{name}:{model}":
        os.kill(os.getpid(), signal.SIGKILL)


def preload(cat: Catalogue) -> Catalogue:
    """Import what a step needs (engines, the catalogue's modules, sqlglot's dialect), once.

    A worker calls this before it polls, so its first step does not pay ~0.3 s of imports that
    every later step in the process gets for free.
    """
    import pyarrow  # noqa: F401  (the engines' interchange, imported by their first query)
    import sqlglot

    import starsmith.loaders.duckdb  # noqa: F401  (the embedded default; BigQuery's client loads on use)

    sqlglot.parse_one("SELECT 1 FROM read_parquet('x')", read="duckdb")
    for model in cat.models.values():  # reads each transform's source once (~10 ms a file)
        model.fingerprint()
    # Polars starts its thread pool and engine on the first query (~13 ms): once, here.
    pl.LazyFrame({"k": [2, 1]}).sort("k").with_columns(pl.col("k").shift(1)).collect(
        engine="in-memory")
    return cat


def run_step(req: StepRequest, cat: Catalogue) -> StepResult:
    model = cat.model(req.model)
    day = date.fromisoformat(req.logical_date)
    wh = open_warehouse(req.warehouse, memory_limit=duckdb_limit(req.memory_budget, req.memory_limit),
                        staging=req.staging,
                        job_key=req.job_key or f"{req.run_id}-{time.time_ns()}")
    started = datetime.now()
    clock = time.perf_counter()
    log_row: dict[str, Any] = {
        "run_id": req.run_id, "model": model.name, "logical_date": day,
        "strategy": model.strategy.value, "started_at": started,
        "fingerprint": model.fingerprint(),
    }
    try:
        with wh.session(), one_look(scope_of(req.job_key, req.logical_date, req.first_date)):
            counts = _run(model, cat, wh, req, day, log_row, clock)
    except NotInOneGo as why:  # nothing published: the range's nights, one after another
        log.info("%s: %s; built night by night", model.name, why)
        return _night_by_night(req, cat)
    except Exception as err:  # recorded in the run log, then surfaced typed
        _log_failure(wh, log_row, clock, err)
        typed = _typed(err, model, req, cat)
        if typed is err:
            raise
        raise typed from err
    log.info("%s %s: %s", model.name, day, {k: v for k, v in counts.items() if v})
    core = {k: counts.get(k, 0) for k in ("rows_read", "rows_written", "rows_inserted",
                                           "rows_updated", "rows_closed", "rows_quarantined")}
    return StepResult(model.name, req.logical_date, "success", **core,
                      duration_s=round(time.perf_counter() - clock, 3),
                      details={k: v for k, v in counts.items() if k not in core})


def _night_by_night(req: StepRequest, cat: Catalogue) -> StepResult:
    """A range's days as nights, each its own step and publish; one result for them all."""
    from starsmith.orchestration.plan import run_id_for

    results = [run_step(replace(req, first_date="", logical_date=d.isoformat(),
                                run_id=run_id_for(d)), cat) for d in range_days(req)]
    sums = {k: sum(getattr(r, k) for r in results)
            for k in ("rows_read", "rows_written", "rows_inserted", "rows_updated", "rows_closed",
                      "rows_quarantined", "duration_s")}
    details: dict[str, int] = {}
    for r in results:
        for k, v in r.details.items():
            details[k] = details.get(k, 0) + v
    return StepResult(req.model, req.logical_date, "success", **sums, details=details)


def _run(model: Model, cat: Catalogue, wh: Warehouse, req: StepRequest, day: date,
         log_row: dict[str, Any], clock: float) -> dict[str, int]:
    """Build, stage, audit, publish; returns the counts that went into the run log."""
    wh.check_schema(model, full_refresh=req.full_refresh)  # fail before any data moves
    span = range_days(req)
    read = _landings(model, cat, landing_root(req.landing), day,
                     full_refresh=req.full_refresh or bool(span), known=_known(wh, model, cat))
    out = _build(model, cat, wh, landing_root(req.landing), day, req, span)
    if span and out.quarantine_scope is None:  # the range's days' held rows are replaced
        out.quarantine_scope = ("logical_date", span)
    staged = wh.union(out.parts) if out.parts else wh.stage(model.name, req.run_id, out.rows,
                                                            in_memory=True)
    if out.parts:  # built batch by batch: the rows are on disk, read them only if a rule must
        out.rows_written = int(wh.query(f"SELECT count(*) AS n FROM {staged}")["n"][0])
    failpoint("after_stage", model.name)
    try:
        out, staged, quality = _audit(model, wh, req, day, out, staged)
    except DataError as err:  # refused: say where a steward can read the staged rows
        kept = wh.keep_staged(staged)
        where = kept if err.where in (None, staged) else f"{err.where}, kept at {kept}"
        if where == err.where:
            raise
        raise type(err)(err.what, where=where, fix=err.fix) from err
    counts = {"rows_read": out.rows_read, "rows_written": out.rows_written or out.rows.height,
              "rows_quarantined": out.quarantine.height, **out.counts,
              **_dead_letters(model, cat, req.landing, day)}
    if quality is not None and quality.height:  # rules of severity warn that failed
        warned = quality.filter(~pl.col("success") & (pl.col("severity") == "warn")).height
        if warned:
            counts[WARNINGS] = warned
    core = {k: v for k, v in counts.items() if k in RUN_LOG_COLUMNS}
    extra = {k: v for k, v in counts.items() if k not in RUN_LOG_COLUMNS}
    log_row |= core | {"details": json.dumps(extra) if extra else None,
                       "status": "success", "finished_at": datetime.now(),
                       "duration_s": time.perf_counter() - clock}
    wh.publish(Publish(
        target=model.name, staged=staged, statements=out.statements(model.name, staged),
        run_log=log_row, quarantine=_quarantine_frame(out.quarantine, model, req, day),
        watermark_dates=(span if span and model.inputs  # what the nights would have marked
                         else _built_days(model, cat, req, day, out.days)),
        also_staged=out.also_staged,
        quality=quality,
        quarantine_scope=out.quarantine_scope, model=model, full_refresh=req.full_refresh,
        landings=read, asof=out.asof, hashes=out.hashes,
    ))
    failpoint("after_publish", model.name)
    return counts


def _built_days(model: Model, cat: Catalogue, req: StepRequest, day: date,
                read: list[date]) -> list[date]:
    """The logical dates this publish builds: the days it read, and after a full refresh also
    every day the model could be built on up to ``day`` (its sources' ready days). A model of
    reference data reads one landing but is built for every day: without these, the next build
    would run every day since again, to replay what the refresh already holds."""
    if not req.full_refresh:  # a model reading its inputs whole built the day all the same
        return read or ([day] if model.inputs else [])
    from starsmith.orchestration.plan import landed_days, list_sources

    root = landing_root(req.landing)
    # The days a build of the whole catalogue is ready on (what a restatement checks against),
    # and those of the model's own sources (a model may be ready where others wait): both
    # judged from one listing of the sources (the catalogue's include the model's)
    listing = list_sources(cat, list(cat.order), root)
    ready = {*landed_days(cat, list(cat.order), root, listing),
             *landed_days(cat, [model.name], root, listing)}
    return sorted({*read, *(d for d in ready if d <= day), day})


def _known(wh: Warehouse, model: Model, cat: Catalogue) -> dict[str, str]:
    """The landing signatures this model recorded, with their content hashes."""
    if not any(i.name in cat.sources for i in model.inputs):
        return {}
    found = wh.query("SELECT fingerprint FROM _starsmith.landings WHERE model = ?", [model.name])
    return dict(f.partition("/")[::2] for f in found["fingerprint"].to_list() if "/" in f)


def _dead_letters(model: Model, cat: Catalogue, landing: str, day: date) -> dict[str, int]:
    """The dead-letter count of the extracted sources the step read (extracts land in a local
    folder: an object store landing has none). Apart from the step's own frame, whose local
    paths name the file an unexpected error is blamed on (orchestration/failures.py)."""
    root = landing_root(landing)
    if not isinstance(root, Path):
        return {}
    return dead_letter_details([cat.sources[i.name] for i in model.inputs
                                if i.name in cat.sources], root, day)


def _landings(model: Model, cat: Catalogue, landing: Landing, day: date, *, full_refresh: bool,
              known: dict[str, str] | None = None) -> list[tuple[str, date, str]]:
    """The fingerprint of every landing the step reads, taken before it reads them: recorded
    with the publish, so a day re-landed later (a corrected export) is noticed and rebuilt."""
    read: dict[tuple[str, date], str] = {}
    for inp in model.inputs:
        source = cat.sources.get(inp.name)
        if source is None:
            continue
        whole = full_refresh or inp.window is Window.ALL
        if whole and not any(d <= day for d in landed_dates(landing, source)):
            continue  # nothing landed up to the day yet: reading it says so
        # with ``whole``, every landing up to the day, each fingerprinted once from one listing
        # (not a lookup per day: a reference source's would list its folders each time)
        for landed_day, fp in fingerprints(landing, source, day, whole=whole,
                                           known=known).items():
            read[(source.name, landed_day)] = fp
    return [(s, d, fp) for (s, d), fp in sorted(read.items())]


def _audit(model: Model, wh: Warehouse, req: StepRequest, day: date, out: StepOutput, staged: str
           ) -> tuple[StepOutput, str, pl.DataFrame | None]:
    """The contract and the model's suite on the staged rows; rows a "mostly" rule lets through
    move to the quarantine and the rest are staged again. Raises DataError on a refusal."""
    if not (model.expectations or model.checks):
        audit_staged(wh, staged, model, known_unique=out.known_unique,
                     held=None if out.parts else out.rows)
        return out, staged, None
    # the contract is audited with the suite, in its pass over the staged rows
    frame = out.rows if not out.parts or all(supported(e) for e in model.expectations) \
        else wh.read_staged(staged)
    verdict = judge(frame, model, req.run_id, day, wh, staged, out.pending, audit=True,
                    known_unique=out.known_unique, proofs=out.proofs,
                    held=None if out.parts else out.rows)
    if verdict.failed:
        wh.record_quality(verdict.results)
        refuse(verdict, model)
    if verdict.quarantine:
        if out.parts:
            out.rows = wh.read_staged(staged)
            out.also_staged.extend(out.parts)
            out.parts = []
        out = _hold_back(out, verdict.quarantine, day)
        staged = wh.stage(model.name, req.run_id, out.rows, in_memory=True)
    return out, staged, verdict.results


def _hold_back(out: StepOutput, rows: dict[int, str], day: date) -> StepOutput:
    """Move the rows a "mostly" rule let through from the output to the quarantine."""
    marks = pl.DataFrame({"_i": list(rows), "reason": list(rows.values())},
                         schema={"_i": pl.UInt32(), "reason": pl.String()})
    indexed = out.rows.with_row_index("_i")
    held = indexed.join(marks, on="_i", how="inner").drop("_i").with_columns(
        logical_date=pl.lit(day))
    kept = indexed.join(marks, on="_i", how="anti").drop("_i")
    quarantine = pl.concat([out.quarantine, held], how="diagonal_relaxed")
    return StepOutput(kept, quarantine, out.statements, out.rows_read, out.counts, out.days,
                      out.also_staged, out.pending, parts=[],
                      quarantine_scope=out.quarantine_scope,
                      known_unique=out.known_unique)  # fewer rows repeat no key


def _log_failure(wh: Warehouse, row: dict[str, Any], clock: float, err: BaseException
                 ) -> None:
    row = row | {"status": "failed", "finished_at": datetime.now(),
                 "duration_s": time.perf_counter() - clock, "message": str(err)[:2000]}
    try:
        wh.log_failure(row)
    except StarsmithError:  # the log is best effort; the step's own error matters more
        log.warning("could not record the failure of %s in the run log", row["model"])


def _quarantine_frame(rows: pl.DataFrame, model: Model, req: StepRequest, day: date
                      ) -> pl.DataFrame | None:
    if not rows.height and not model.inputs:
        return None
    if "logical_date" not in rows.columns:
        rows = rows.with_columns(logical_date=pl.lit(day))
    if req.first_date:  # a range: each row as the night of its logical date held it back
        return rows.with_columns(
            model=pl.lit(model.name),
            run_id=pl.lit("build-") + pl.col("logical_date").cast(pl.Date()).dt.to_string(),
            quarantined_at=pl.col("logical_date").cast(pl.Date()).cast(pl.Datetime("us")))
    return rows.with_columns(model=pl.lit(model.name), run_id=pl.lit(req.run_id),
                             quarantined_at=pl.lit(datetime(day.year, day.month, day.day)))


def range_days(req: StepRequest) -> list[date]:
    """The days of a range step (orchestration/ranges.py), first to last; [] for one day."""
    if not req.first_date:
        return []
    first = date.fromisoformat(req.first_date)
    return [first + timedelta(days=i)
            for i in range((date.fromisoformat(req.logical_date) - first).days + 1)]


def _build(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing, day: date,
           req: StepRequest, span: list[date]) -> StepOutput:
    if model.fact is not None:
        return build_fact(model, cat, wh, landing, day, req.run_id, full_refresh=req.full_refresh,
                          budget=parse_size(req.memory_budget) if req.memory_budget else 0,
                          span=span)
    if model.strategy is Strategy.SCD:
        return build_scd(model, cat, wh, landing, day, req.run_id, full_refresh=req.full_refresh,
                         accept_changes=req.accept_changes, span=span)
    days = input_days(model, cat, wh, landing, day, full_refresh=req.full_refresh)
    if span and days and model.strategy is not Strategy.FULL:  # a range: each night's day
        days = span  # (a reference source is read as of each day, landed that day or not)
    parts, bad, read = [], [], 0
    for good, rejected, n in transformed(model, cat, wh, landing, days or [day], req.run_id,
                                         day_runs=bool(span)):
        read += n
        parts.append(good)
        bad.append(rejected)
    rows = pl.concat(parts)
    quarantine = pl.concat(bad, how="diagonal_relaxed")
    cols = model.schema.names()
    full = req.full_refresh or model.strategy is Strategy.FULL or not wh.exists(model.name)

    def statements(target: str, staged: str) -> list[exp.Expr]:
        qualified = f"main.{target}"
        if full:
            return sql.replace_all(qualified, staged)
        create = sql.create_like(qualified, staged)
        if model.strategy is Strategy.PARTITION:
            assert model.partition_by is not None
            return [create, *sql.overwrite_partitions(qualified, staged, model.partition_by,
                                                      cols, values=days or [day])]
        return [create, *sql.merge(qualified, staged, model.unique_key, cols)]

    return StepOutput(rows, quarantine, statements, read, days=days if model.inputs else [])
