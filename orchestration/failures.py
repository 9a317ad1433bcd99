"""How an error a step did not expect becomes a typed StarsmithError at the step's boundary.

Temporal retries only what a retry can help. A model that does not fit its tables, a corrupt or
unreadable input file, text in a numeric column, a refused permission or a full disk are not
retried and name the model, the file (and line) or the path; another I/O error is retried with
backoff. Kept apart from the step itself: it is long, and only the step's failure path needs it.
"""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import polars as pl

from starsmith.contract import Model, Window
from starsmith.errors import DataError, ModelError, RetryableError, StarsmithError
from starsmith.loaders.store import Landing, ObjectPath, landing_root
from starsmith.loaders.store_errors import cloud_error
from starsmith.orchestration.messages import StepRequest
from starsmith.registry import Catalogue


def typed(err: Exception, model: Model, req: StepRequest | None = None,
          cat: Catalogue | None = None) -> Exception:
    """An engine error the step did not expect, as a StarsmithError that tells Temporal whether
    a retry can help: a model that does not fit its tables, a corrupt input file, a refused
    permission or a full disk is not retried; another I/O error is.

    The file to name is taken from the error (its path or message), else from the paths in the
    frames it passed through, else from the landed files the step reads (``req`` and ``cat``,
    handed over by the step), checked one by one for the one that cannot be read."""
    import duckdb

    from starsmith.loaders.duckdb.session import is_bad_cast

    if isinstance(err, StarsmithError):
        if err.retryable:  # a wrapper over a refused permission or a full disk: not transient
            for cause in _chain(err, itself=False):
                found = _refused(cause, err, model, req, cat)
                if found is not None:
                    return found
        return err
    for cause in _chain(err):
        found = _refused(cause, err, model, req, cat) or cloud_error(cause)
        if found is not None:
            return found
    first = _first_line(err)
    if is_bad_cast(err):  # Temporal's sandbox swapped sys.modules (loaders/duckdb/session.py)
        return RetryableError(f"DuckDB could not read a Python object in {model.name}: {first}",
                              where=f"model {model.name}")
    if isinstance(err, duckdb.CatalogException) and "python_arrow_scan" in first:
        # DuckDB's own setup raced (loaders/duckdb/warehouse.py, _CONNECT_LOCK): not the model
        return RetryableError(f"DuckDB was not ready in {model.name}: {first}",
                              where=f"model {model.name}")
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
        return _bad_input(err, model, first, req, cat)
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


def _refused(cause: BaseException, err: BaseException, model: Model,
             req: StepRequest | None, cat: Catalogue | None) -> StarsmithError | None:
    """A refused permission or a full disk in ``cause`` (part of ``err``), typed and named."""
    from starsmith.errors import ConfigError

    kind = _refusal(cause)
    if kind is None:
        return None
    found = _path_of(cause) or _path_of(err)
    if found is None:  # a write that said no file: the paths in hand, else the warehouse
        ctx = _Context.of(err, req, cat)
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
    """The step's request and catalogue (handed over by the step), and the paths in hand in the
    frames the error passed through (the innermost first): Polars and DuckDB errors rarely name
    the file they were reading."""

    def __init__(self) -> None:
        self.req: StepRequest | None = None
        self.cat: Catalogue | None = None
        self.paths: list[Landing] = []

    @classmethod
    def of(cls, err: BaseException, req: StepRequest | None = None,
           cat: Catalogue | None = None) -> _Context:
        from starsmith.loaders.landed import LandedDay

        ctx = cls()
        ctx.req, ctx.cat = req, cat  # the step's own, handed over
        frames = []
        tb = err.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):  # innermost first
            if not str(frame.f_globals.get("__name__", "")).startswith("starsmith."):
                continue
            for value in frame.f_locals.values():
                if isinstance(value, Path | ObjectPath):
                    ctx.paths.append(value)
                elif isinstance(value, LandedDay):
                    ctx.paths.extend(value.files)
                elif isinstance(value, list | tuple) and value and all(
                        isinstance(v, Path | ObjectPath) for v in value[:MAX_PROBED]):
                    ctx.paths.extend(value[:MAX_PROBED])
        return ctx

    def landed_files(self, model: Model) -> list[Landing]:
        """The landed files the step reads, its own day's first (a whole read, newest first)."""
        from starsmith.loaders.landed import data_files
        from starsmith.loaders.landing import landings_for, source_folder

        if self.req is None or self.cat is None:
            return []
        landing, day = landing_root(self.req.landing), date.fromisoformat(self.req.logical_date)
        files: list[Landing] = []
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


def _bad_input(err: BaseException, model: Model, first: str, req: StepRequest | None,
               cat: Catalogue | None) -> DataError:
    """A corrupt or unreadable input as a DataError naming the file (and, for a CSV, the line
    and column), found in the message, else by reading the step's files again one by one."""
    ctx = _Context.of(err, req, cat)
    named = _paths_in(str(err))
    path: Landing | None = Path(named[0]) if named else None
    detail = ""
    if path is None:
        seen: set[Landing] = set()
        candidates = [p for p in (*ctx.paths, *ctx.landed_files(model))
                      if p.suffix in (".parquet", ".csv", ".ndjson", ".json", ".avro")]
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
    root = landing_root(ctx.req.landing) if ctx.req is not None else None
    if isinstance(root, Path) and isinstance(path, Path):
        landed = path.resolve().is_relative_to(root.resolve())
    else:  # an object store landing: its objects are named by URI
        landed = root is not None and str(path).startswith(f"{root}/")
    return DataError(
        f"{path.name} cannot be read: {first}{detail}", where=str(path),
        fix="Land a corrected export of that day (the data files first, then its _SUCCESS "
            "marker or manifest) and build the day again; a retry alone will not help"
        if landed else "The file is corrupt or cut short; remove it and build again")


def _probe(path: Landing, cat: Catalogue | None, err: BaseException) -> str | None:
    """None when the file reads cleanly as its source declares it; else where it does not
    (", line N, column 'c'" for a CSV value, "" when the reader does not say)."""
    source = next((s for s in cat.sources.values() if s.name == path.parent.parent.name),
                  None) if cat is not None else None
    try:
        data = path if isinstance(path, Path) else io.BytesIO(path.read_bytes())
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(data)
        elif path.suffix == ".avro":  # its header, then every block (Polars' own reader)
            from starsmith.loaders import avro

            avro.read(avro.open_file(path))
        elif path.suffix == ".csv":
            schema = source.schema if source is not None else None
            pl.read_csv(data, schema_overrides=schema, try_parse_dates=False,
                        infer_schema=schema is not None)
        else:
            pl.read_ndjson(data)
    except Exception:  # any reader's refusal: this is the file
        return _csv_line(data, source.schema if source else None, str(err)) \
            if path.suffix == ".csv" else ""
    return None


def _csv_line(path: Path | io.BytesIO, schema: pl.Schema | None, message: str) -> str:
    """", line N, column 'c'": the first value of a CSV that does not parse as its declared type
    (the column Polars names, else any declared one); "" when none is found."""
    import re

    if schema is None:
        return ""
    said = re.search(r"at column '([^']+)'", message)
    try:
        if isinstance(path, io.BytesIO):  # an object's bytes, read once by _probe
            path.seek(0)
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


