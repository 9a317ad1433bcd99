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
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
from sqlglot import exp

from starsmith.contract import BuildContext, Model, Strategy, Window
from starsmith.errors import DataError, ModelError, RetryableError, StarsmithError
from starsmith.loaders import sql
from starsmith.loaders.connect import open_warehouse
from starsmith.loaders.landed import landed_dates
from starsmith.loaders.landing import fingerprints
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, Warehouse
from starsmith.log import get_logger
from starsmith.orchestration.budget import duckdb_limit, parse_size
from starsmith.orchestration.fact_step import build_fact
from starsmith.orchestration.inputs import day_inputs, input_days
from starsmith.orchestration.messages import WARNINGS, StepRequest, StepResult
from starsmith.orchestration.output import StepOutput, conform, run_transform, split_quarantine
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
        with wh.session():
            counts = _run(model, cat, wh, req, day, log_row, clock)
    except Exception as err:  # recorded in the run log, then surfaced typed
        _log_failure(wh, log_row, clock, err)
        typed = _typed(err, model)
        if typed is err:
            raise
        raise typed from err
    log.info("%s %s: %s", model.name, day, {k: v for k, v in counts.items() if v})
    core = {k: counts.get(k, 0) for k in ("rows_read", "rows_written", "rows_inserted",
                                           "rows_updated", "rows_closed", "rows_quarantined")}
    return StepResult(model.name, req.logical_date, "success", **core,
                      duration_s=round(time.perf_counter() - clock, 3),
                      details={k: v for k, v in counts.items() if k not in core})


def _run(model: Model, cat: Catalogue, wh: Warehouse, req: StepRequest, day: date,
         log_row: dict[str, Any], clock: float) -> dict[str, int]:
    """Build, stage, audit, publish; returns the counts that went into the run log."""
    wh.check_schema(model, full_refresh=req.full_refresh)  # fail before any data moves
    read = _landings(model, cat, Path(req.landing), day, full_refresh=req.full_refresh,
                     known=_known(wh, model, cat))
    out = _build(model, cat, wh, Path(req.landing), day, req)
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
              "rows_quarantined": out.quarantine.height, **out.counts}
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
        watermark_dates=out.days, also_staged=out.also_staged, quality=quality,
        quarantine_scope=out.quarantine_scope, model=model, full_refresh=req.full_refresh,
        landings=read,
    ))
    failpoint("after_publish", model.name)
    return counts


def _known(wh: Warehouse, model: Model, cat: Catalogue) -> dict[str, str]:
    """The landing signatures this model recorded, with their content hashes."""
    if not any(i.name in cat.sources for i in model.inputs):
        return {}
    found = wh.query("SELECT fingerprint FROM _starsmith.landings WHERE model = ?", [model.name])
    return dict(f.partition("/")[::2] for f in found["fingerprint"].to_list() if "/" in f)


def _landings(model: Model, cat: Catalogue, landing: Path, day: date, *, full_refresh: bool,
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


def _typed(err: Exception, model: Model) -> Exception:
    """An engine error the step did not expect, as a StarsmithError that tells Temporal whether
    a retry can help: a model that does not fit its tables, a corrupt input file, a refused
    permission or a full disk is not retried; another I/O error is.

    The file to name is taken from the error (its path or message), else from the step's own
    context: the paths and request in the frames the error passed through, and the landed files
    the step reads, checked one by one for the one that cannot be read."""
    import duckdb

    if isinstance(err, StarsmithError):
        if err.retryable:  # a wrapper over a refused permission or a full disk: not transient
            for cause in _chain(err, itself=False):
                found = _refused(cause, err, model)
                if found is not None:
                    return found
        return err
    for cause in _chain(err):
        found = _refused(cause, err, model)
        if found is not None:
            return found
    first = _first_line(err)
    if isinstance(err, pl.exceptions.ColumnNotFoundError | pl.exceptions.SchemaError
                  | pl.exceptions.SchemaFieldNotFoundError | duckdb.BinderException
                  | duckdb.CatalogException | duckdb.ParserException):
        return ModelError(f"model {model.name} does not fit its tables: {type(err).__name__}: "
                          f"{first}", where=f"model {model.name}",
                          fix="Run `starsmith plan` to see model changes; fix the model or "
                              f"rebuild it with `starsmith build -s {model.name}+ --full-refresh`")
    if isinstance(err, pl.exceptions.PolarsError) and "(os error" in str(err):
        return RetryableError(f"I/O error in {model.name}: {first}", where=f"model {model.name}")
    if _unreadable(err):
        return _bad_input(err, model, first)
    if isinstance(err, duckdb.IOException | OSError):
        return RetryableError(f"I/O error in {model.name}: {first}", where=f"model {model.name}")
    return err


_DENIED_TEXT = ("permission denied", "(os error 13)")
_READ_ONLY_TEXT = ("read-only file system", "(os error 30)")
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "(os error 28)",
              "(os error 122)")
MAX_PROBED = 500  # landed files read again to find the corrupt one, at most


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _chain(err: BaseException, *, itself: bool = True) -> list[BaseException]:
    """The error and what it was raised from or while handling, as a traceback shows them."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo and len(found) < 20:
        current = todo.pop(0)
        if current is None or any(current is f for f in found):
            continue
        found.append(current)
        todo += [current.__cause__,
                 None if current.__suppress_context__ else current.__context__]
    return found if itself else found[1:]


def _refusal(exc: BaseException) -> str | None:
    """"denied", "read-only" or "full" when ``exc`` is the system refusing a file: a retry
    finds the same permissions and the same full disk."""
    import errno

    import duckdb

    if isinstance(exc, StarsmithError | duckdb.ConversionException | duckdb.InvalidInputException):
        return None  # ours, or about values (whose text may hold any words)
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "denied"
        if exc.errno == errno.EROFS:
            return "read-only"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
    if isinstance(exc, PermissionError):
        return "denied"
    text = str(exc).lower()  # DuckDB and Polars say it in words (or as Rust's "os error N")
    if isinstance(exc, pl.exceptions.PolarsError) and "(os error" not in text:
        return None  # not an I/O error: a parse error quotes values, whatever they say
    if any(t in text for t in _FULL_TEXT):
        return "full"
    if any(t in text for t in _DENIED_TEXT):
        return "denied"
    if any(t in text for t in _READ_ONLY_TEXT):
        return "read-only"
    return None


def _refused(cause: BaseException, err: BaseException, model: Model) -> StarsmithError | None:
    """A refused permission or a full disk in ``cause`` (part of ``err``), typed and named."""
    from starsmith.errors import ConfigError

    kind = _refusal(cause)
    if kind is None:
        return None
    found = _path_of(cause) or _path_of(err)
    if found is None:  # a write that said no file: the paths in hand, else the warehouse
        ctx = _Context.of(err)
        found = next((str(p) for p in ctx.paths), None)
        if found is None and ctx.req is not None:
            found = f"the warehouse {ctx.req.warehouse}"
    where = found or f"model {model.name}"
    reason = _first_line(cause)
    if kind == "full":
        return StarsmithError(
            f"no space left on the device: {model.name} could not write ({reason})", where=where,
            fix="Free space on the disk that holds it (old files in the staging folder or "
                "DuckDB's temp folder, other data), then build again; a retry alone will not help")
    what = "permission denied" if kind == "denied" else "the file system is read-only"
    return ConfigError(
        f"{what}: {model.name} may not read or write a file it needs ({reason})", where=where,
        fix="Give the user that runs starsmith access to it, or point the project's landing, "
            "state or staging folder at one it may write; a retry alone will not help")


def _path_of(exc: BaseException) -> str | None:
    """The file an error names: an OSError's own, else the first absolute path in its text."""
    if isinstance(exc, OSError):
        for name in (exc.filename, exc.filename2):
            if name:
                return str(name)
    return next(iter(_paths_in(str(exc))), None)


def _paths_in(text: str) -> list[str]:
    """Absolute paths quoted in an engine's message ("...", '...' with '' for ') or at its end."""
    import re

    text = text.replace('\\"', '"')  # DuckDB quotes an I/O error's details as JSON
    found = re.findall(r'"([^"\n]+)"', text)
    found += [p.replace("''", "'") for p in re.findall(r"'((?:[^'\n]|'')+)'", text)]
    found += re.findall(r"(?:^|[\s:(])(/[^\s\"',;)]+)", text)
    return [p for p in found if (p.startswith("/") and len(p) > 1)
            or re.match(r"[A-Za-z]:[\\/]", p)]


def _unreadable(err: BaseException) -> bool:
    """Errors that an input file that is corrupt, cut short or not what its source declares
    raises when read: the same bytes fail the same way on every retry."""
    import duckdb
    import pyarrow

    return isinstance(err, pl.exceptions.ComputeError | pl.exceptions.InvalidOperationError
                      | pl.exceptions.NoDataError | pyarrow.ArrowInvalid
                      | duckdb.InvalidInputException | duckdb.ConversionException)


class _Context:
    """What the frames an error passed through knew: the step's request and catalogue, and the
    paths in hand when it was raised (the innermost frames' first)."""

    def __init__(self) -> None:
        self.req: StepRequest | None = None
        self.cat: Catalogue | None = None
        self.paths: list[Path] = []

    @classmethod
    def of(cls, err: BaseException) -> _Context:
        from starsmith.loaders.landed import LandedDay

        ctx = cls()
        frames = []
        tb = err.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):  # innermost first
            if not str(frame.f_globals.get("__name__", "")).startswith("starsmith."):
                continue
            for value in frame.f_locals.values():
                if isinstance(value, StepRequest):
                    ctx.req = ctx.req or value
                elif isinstance(value, Catalogue):
                    ctx.cat = ctx.cat or value
                elif isinstance(value, Path):
                    ctx.paths.append(value)
                elif isinstance(value, LandedDay):
                    ctx.paths.extend(value.files)
                elif isinstance(value, list | tuple) and value and all(
                        isinstance(v, Path) for v in value[:MAX_PROBED]):
                    ctx.paths.extend(value[:MAX_PROBED])
        return ctx

    def landed_files(self, model: Model) -> list[Path]:
        """The landed files the step reads, its own day's first (a whole read, newest first)."""
        from starsmith.loaders.landed import data_files
        from starsmith.loaders.landing import landings_for, source_folder

        if self.req is None or self.cat is None:
            return []
        landing, day = Path(self.req.landing), date.fromisoformat(self.req.logical_date)
        files: list[Path] = []
        for inp in model.inputs:
            source = self.cat.sources.get(inp.name)
            if source is None:
                continue
            try:
                days = landings_for(landing, source, day,
                                    whole=self.req.full_refresh or inp.window is Window.ALL)
                for d in sorted(days, reverse=True):
                    files += data_files(source_folder(landing, source, d), source)
            except (StarsmithError, OSError):  # a diagnosis: what cannot be listed is skipped
                continue
        return files


def _bad_input(err: BaseException, model: Model, first: str) -> DataError:
    """A corrupt or unreadable input as a DataError naming the file (and, for a CSV, the line
    and column), found in the message, else by reading the step's files again one by one."""
    ctx = _Context.of(err)
    named = _paths_in(str(err))
    path: Path | None = Path(named[0]) if named else None
    detail = ""
    if path is None:
        seen: set[Path] = set()
        candidates = [p for p in (*ctx.paths, *ctx.landed_files(model))
                      if p.suffix in (".parquet", ".csv", ".ndjson", ".json")]
        for candidate in candidates:
            if candidate in seen or not candidate.is_file():
                continue
            seen.add(candidate)
            if len(seen) > MAX_PROBED:
                break
            problem = _probe(candidate, ctx.cat, err)
            if problem is not None:
                path, detail = candidate, problem
                break
    if path is None:
        return DataError(
            f"{model.name} cannot read its input: {type(err).__name__}: {first}",
            where=f"model {model.name}",
            fix="An input file is corrupt or its values do not fit the types its source "
                "declares, or the model's transform does not fit its data; land a corrected "
                "file or fix the model, then build again; a retry alone will not help")
    landed = ctx.req is not None and path.resolve().is_relative_to(
        Path(ctx.req.landing).resolve())
    return DataError(
        f"{path.name} cannot be read: {first}{detail}", where=str(path),
        fix="Land a corrected export of that day (the data files first, then its _SUCCESS "
            "marker or manifest) and build the day again; a retry alone will not help"
        if landed else "The file is corrupt or cut short; remove it and build again")


def _probe(path: Path, cat: Catalogue | None, err: BaseException) -> str | None:
    """None when the file reads cleanly as its source declares it; else where it does not
    (", line N, column 'c'" for a CSV value, "" when the reader does not say)."""
    source = next((s for s in cat.sources.values() if s.name == path.parent.parent.name),
                  None) if cat is not None else None
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif path.suffix == ".csv":
            schema = source.schema if source is not None else None
            pl.read_csv(path, schema_overrides=schema, try_parse_dates=False,
                        infer_schema=schema is not None)
        else:
            pl.read_ndjson(path)
    except Exception:  # any reader's refusal: this is the file
        return _csv_line(path, source.schema if source else None, str(err)) \
            if path.suffix == ".csv" else ""
    return None


def _csv_line(path: Path, schema: pl.Schema | None, message: str) -> str:
    """", line N, column 'c'": the first value of a CSV that does not parse as its declared type
    (the column Polars names, else any declared one); "" when none is found."""
    import re

    if schema is None:
        return ""
    said = re.search(r"at column '([^']+)'", message)
    try:
        rows = pl.read_csv(path, infer_schema=False)
    except Exception:
        return ""
    names = [said.group(1)] if said and said.group(1) in schema else list(schema)
    best: tuple[int, str] | None = None
    for name in names:
        if name not in rows.columns:
            continue
        text, dtype = rows[name], schema[name]
        try:
            if isinstance(dtype, pl.Datetime):
                parsed = text.str.to_datetime(time_unit=dtype.time_unit or "us", strict=False)
            elif isinstance(dtype, pl.Date):
                parsed = text.str.to_date(strict=False)
            else:
                parsed = text.cast(dtype, strict=False)
        except Exception:  # a type a string does not cast to: not this column
            continue
        bad = (parsed.is_null() & text.is_not_null()).arg_true()
        if bad.len() and (best is None or bad[0] < best[0]):
            best = (int(bad[0]), name)
    if best is None:
        return ""
    line = best[0] + 2  # after the header, counted from 1
    return f", line {line}" if said and said.group(1) == best[1] else \
        f", line {line}, column {best[1]!r}"


def _audit(model: Model, wh: Warehouse, req: StepRequest, day: date, out: StepOutput, staged: str
           ) -> tuple[StepOutput, str, pl.DataFrame | None]:
    """The contract and the model's suite on the staged rows; rows a "mostly" rule lets through
    move to the quarantine and the rest are staged again. Raises DataError on a refusal."""
    if not (model.expectations or model.checks):
        audit_staged(wh, staged, model)
        return out, staged, None
    # the contract is audited with the suite, in its pass over the staged rows
    frame = out.rows if not out.parts or all(supported(e) for e in model.expectations) \
        else wh.read_staged(staged)
    verdict = judge(frame, model, req.run_id, day, wh, staged, out.pending, audit=True)
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
                      quarantine_scope=out.quarantine_scope)


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
    return rows.with_columns(model=pl.lit(model.name), run_id=pl.lit(req.run_id),
                             quarantined_at=pl.lit(datetime(day.year, day.month, day.day)))


def _build(model: Model, cat: Catalogue, wh: Warehouse, landing: Path, day: date,
           req: StepRequest) -> StepOutput:
    if model.fact is not None:
        return build_fact(model, cat, wh, landing, day, req.run_id, full_refresh=req.full_refresh,
                          budget=parse_size(req.memory_budget) if req.memory_budget else 0)
    if model.strategy is Strategy.SCD:
        return build_scd(model, cat, wh, landing, day, req.run_id, full_refresh=req.full_refresh,
                         accept_changes=req.accept_changes)
    days = input_days(model, cat, wh, landing, day, full_refresh=req.full_refresh)
    parts, bad, read = [], [], 0
    for d in days or [day]:
        inputs, n = day_inputs(model, cat, wh, landing, d)
        read += n
        good, rejected = split_quarantine(
            run_transform(model, inputs, BuildContext(d, req.run_id)), model)
        parts.append(conform(good, model))
        bad.append(rejected.with_columns(logical_date=pl.lit(d)))
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
