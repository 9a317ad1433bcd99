"""What a publish records beside its rows, in its transaction: the run log, the watermarks,
the landings read, the quarantine, the quality results, the stored row hashes, the count of
deleted rows; and the compaction that count triggers once the publish has committed.

Every function here takes the publish's connection and runs inside its transaction (compaction
runs its own, after), so readers see all of a publish's records or none: ``warehouse.py`` opens
the connection and the transaction, this module writes what goes in it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import duckdb
import polars as pl

from starsmith.loaders import sql
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, hashes_table
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

# The metadata tables, created once per file and process (``DuckDBWarehouse._initialise``)
META_DDL = (f"CREATE SCHEMA IF NOT EXISTS {META}", RUN_LOG_DDL, WATERMARK_DDL, QUALITY_DDL,
            UPKEEP_DDL, LANDINGS_DDL, RESTATE_DDL, ASOF_DDL, ROW_HASHES_DDL)


# DuckDB's own vacuum, run at every checkpoint, merges row groups that hold deleted rows: after a
# publish that deleted scattered keys it rewrote data across the whole table to save one row
# group (0.2 s of a 10M-row dimension's 150k-key night, ~4 ms per touched row group), so a
# nightly cost grew with the table. It is off; ``compact`` rewrites a table instead, once its
# deleted rows pass COMPACT_AT of what it stores: an amortised cost that grows with the changes.
COMPACT_AT = 0.25
COMPACT_MIN_ROWS = 100_000  # below this many deleted rows a rewrite is never worth it


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """End a failed transaction. One that a failed COMMIT ended already is left as it is: the
    second error ("no transaction is active") would hide the first."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as err:
        log.debug("rollback: %s", err)


def keyed(row: dict[str, Any], job_key: str) -> dict[str, Any]:
    """The run-log row with the build run's job key in its details (no column of its own:
    the run log's columns are shared with every target)."""
    if not job_key:
        return row
    found: Any = row.get("details")
    if isinstance(found, str):
        with contextlib.suppress(ValueError):  # not JSON: kept as it is, below
            found = json.loads(found) if found.strip() else None
    details = dict(found) if isinstance(found, dict) else (
        {} if found is None else {"details": found})
    return row | {"details": json.dumps(details | {JOB_KEY: job_key}, default=str)}


def committed(con: duckdb.DuckDBPyConnection, job: Publish, job_key: str) -> bool:
    """Did this build run (the job key) commit this publish already? Its run-log row says so
    (success, same run id, model, logical date, fingerprint and job key), and so do its
    watermarks (same run id and fingerprint). Without a job key, never."""
    if not job_key:
        return False
    row = job.run_log
    run_id, fingerprint = row.get("run_id"), row.get("fingerprint")
    logged = con.execute(
        f"SELECT count(*) FROM {META}.run_log WHERE status = 'success' AND run_id = ? "
        "AND model = ? AND logical_date = ? AND fingerprint IS NOT DISTINCT FROM ? "
        f"AND details->>'$.{JOB_KEY}' = ?",
        [run_id, row.get("model", job.target), row.get("logical_date"), fingerprint,
         job_key]).fetchall()
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


def bookkeep(con: duckdb.DuckDBPyConnection, job: Publish) -> None:
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
        store_hashes(con, job)
    if job.landings:
        con.register("_l", pl.DataFrame(
            [(job.target, s, d, f, job.run_log["run_id"]) for s, d, f in job.landings],
            schema={"model": pl.String(), "source": pl.String(), "landed_day": pl.Date(),
                    "fingerprint": pl.String(), "run_id": pl.String()}, orient="row"
        ).to_arrow())
        con.execute(f"INSERT OR REPLACE INTO {META}.landings SELECT model, source, "
                    "landed_day, fingerprint, run_id, now() FROM _l")


def count_deleted(con: duckdb.DuckDBPyConnection, target: str, deleted: int, *,
                  reset: bool) -> None:
    """Add a publish's deleted rows to the table's count (in its transaction): counting
    them in the table itself cost a scan, 30 ms at 10M rows, on every publish."""
    if reset:
        con.execute(f"DELETE FROM {META}.table_upkeep WHERE model = ?", [target])
    elif deleted:
        con.execute(f"INSERT INTO {META}.table_upkeep VALUES (?, ?) ON CONFLICT (model) DO "
                    "UPDATE SET deleted_rows = deleted_rows + excluded.deleted_rows",
                    [target, deleted])


def compact(con: duckdb.DuckDBPyConnection, target: str, schema: str = PUBLISHED, *,
            at: float = COMPACT_AT, min_rows: int = COMPACT_MIN_ROWS) -> None:
    """Rewrite the table when deleted rows pass ``at`` (COMPACT_AT) of those stored (atomic: readers
    see the old table until the rewrite commits; a crash leaves the old one)."""
    found = con.execute(
        f"SELECT u.deleted_rows, t.estimated_size FROM {META}.table_upkeep u JOIN "
        "duckdb_tables() t ON t.table_name = ? AND t.schema_name = ? WHERE u.model = ?",
        [target, schema, upkeep_key(target, schema)]).fetchall()
    if not found:
        return
    dead, stored = found[0]
    if dead < min_rows or dead < at * stored:
        return
    table = f'{schema}."{target}"'
    clock = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table}")
        count_deleted(con, upkeep_key(target, schema), 0, reset=True)
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    log.info("compacted %s: %d deleted of %d stored rows dropped in %.1f s", target, dead,
             stored, time.perf_counter() - clock)


def quarantine(con: duckdb.DuckDBPyConnection, model: str, rows: pl.DataFrame,
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


def log_row(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    """Append one step's row to the run log."""
    values = [row.get(c) for c in RUN_LOG_COLUMNS]
    marks = ", ".join("?" for _ in values)
    con.execute(f"INSERT INTO {META}.run_log VALUES ({marks})", values)


def record_quality(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """Replace this run's results for the model: a retried step never doubles them."""
    con.register("_r", rows.to_arrow())
    con.execute(f"DELETE FROM {META}.quality_results WHERE run_id = ? AND model = ?",
                [rows["run_id"][0], rows["model"][0]])
    con.execute(f"INSERT INTO {META}.quality_results BY NAME SELECT * FROM _r")


def upkeep_key(table: str, schema: str) -> str:
    """A table's row in ``table_upkeep``: a model's name, or ``schema.table`` for metadata."""
    return table if schema == PUBLISHED else f"{schema}.{table}"


def store_hashes(con: duckdb.DuckDBPyConnection, job: Publish) -> None:
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
        count_deleted(con, upkeep_key(name, META), 0, reset=True)
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
    count_deleted(con, upkeep_key(name, META), int(gone), reset=False)
