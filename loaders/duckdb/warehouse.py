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
run-log row and the watermark, so readers see the old state or the new one, never a mix. This
module opens the connection and the transaction and runs the statements; ``records.py`` writes
the records that go in with them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
from polars._typing import PolarsDataType  # Polars' own alias for a dtype, instance or class
from sqlglot import exp

from starsmith.errors import ConfigError, RetryableError, WarehouseBusy, WriteConflict
from starsmith.loaders import sql
from starsmith.loaders.duckdb import records
from starsmith.loaders.duckdb.filegate import file_gate
from starsmith.loaders.duckdb.records import COMPACT_AT, COMPACT_MIN_ROWS, META, PUBLISHED, rollback
from starsmith.loaders.duckdb.session import with_python_objects
from starsmith.loaders.target import Publish, SqlReads, hashes_table, safe_name
from starsmith.log import get_logger

log = get_logger(__name__)


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
            for ddl in records.META_DDL:
                con.execute(ddl)
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
            if records.committed(con, job, self.job_key):
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
            records.count_deleted(con, job.target, deleted, reset=job.full_refresh)
            if job.quarantine is not None:
                records.quarantine(con, job.target, job.quarantine, job.run_log["logical_date"],
                                   None if job.full_refresh else job.quarantine_scope,
                                   everything=job.full_refresh)
            records.log_row(con, records.keyed(job.run_log, self.job_key))
            if job.quality is not None:
                records.record_quality(con, job.quality)
            records.bookkeep(con, job)
            if job.watermark_dates:  # one statement: a full refresh marks every day (2,406
                # single inserts of a long backfill's six models took a quarter of its build)
                con.execute(
                    f"INSERT OR REPLACE INTO {META}.watermarks SELECT ?, unnest(?::DATE[]), ?, ?,"
                    " now()", [job.target, sorted(set(job.watermark_dates)),
                               job.run_log["run_id"], job.run_log["fingerprint"]])
            con.execute("COMMIT")
        except duckdb.TransactionException as err:
            rollback(con)  # a failed COMMIT has ended the transaction already
            if "conflict" in str(err).lower():
                raise WriteConflict(f"publish conflicted with another writer: {err}",
                                     where=job.target) from err
            raise RetryableError(f"the publish of {job.target} could not commit: {err}",
                                 where=str(self.path)) from err
        except BaseException:
            rollback(con)
            raise

    def _compact_after_commit(self, con: duckdb.DuckDBPyConnection, target: str,
                              schema: str = PUBLISHED) -> None:
        """Compact once the publish has committed, best effort: a failure (a full disk, say)
        leaves the table as published, its deleted rows still counted, so the next publish
        tries again; it never fails (nor has Temporal retry) a step whose rows are in."""
        try:
            records.compact(con, target, schema, at=self.compact_at,
                            min_rows=self.compact_min_rows)
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

    def record_quality(self, rows: pl.DataFrame) -> None:
        """Record results of a step whose gate refused it (nothing else is written)."""
        if rows.height:
            def record() -> None:
                with self.connect() as con:
                    records.record_quality(con, rows)

            with_python_objects(record, f"quality results of {rows['model'][0]}")

    def log_failure(self, row: dict[str, Any]) -> None:
        with self.connect() as con:
            records.log_row(con, row)

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
