"""The embedded DuckDB warehouse: staging area, atomic publish, run log and watermarks.

Layout of the database file:

- ``main``: the published star schema, what analysts query; ``<model>__quarantine`` beside it;
- the staging area: a step's output is held in the step's own DuckDB session (Arrow, registered
  by name), audited there and published from there; rows staged to free memory (a fact's
  batches) and rows a gate refused go to a folder of Parquet files beside the database
  (``<name>_staging/``), one file per (model, run); a crash leaves the previous published table
  untouched, and the retry rebuilds or overwrites what it staged (deterministic names);
- ``_starsmith``: ``run_log`` (one row per model step) and ``watermarks`` (what was built).

Every publish is one DuckDB transaction holding the strategy's statements, the quarantine rows, the
run-log row and the watermark, so readers see the old state or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
from polars._typing import PolarsDataType  # Polars' own alias for a dtype, instance or class
from sqlglot import exp

from starsmith.errors import ConfigError, RetryableError, WarehouseBusy, WriteConflict
from starsmith.loaders import sql
from starsmith.loaders.duckdb.filegate import file_gate
from starsmith.loaders.duckdb.session import with_python_objects
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, SqlReads, hashes_table, safe_name
from starsmith.log import get_logger

log = get_logger(__name__)

PUBLISHED, META = "main", "_starsmith"
JOB_KEY = "job_key"  # the run-log details key naming the build run that published a step
RUN_LOG_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.run_log (
    run_id VARCHAR, model VARCHAR, logical_date DATE, strategy VARCHAR, status VARCHAR,
    rows_read BIGINT, rows_written BIGINT, rows_inserted BIGINT, rows_updated BIGINT,
    rows_closed BIGINT, rows_quarantined BIGINT, started_at TIMESTAMP, finished_at TIMESTAMP,
    duration_s DOUBLE, fingerprint VARCHAR, message VARCHAR, details JSON
)"""
WATERMARK_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.watermarks (
    model VARCHAR, logical_date DATE, run_id VARCHAR, fingerprint VARCHAR,
    published_at TIMESTAMP, PRIMARY KEY (model, logical_date)
)"""
LANDINGS_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.landings (
    model VARCHAR, source VARCHAR, landed_day DATE, fingerprint VARCHAR, run_id VARCHAR,
    recorded_at TIMESTAMP, PRIMARY KEY (model, source, landed_day)
)"""
RESTATE_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.restatements (
    model VARCHAR PRIMARY KEY, from_day DATE, reason VARCHAR, recorded_at TIMESTAMP
)"""
ASOF_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.asof (
    dimension VARCHAR, natural_key VARCHAR, surrogate_key BIGINT, valid_from TIMESTAMP,
    valid_to TIMESTAMP, until DATE
)"""
ROW_HASHES_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.row_hashes (dimension VARCHAR PRIMARY KEY, scheme VARCHAR)"""
UPKEEP_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.table_upkeep (
    model VARCHAR PRIMARY KEY, deleted_rows BIGINT
)"""
QUALITY_DDL = f"""
CREATE TABLE IF NOT EXISTS {META}.quality_results (
    run_id VARCHAR, model VARCHAR, layer VARCHAR, logical_date DATE, expectation VARCHAR,
    column_name VARCHAR, kwargs VARCHAR, severity VARCHAR, success BOOLEAN,
    observed_value VARCHAR, unexpected_count BIGINT, unexpected_percent DOUBLE,
    unexpected_sample VARCHAR, checked_at TIMESTAMP
)"""


# DuckDB's own vacuum, run at every checkpoint, merges row groups that hold deleted rows: after a
# publish that deleted scattered keys it rewrote data across the whole table to save one row
# group (0.2 s of a 10M-row dimension's 150k-key night, ~4 ms per touched row group), so a
# nightly cost grew with the table. It is off; ``_compact`` rewrites a table instead, once its
# deleted rows pass COMPACT_AT of what it stores: an amortised cost that grows with the changes.
COMPACT_AT = 0.25
COMPACT_MIN_ROWS = 100_000  # below this many deleted rows a rewrite is never worth it
EVICT_TO = "64MiB"  # the buffer cache a scattered read leaves behind, before the next step part
# DuckDB's row group (rows). Staged Parquet is cut to it: an INSERT then reads each Parquet row group
# on its own thread straight into a row group of the table. One row group per file held the insert
# of a 350k-row SCD night to one thread: 0.38-0.45 s against 0.23-0.29 s (32k or 245k: 0.3-0.47 s).
DUCKDB_ROW_GROUP = 122_880
# Data pages of 1 MiB: Polars' default size wrote 350k staged rows in 75 ms, this in 60 ms; DuckDB
# reads both as fast.
STAGED_PAGE = 1 << 20

_INIT_LOCK = threading.Lock()
# duckdb-python publishes a new database instance to other threads before its own setup (the
# registration of ``python_arrow_scan``) has run; a step connecting in that gap failed with
# "Table Function with name python_arrow_scan does not exist" (~1.5% of demo builds, 4 threads).
# Opening connections one at a time closes the gap (a 4-thread loop: 528 of 1200 rounds failed
# without it, none with it). Related upstream reports: duckdb/duckdb#22277, #13010.
_CONNECT_LOCK = threading.Lock()
# Calls that register or scan Python objects (Arrow) go through session.with_python_objects: a
# Temporal workflow task swaps sys.modules for a mapping that duckdb-python 2 cannot read
# (``std::bad_cast``, ~1% of Temporal demo builds; the cause and the evidence are in session.py).
_EVICT_LOCK = threading.Lock()  # the limit is the database instance's: one eviction at a time
_INITIALISED: set[str] = set()


def _same_from_arrow(dtype: PolarsDataType) -> bool:
    """DuckDB reads this type from Arrow as it reads it from the Parquet Polars writes, so a table
    is the same whichever way its rows were staged. Not so, hence staged as a file: Duration
    (INTERVAL, not BIGINT), Datetime in ms (TIMESTAMP_MS), Array (fixed size, not a list),
    128-bit integers (no Arrow export)."""
    if isinstance(dtype, pl.Datetime):
        return dtype.time_unit != "ms"
    if isinstance(dtype, pl.List):
        return _same_from_arrow(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return all(_same_from_arrow(f.dtype) for f in dtype.fields)
    if dtype.is_integer():
        return dtype not in (pl.Int128, pl.UInt128)
    return dtype.is_decimal() or isinstance(dtype, (pl.Categorical, pl.Enum)) or dtype in (
        pl.Float32, pl.Float64, pl.Boolean, pl.String, pl.Binary, pl.Date, pl.Time, pl.Null)


def _paths(ref: str) -> list[str]:
    """The files a ``read_parquet(...)`` reference names (its literals, quotes doubled)."""
    return [p.replace("''", "'") for p in re.findall(r"'((?:[^']|'')+)'", ref)]


def _literal(value: str) -> str:
    """A string as a SQL literal: a folder named ``o'brien`` stays a name, never SQL."""
    return "'" + value.replace("'", "''") + "'"


MEMORY_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def _memory_size(value: str) -> str:
    """A memory limit as DuckDB reads it (``4GB``, ``512MiB``); anything else is refused before
    it reaches a connection's settings or a ``SET`` statement."""
    if not isinstance(value, str) or not MEMORY_SIZE.fullmatch(value.strip()):
        raise ConfigError(f"cannot read the memory limit {value!r}",
                          where="the warehouse's memory_limit",
                          fix="Write it as a number and a unit, e.g. 4GB or 512MiB "
                              "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return value.strip()


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """End a failed transaction. One that a failed COMMIT ended already is left as it is: the
    second error ("no transaction is active") would hide the first."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as err:
        log.debug("rollback: %s", err)


class DuckDBWarehouse(SqlReads):
    """A DuckDB file as the warehouse target. Cheap to construct: it holds only settings."""

    dialect = "duckdb"
    row_index = "row_number() OVER () - 1"  # staged rows keep their order, file or Arrow

    def __init__(self, path: Path | str, *, memory_limit: str = "4GB",
                 temp_dir: Path | None = None, threads: int | None = None,
                 staging_dir: Path | None = None, compact_at: float = COMPACT_AT,
                 compact_min_rows: int = COMPACT_MIN_ROWS, job_key: str = "") -> None:
        self.path = Path(path)
        self.compact_at, self.compact_min_rows = compact_at, compact_min_rows
        self.memory_limit = _memory_size(memory_limit)
        self.job_key = job_key  # this build run's: a retried publish finds its own commit
        self.temp_dir = temp_dir or self.path.parent / "duckdb_tmp"
        self.threads = threads
        self._shared: duckdb.DuckDBPyConnection | None = None
        self._held: dict[str, tuple[str, str, pl.DataFrame]] = {}  # name -> (model, run, rows)
        self._found: set[tuple[str, str]] = set()  # tables found in this session
        self.staging_dir = staging_dir or self.path.parent / f"{self.path.stem}_staging"

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keep one connection open for every call inside (opening the file costs ~20 ms)."""
        with self.connect() as con:
            self._shared = con
            try:
                yield
            finally:
                self._shared = None
                self._held.clear()  # registered on the connection, which closes now
                self._found.clear()

    @contextmanager
    def connect(self, attempts: int = 20) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; a lock held by another process is waited for, then reported retryable."""
        if self._shared is not None:
            yield self._shared
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a rewrite of the file waits for it (filegate.py)
        with file_gate(self.path).shared(), self._open(attempts) as con:
            yield con

    @contextmanager
    def _open(self, attempts: int) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file, waiting for another process's lock a while, and close it after."""
        config: dict[str, str | bool | int | float | list[str]] = {"memory_limit": self.memory_limit,
                                        "temp_directory": str(self.temp_dir),
                                        "max_vacuum_tasks": 0,
                                        # query results as Arrow string views: Polars takes
                                        # them without rewriting every string (10M rows x 8
                                        # texts: 0.04 s against 0.5 s, and one copy in memory)
                                        "produce_arrow_string_view": True,
                                        "arrow_output_version": "1.5"}
        if self.threads:
            config["threads"] = self.threads
        for attempt in range(attempts):
            try:
                with _CONNECT_LOCK:
                    con = duckdb.connect(str(self.path), config=config)
                break
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() or attempt == attempts - 1:
                    raise WarehouseBusy(
                        f"cannot open the warehouse: {err}", where=str(self.path),
                        fix="Another process holds it; the step will be retried") from err
                time.sleep(min(0.05 * 2**attempt, 1.0))
        try:
            self._initialise(con)
            yield con
        except duckdb.TransactionException as err:  # another writer won a conflict: retry
            raise WriteConflict(f"the warehouse changed under this step: {err}",
                                 where=str(self.path)) from err
        finally:
            con.close()

    def _initialise(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create the staging and metadata schemas once per file and process."""
        key = str(self.path.resolve())
        with _INIT_LOCK:
            if key in _INITIALISED:
                return
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {META}")
            con.execute(RUN_LOG_DDL)
            con.execute(WATERMARK_DDL)
            con.execute(QUALITY_DDL)
            con.execute(UPKEEP_DDL)
            con.execute(LANDINGS_DDL)
            con.execute(RESTATE_DDL)
            con.execute(ASOF_DDL)
            con.execute(ROW_HASHES_DDL)
            _INITIALISED.add(key)

    # -- reading -----------------------------------------------------------------------------
    def exists(self, table: str, schema: str = PUBLISHED) -> bool:
        """Is the table there? Within a session a table found stays found (no step drops a
        table; a step asks about its own up to five times, ~2 ms a query)."""
        if self._shared is not None and (schema, table) in self._found:
            return True
        with self.connect() as con:
            found = bool(con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                [schema, table]).fetchall()[0][0])
        if found and self._shared is not None:
            self._found.add((schema, table))
        return found

    def query(self, query: str, params: Sequence[Any] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame:
        """Run a query; keyword frames are visible to it as tables of that name (zero-copy).

        Repeated whole if a Temporal workflow task swapped ``sys.modules`` under it (session.py):
        it registers and reads, nothing else."""
        # Strings as Arrow string views: Polars hands them over without a copy, while the default
        # (large strings) rewrote every string (1.7 s against 0.56 s for 2M rows x 8 columns).
        arrow = {name: frame.to_arrow(compat_level=pl.CompatLevel.newest())
                 for name, frame in frames.items()}

        def run() -> pa.Table:
            with self.connect() as con:
                for name, table in arrow.items():
                    con.register(name, table)
                return con.sql(query, params=list(params) if params else None).to_arrow_table()

        result = pl.from_arrow(with_python_objects(run, "query"))
        assert isinstance(result, pl.DataFrame)
        return result

    def read_keys(self, table: str, keys: pl.DataFrame) -> pl.DataFrame:
        """Every row of ``table`` whose key (the frame's columns) is among ``keys``.

        Scattered keys touch every row group, so DuckDB caches the whole table's blocks (~300 MiB
        for a 10M-row dimension) that nothing reads again: they are evicted at once (17 ms) by
        lowering the memory limit for a moment, which keeps a step's peak near what it holds.
        """
        rows = super().read_keys(table, keys)
        if self._shared is None:  # the query's connection is closed: its cache went with it
            return rows
        with _EVICT_LOCK:
            try:  # refused (OutOfMemory) while other work in the process pins more than that
                self._shared.execute(f"SET memory_limit = {_literal(EVICT_TO)}")
            except duckdb.OutOfMemoryException:
                log.debug("kept DuckDB's cache: memory pinned by other work")
            finally:
                self._shared.execute(f"SET memory_limit = {_literal(self.memory_limit)}")
        return rows

    # -- writing -----------------------------------------------------------------------------
    def staged_path(self, model: str, run_id: str) -> Path:
        return self.staging_dir / f"{safe_name(model)}__{safe_name(run_id)}.parquet"

    def stage(self, model: str, run_id: str, frame: pl.DataFrame, *, in_memory: bool = False
              ) -> str:
        """Put a step's output in the staging area; returns it as a table reference for SQL.

        ``in_memory`` (rows the step holds anyway, in a session): the frame is registered on the
        session's connection as Arrow, zero-copy (string views, cut into batches of
        ``DUCKDB_ROW_GROUP`` rows so the publish inserts them in parallel). The audit and the
        publish read it there; nothing is published before the audit passes, and a crash
        leaves the previous table, as with a file. Writing the file instead took 0.07-0.1 s of
        a 10M-row dimension's 350k-row night (7% of its step) for a file read once and deleted.

        Otherwise a Parquet file in the staging folder: written to a temporary name and renamed,
        so a crash never leaves half a file, and a retry replaces it. It lives minutes, so it
        is not compressed beyond Parquet's own encodings (half the write time of LZ4, faster to
        read back), and its row groups are DuckDB's own size, which lets an insert run in
        parallel.
        """
        if in_memory and self._shared is not None and all(map(_same_from_arrow, frame.dtypes)):
            name = f"_staged__{safe_name(model)}__{safe_name(run_id)}"
            table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
            held = pa.Table.from_batches(table.to_batches(max_chunksize=DUCKDB_ROW_GROUP),
                                         table.schema)
            shared = self._shared
            with_python_objects(lambda: shared.register(name, held), f"stage of {model}")
            self._held[name] = (model, run_id, frame)
            return name
        path = self.staged_path(model, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.write_parquet(tmp, compression="uncompressed", statistics=False,
                            row_group_size=DUCKDB_ROW_GROUP, data_page_size=STAGED_PAGE)
        tmp.replace(path)
        return f"read_parquet({_literal(str(path))})"

    def keep_staged(self, ref: str) -> str:
        """Where a steward reads staged rows a gate refused: the staged Parquet file(s); rows
        held in memory are written to the staging folder first."""
        if ref in self._held:
            model, run_id, frame = self._held.pop(ref)
            ref = self.stage(model, run_id, frame)
        return ", ".join(_paths(ref)) or ref

    def _release(self, ref: str) -> None:
        """Drop what a published step staged: its registered rows, or its files."""
        if ref in self._held and self._shared is not None:
            self._shared.unregister(ref)
            del self._held[ref]
        for path in _paths(ref):
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def union(refs: Sequence[str]) -> str:
        """One reference to several staged files (the batches of one step)."""
        return "read_parquet([" + ", ".join(_literal(p) for r in refs for p in _paths(r)) + "])"

    def read_staged(self, ref: str) -> pl.DataFrame:
        """Every staged row, in the order it was staged."""
        return self.query(f"SELECT * FROM {ref}")

    def staged_files(self) -> list[Path]:
        return sorted(self.staging_dir.glob("*.parquet")) if self.staging_dir.exists() else []

    def table_types(self, table: str) -> dict[str, str] | None:
        """A published table's columns and DuckDB types, or None if there is no such table."""
        if not self.exists(table):
            return None
        rows = self.query(f'DESCRIBE {PUBLISHED}."{table}"')
        return dict(zip(rows["column_name"].to_list(), rows["column_type"].to_list(), strict=True))

    def model_types(self, schema: pl.Schema) -> dict[str, str]:
        """The DuckDB types a model's declared columns become when published."""
        rows = self.query("DESCRIBE SELECT * FROM _m", _m=pl.DataFrame(schema=schema))
        return dict(zip(rows["column_name"].to_list(), rows["column_type"].to_list(), strict=True))

    def check_schema(self, model: Any, *, full_refresh: bool) -> None:
        """Before any data moves: refuse a breaking model change, add the columns a model added
        to its table and its quarantine table (a full refresh recreates the table instead)."""
        from starsmith.loaders.evolve import refuse_breaking, schema_diff

        if full_refresh:
            return
        diff = schema_diff(self, model)
        if diff is None:
            return
        refuse_breaking(model, diff)
        if diff.added:
            with self.connect() as con:
                for table in (model.name, f"{model.name}__quarantine"):
                    if self.exists(table):
                        for col, kind in diff.added.items():
                            con.execute(f'ALTER TABLE {PUBLISHED}."{table}" ADD COLUMN IF NOT '
                                        f'EXISTS "{col}" {kind}')
            log.info("%s: added column(s) %s to its table", model.name, ", ".join(diff.added))

    def publish(self, job: Publish) -> None:
        """Run the strategy, quarantine, run log and watermark in one transaction.

        Nothing after the COMMIT fails the step: compacting the table and removing the staged
        copies are best effort (a warning). A retry of a step whose publish had committed (its
        worker died, or lost the step, after the COMMIT) finds its own run-log row by this
        warehouse's job key and publishes nothing twice; a later build of the same day (same
        run id, another job key) publishes again, as every re-run does."""
        stmts = sql.render(job.statements, self.dialect)
        with self.connect() as con:
            if self._committed(con, job):
                log.info("%s %s: already committed by this build run (job %s); a retried step "
                         "is not published twice", job.target, job.run_log.get("logical_date"),
                         self.job_key)
            else:  # rolled back if it fails: a sandbox swap of sys.modules retries it whole
                with_python_objects(lambda: self._commit(con, job, stmts),
                                    f"publish of {job.target}")
                if not job.full_refresh:
                    self._compact_after_commit(con, job.target)
                if job.hashes is not None and job.hashes.replaced is not None:
                    self._compact_after_commit(con, hashes_table(job.target), META)
        self._release_after_commit(job)

    def _commit(self, con: duckdb.DuckDBPyConnection, job: Publish, stmts: Sequence[str]
                ) -> None:
        """The publish's one transaction; a failed COMMIT is retryable (a conflict with another
        writer, or an I/O error the step's error typing looks into)."""
        try:
            con.execute("BEGIN TRANSACTION")
            deleted = 0
            for tree, statement in zip(job.statements, stmts, strict=True):
                clock = time.perf_counter()
                result = con.execute(statement).fetchall()
                if isinstance(tree, exp.Delete) and result:
                    deleted += int(result[0][0])
                log.debug("%.3f s: %s", time.perf_counter() - clock, statement[:200])
            self._count_deleted(con, job.target, deleted, reset=job.full_refresh)
            if job.quarantine is not None:
                self._quarantine(con, job.target, job.quarantine, job.run_log["logical_date"],
                                 None if job.full_refresh else job.quarantine_scope,
                                 everything=job.full_refresh)
            self._log(con, self._keyed(job.run_log))
            if job.quality is not None:
                self._record_quality(con, job.quality)
            self._bookkeep(con, job)
            if job.watermark_dates:  # one statement: a full refresh marks every day (2,406
                # single inserts of a long backfill's six models took a quarter of its build)
                con.execute(
                    f"INSERT OR REPLACE INTO {META}.watermarks SELECT ?, unnest(?::DATE[]), ?, ?,"
                    " now()", [job.target, sorted(set(job.watermark_dates)),
                               job.run_log["run_id"], job.run_log["fingerprint"]])
            con.execute("COMMIT")
        except duckdb.TransactionException as err:
            _rollback(con)  # a failed COMMIT has ended the transaction already
            if "conflict" in str(err).lower():
                raise WriteConflict(f"publish conflicted with another writer: {err}",
                                     where=job.target) from err
            raise RetryableError(f"the publish of {job.target} could not commit: {err}",
                                 where=str(self.path)) from err
        except BaseException:
            _rollback(con)
            raise

    def _keyed(self, row: dict[str, Any]) -> dict[str, Any]:
        """The run-log row with this warehouse's job key in its details (no column of its own:
        the run log's columns are shared with every target)."""
        if not self.job_key:
            return row
        found: Any = row.get("details")
        if isinstance(found, str):
            with contextlib.suppress(ValueError):  # not JSON: kept as it is, below
                found = json.loads(found) if found.strip() else None
        details = dict(found) if isinstance(found, dict) else (
            {} if found is None else {"details": found})
        return row | {"details": json.dumps(details | {JOB_KEY: self.job_key}, default=str)}

    def _committed(self, con: duckdb.DuckDBPyConnection, job: Publish) -> bool:
        """Did this build run (the job key) commit this publish already? Its run-log row says so
        (success, same run id, model, logical date, fingerprint and job key), and so do its
        watermarks (same run id and fingerprint). Without a job key, never."""
        if not self.job_key:
            return False
        row = job.run_log
        run_id, fingerprint = row.get("run_id"), row.get("fingerprint")
        logged = con.execute(
            f"SELECT count(*) FROM {META}.run_log WHERE status = 'success' AND run_id = ? "
            "AND model = ? AND logical_date = ? AND fingerprint IS NOT DISTINCT FROM ? "
            f"AND details->>'$.{JOB_KEY}' = ?",
            [run_id, row.get("model", job.target), row.get("logical_date"), fingerprint,
             self.job_key]).fetchall()
        if not logged[0][0]:
            return False
        days = sorted(set(job.watermark_dates))
        if not days:  # a model with no inputs keeps no watermark: its run-log row is the record
            return True
        marks = ", ".join("?" for _ in days)
        found = con.execute(
            f"SELECT count(*) FROM {META}.watermarks WHERE model = ? AND run_id = ? "
            f"AND fingerprint IS NOT DISTINCT FROM ? AND logical_date IN ({marks})",
            [job.target, run_id, fingerprint, *days]).fetchall()
        return bool(found[0][0] == len(days))

    def _compact_after_commit(self, con: duckdb.DuckDBPyConnection, target: str,
                              schema: str = PUBLISHED) -> None:
        """Compact once the publish has committed, best effort: a failure (a full disk, say)
        leaves the table as published, its deleted rows still counted, so the next publish
        tries again; it never fails (nor has Temporal retry) a step whose rows are in."""
        try:
            self._compact(con, target, schema)
        except Exception as err:
            log.warning("%s: published; compacting its table failed, the next publish tries "
                        "again: %s", target, err)

    def _release_after_commit(self, job: Publish) -> None:
        """Drop the staged copies of a published step, best effort (a leftover file is named
        by the run and replaced by the next one)."""
        for ref in (job.staged, *job.also_staged):
            try:
                self._release(ref)
            except Exception as err:
                log.warning("%s: published; could not drop the staged copy %s: %s", job.target,
                            ref, err)

    @staticmethod
    def _bookkeep(con: duckdb.DuckDBPyConnection, job: Publish) -> None:
        """Record the landings the step read. A full refresh forgets the model's recorded
        landings and its days after the one it rebuilt as of (a folder dated in the future and
        refused since leaves no watermark behind)."""
        if job.full_refresh:  # rebuilt as of its logical date: later days are undone
            con.execute(f"DELETE FROM {META}.landings WHERE model = ?", [job.target])
            con.execute(f"DELETE FROM {META}.restatements WHERE model = ?", [job.target])
            con.execute(f"DELETE FROM {META}.watermarks WHERE model = ? AND logical_date > ?",
                        [job.target, job.run_log["logical_date"]])
        if job.asof is not None:  # a range's dimension: the states it replaced
            con.execute(f"DELETE FROM {META}.asof WHERE dimension = ?", [job.target])
            con.register("_a", job.asof.to_arrow())
            con.execute(f"INSERT INTO {META}.asof BY NAME SELECT * FROM _a")
        if job.model is not None and job.model.dimension is not None:
            _store_hashes(con, job)
        if job.landings:
            con.register("_l", pl.DataFrame(
                [(job.target, s, d, f, job.run_log["run_id"]) for s, d, f in job.landings],
                schema={"model": pl.String(), "source": pl.String(), "landed_day": pl.Date(),
                        "fingerprint": pl.String(), "run_id": pl.String()}, orient="row"
            ).to_arrow())
            con.execute(f"INSERT OR REPLACE INTO {META}.landings SELECT model, source, "
                        "landed_day, fingerprint, run_id, now() FROM _l")

    @staticmethod
    def _count_deleted(con: duckdb.DuckDBPyConnection, target: str, deleted: int, *,
                       reset: bool) -> None:
        """Add a publish's deleted rows to the table's count (in its transaction): counting
        them in the table itself cost a scan, 30 ms at 10M rows, on every publish."""
        if reset:
            con.execute(f"DELETE FROM {META}.table_upkeep WHERE model = ?", [target])
        elif deleted:
            con.execute(f"INSERT INTO {META}.table_upkeep VALUES (?, ?) ON CONFLICT (model) DO "
                        "UPDATE SET deleted_rows = deleted_rows + excluded.deleted_rows",
                        [target, deleted])

    def _compact(self, con: duckdb.DuckDBPyConnection, target: str, schema: str = PUBLISHED
                 ) -> None:
        """Rewrite the table when deleted rows pass COMPACT_AT of those stored (atomic: readers
        see the old table until the rewrite commits; a crash leaves the old one)."""
        found = con.execute(
            f"SELECT u.deleted_rows, t.estimated_size FROM {META}.table_upkeep u JOIN "
            "duckdb_tables() t ON t.table_name = ? AND t.schema_name = ? WHERE u.model = ?",
            [target, schema, _upkeep_key(target, schema)]).fetchall()
        if not found:
            return
        dead, stored = found[0]
        if dead < self.compact_min_rows or dead < self.compact_at * stored:
            return
        table = f'{schema}."{target}"'
        clock = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table}")
            self._count_deleted(con, _upkeep_key(target, schema), 0, reset=True)
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        log.info("compacted %s: %d deleted of %d stored rows dropped in %.1f s", target, dead,
                 stored, time.perf_counter() - clock)

    def _quarantine(self, con: duckdb.DuckDBPyConnection, model: str, rows: pl.DataFrame,
                    logical_date: date, scope: tuple[str, Sequence[date]] | None, *,
                    everything: bool = False) -> None:
        """Replace the quarantine rows this step is responsible for (a re-run never doubles).

        By default those of its logical date; a fact names the event-date partitions it rebuilt,
        since a row held back from a partition is held back again whenever that partition is;
        a full refresh rebuilt everything, so it replaces every row.
        """
        table = f'{PUBLISHED}."{model}__quarantine"'
        con.register("_q", rows.to_arrow())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _q LIMIT 0")
        if rows.height:  # most nights hold nothing back: no column to add, no row to insert
            have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
            for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM _q").fetchall():
                if name not in have:  # the model gained a column since rows were first held
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')
        if everything:
            con.execute(f"DELETE FROM {table}")
        elif scope is None:
            con.execute(f"DELETE FROM {table} WHERE logical_date = ?", [logical_date])
        else:
            con.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{scope[0]}" DATE')
            con.register("_scope", pl.DataFrame({"d": list(scope[1])},
                                                 schema={"d": pl.Date()}).to_arrow())
            con.execute(f'DELETE FROM {table} WHERE "{scope[0]}" IN (SELECT d FROM _scope) '
                        f'OR "{scope[0]}" IS NULL')
        if rows.height:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _q")

    def _log(self, con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
        values = [row.get(c) for c in RUN_LOG_COLUMNS]
        marks = ", ".join("?" for _ in values)
        con.execute(f"INSERT INTO {META}.run_log VALUES ({marks})", values)

    def _record_quality(self, con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
        """Replace this run's results for the model: a retried step never doubles them."""
        con.register("_r", rows.to_arrow())
        con.execute(f"DELETE FROM {META}.quality_results WHERE run_id = ? AND model = ?",
                    [rows["run_id"][0], rows["model"][0]])
        con.execute(f"INSERT INTO {META}.quality_results BY NAME SELECT * FROM _r")

    def record_quality(self, rows: pl.DataFrame) -> None:
        """Record results of a step whose gate refused it (nothing else is written)."""
        if rows.height:
            def record() -> None:
                with self.connect() as con:
                    self._record_quality(con, rows)

            with_python_objects(record, f"quality results of {rows['model'][0]}")

    def log_failure(self, row: dict[str, Any]) -> None:
        with self.connect() as con:
            self._log(con, row)

    def watermarks(self) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {META}.watermarks ORDER BY model, logical_date")

    def landings(self) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {META}.landings ORDER BY model, source, landed_day")

    def restatements(self) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {META}.restatements ORDER BY model")

    def mark_restatements(self, rows: pl.DataFrame) -> None:
        if not rows.height:
            return
        marks = rows.to_arrow()

        def mark() -> None:  # one statement: a failed one changed nothing
            with self.connect() as con:
                con.register("_m", marks)
                con.execute(f"INSERT INTO {META}.restatements SELECT model, from_day, reason, "
                            "now() FROM _m ON CONFLICT (model) DO UPDATE SET from_day = "
                            "least(from_day, excluded.from_day)")

        with_python_objects(mark, "restatement marks")

    def run_log(self) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {META}.run_log ORDER BY started_at")

    def upkeep(self, *, midway: bool = False) -> None:
        """End of a build, its steps done: rewrite the file once it has grown well past its data
        (``upkeep.py``: each publish's small commits leave blocks nothing merges). ``midway``:
        more days of this build follow, so only a file grown far past its data is rewritten
        (``MIDWAY_AT``): a long backfill then copies its data every few hundred days, not
        every few."""
        from starsmith.loaders.duckdb.upkeep import MIDWAY_AT, REWRITE_AT, upkeep

        upkeep(self, rewrite_at=MIDWAY_AT if midway else REWRITE_AT)


def _upkeep_key(table: str, schema: str) -> str:
    """A table's row in ``table_upkeep``: a model's name, or ``schema.table`` for metadata."""
    return table if schema == PUBLISHED else f"{schema}.{table}"


def _store_hashes(con: duckdb.DuckDBPyConnection, job: Publish) -> None:
    """Apply a dimension publish's stored hashes (orchestration/row_hashes.py) in its
    transaction: all replaced, or its changed keys'; a publish bringing none drops their
    scheme's row, so nothing reads hashes its rows no longer match."""
    hashes, name = job.hashes, hashes_table(job.target)
    table = f'{META}."{name}"'
    if hashes is None:
        con.execute(f"DELETE FROM {META}.row_hashes WHERE dimension = ?", [job.target])
        return
    con.register("_hh", hashes.rows.to_arrow())
    if hashes.replaced is None:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _hh")
        con.execute(f"INSERT OR REPLACE INTO {META}.row_hashes VALUES (?, ?)",
                    [job.target, hashes.scheme])
        DuckDBWarehouse._count_deleted(con, _upkeep_key(name, META), 0, reset=True)
        return
    # changed keys only: over hashes of the same scheme, or none at all
    con.execute(f"DELETE FROM {META}.row_hashes WHERE dimension = ? AND scheme <> ?",
                [job.target, hashes.scheme])
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND "
                       "table_name = ?", [META, name]).fetchall()[0][0]:
        return
    con.register("_hk", hashes.replaced.to_arrow())
    gone = con.execute(f"DELETE FROM {table} h WHERE "
                       + sql.keys_in("h", "_hk", hashes.replaced.columns)).fetchall()[0][0]
    con.execute(f"INSERT INTO {table} SELECT * FROM _hh")
    DuckDBWarehouse._count_deleted(con, _upkeep_key(name, META), int(gone), reset=False)
