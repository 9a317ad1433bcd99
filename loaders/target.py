"""The warehouse target contract every build step talks to, and how a reference picks one.

A build step never names an engine: it asks a ``Warehouse`` to read tables (by name), to stage
its output (returning a reference the SQL can read), and to publish the strategy's statements
atomically with the run log, watermarks, quarantine and quality results. Step SQL is written in
DuckDB's dialect over ``main.<table>`` and ``_starsmith.<table>``; the BigQuery target
transpiles it with sqlglot and maps those schemas to its datasets, so each query exists once.

A reference is a DuckDB file path (the embedded default) or ``bigquery://project/dataset``
(optionally ``?location=EU``); it is a plain string so it can cross Temporal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl
from sqlglot import exp

from starsmith.loaders import sql

if TYPE_CHECKING:
    from starsmith.contract import Model

BIGQUERY_SCHEME = "bigquery://"
RUN_LOG_COLUMNS = (
    "run_id", "model", "logical_date", "strategy", "status", "rows_read", "rows_written",
    "rows_inserted", "rows_updated", "rows_closed", "rows_quarantined", "started_at",
    "finished_at", "duration_s", "fingerprint", "message", "details",
)


@dataclass(frozen=True)
class Publish:
    """One atomic publish: the strategy's statements plus what must commit with them."""

    target: str
    staged: str
    statements: Sequence[exp.Expr]
    run_log: dict[str, Any]
    quarantine: pl.DataFrame | None = None
    watermark_dates: Sequence[date] = ()
    also_staged: Sequence[str] = ()  # other staged references the statements read
    quality: pl.DataFrame | None = None  # this step's expectation results
    quarantine_scope: tuple[str, Sequence[date]] | None = None  # (column, values) it replaces
    model: Model | None = None  # the spec, for targets that create and evolve tables from it
    full_refresh: bool = False  # the model's watermarks and recorded landings are replaced
    landings: Sequence[tuple[str, date, str]] = ()  # (source, landed day, fingerprint) read
    # A catch-up range's dimension: the states its replay replaced (ASOF_COLUMNS), which the
    # range's facts key earlier nights against; they replace the dimension's previous ones.
    asof: pl.DataFrame | None = None
    # A snapshot dimension's stored hashes of its live versions (orchestration/row_hashes.py):
    # None makes a target that keeps them drop them (the next night hashes the table again).
    hashes: RowHashes | None = None


@dataclass(frozen=True)
class RowHashes:
    """What a publish does to a dimension's stored hashes."""

    scheme: str  # what they were made with
    rows: pl.DataFrame  # (natural key, _h) of live versions to store
    replaced: pl.DataFrame | None  # keys whose stored hashes go first; None: all of them


def hashes_table(dimension: str) -> str:
    """The table holding a dimension's stored hashes, in the metadata schema (unquoted)."""
    return f"{safe_name(dimension)}__hashes"


ASOF_SCHEMA = pl.Schema({
    "dimension": pl.String(), "natural_key": pl.String(),  # the key's values, as JSON
    "surrogate_key": pl.Int64(), "valid_from": pl.Datetime("us"),
    "valid_to": pl.Datetime("us"), "until": pl.Date(),  # NULL key: not in the dimension yet
})


def safe_name(name: str) -> str:
    """A model or run id as part of a table or file name: letters, digits and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


class SqlReads:
    """Reads both targets write the same way, on top of their own ``query``."""

    def query(self, query: str, params: Sequence[Any] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame:
        raise NotImplementedError

    def read(self, table: str, where: str | None = None, params: Sequence[Any] | None = None,
             **frames: pl.DataFrame) -> pl.DataFrame:
        q = f'SELECT * FROM main."{table}"' + (f" WHERE {where}" if where else "")
        return self.query(q, params, **frames)

    def read_keys(self, table: str, keys: pl.DataFrame) -> pl.DataFrame:
        """Every row of ``table`` whose key (the frame's columns) is among ``keys``."""
        return self.query(f'SELECT d.* FROM main."{table}" d WHERE '
                          + sql.keys_in("d", "_keys", keys.columns), _keys=keys)

    def max_value(self, table: str, column: str) -> int:
        rows = self.query(f'SELECT coalesce(max("{column}"), 0) AS m FROM main."{table}"')
        return int(rows["m"][0])


class Warehouse(Protocol):
    """What a build step needs from a target; DuckDB and BigQuery both provide it."""

    dialect: str
    row_index: str  # SQL for a staged row's position, for rows a "mostly" rule holds back

    def session(self) -> AbstractContextManager[None]: ...

    def exists(self, table: str) -> bool: ...

    def query(self, query: str, params: Sequence[Any] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame: ...

    def read(self, table: str, where: str | None = None, params: Sequence[Any] | None = None,
             **frames: pl.DataFrame) -> pl.DataFrame: ...

    def read_keys(self, table: str, keys: pl.DataFrame) -> pl.DataFrame: ...

    def max_value(self, table: str, column: str) -> int: ...

    def stage(self, model: str, run_id: str, frame: pl.DataFrame, *, in_memory: bool = False
              ) -> str:
        """Stage rows; ``in_memory`` allows a target to hold them in its session, not on disk
        (rows the step keeps in memory anyway)."""

    def keep_staged(self, ref: str) -> str:
        """Where a steward reads staged rows a gate refused (written out first if held)."""

    def union(self, refs: Sequence[str]) -> str: ...

    def read_staged(self, ref: str) -> pl.DataFrame: ...

    def publish(self, job: Publish) -> None: ...

    def check_schema(self, model: Model, *, full_refresh: bool) -> None:
        """Refuse, before a step reads or stages anything, a model its table cannot take."""

    def record_quality(self, rows: pl.DataFrame) -> None: ...

    def log_failure(self, row: dict[str, Any]) -> None: ...

    def watermarks(self) -> pl.DataFrame: ...

    def landings(self) -> pl.DataFrame:
        """What each model read: (model, source, landed_day, fingerprint, run_id)."""

    def restatements(self) -> pl.DataFrame:
        """Models marked to be rebuilt from history: (model, from_day, reason)."""

    def mark_restatements(self, rows: pl.DataFrame) -> None:
        """Mark models (model, from_day, reason) until their next full-refresh publish; a model
        already marked keeps the earlier day."""

    def run_log(self) -> pl.DataFrame: ...

    def upkeep(self, *, midway: bool = False) -> None:
        """After a build's last step (nothing else writes): keep the storage near its data's
        size. DuckDB rewrites a file grown with small commits; BigQuery has nothing to do.
        ``midway``: more days of the same build follow (a looser bound, checked cheaply)."""


def is_bigquery(ref: str | Path) -> bool:
    return str(ref).startswith(BIGQUERY_SCHEME)


def conform_read(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Rows read back from a target, with the model's types (BigQuery widens NUMERIC, say)."""
    casts = {c: t for c, t in schema.items() if c in frame.columns and frame.schema[c] != t}
    return frame.cast(casts) if casts else frame  # type: ignore[arg-type]
