"""The model contract: what a module in ``models/`` declares about one table.

A model is a small frozen spec plus one pure transform. The spec separates what changes the data
(inputs, columns and types, keys, strategy, SCD rules, transform code) from metadata (description,
owner): :meth:`Model.fingerprint` hashes only the former, so a new description does not rebuild.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum

import polars as pl

from starsmith.dimensions.spec import DimensionSpec
from starsmith.errors import ConfigError
from starsmith.facts.spec import FactSpec
from starsmith.loaders.extract.spec import Postgres
from starsmith.quality.checks import Check
from starsmith.quality.expect import Expect


class Kind(StrEnum):
    SOURCE = "source"
    STAGING = "staging"
    DIMENSION = "dimension"
    FACT = "fact"


class Strategy(StrEnum):
    """How a model's output reaches its table; each is one atomic publish."""

    FULL = "full"  # replace the table
    MERGE = "merge"  # upsert by the unique key
    SCD = "scd"  # the SCD builder's new and changed versions replace theirs, by surrogate key
    PARTITION = "partition"  # overwrite the partitions the batch holds (idempotent append)


class Window(StrEnum):
    """Which slice of an input a run reads."""

    DAY = "day"  # the logical date's extract or partition only
    ALL = "all"  # the whole input (e.g. the current dimension for a lookup)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    description: str = ""
    nullable: bool = True


@dataclass(frozen=True)
class Input:
    """A model's input: another model or ``landing.<source>``.

    ``on`` names the columns a fact joins this input on to its event input (the rows carrying
    the event date): the fact step reads only this input's rows matching the batch's keys.
    """

    name: str
    window: Window = Window.DAY
    on: tuple[str, ...] = ()


QUARANTINE_REASON = "_quarantine_reason"
"""A transform may add this column: rows where it is not NULL go to ``<model>__quarantine``."""


@dataclass(frozen=True)
class BuildContext:
    """What a transform may know besides its inputs: the logical date and the run."""

    logical_date: date
    run_id: str

    @property
    def batch_time(self) -> datetime:
        return datetime(self.logical_date.year, self.logical_date.month, self.logical_date.day)


Transform = Callable[[Mapping[str, pl.LazyFrame], BuildContext], pl.LazyFrame]


@dataclass(frozen=True)
class Model:
    """One table of the warehouse."""

    name: str
    kind: Kind
    inputs: tuple[Input, ...]
    columns: tuple[Column, ...]
    transform: Transform
    strategy: Strategy
    unique_key: tuple[str, ...] = ()
    partition_by: str | None = None
    dimension: DimensionSpec | None = None
    fact: FactSpec | None = None
    expectations: tuple[Expect, ...] = ()
    checks: tuple[Check, ...] = ()
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        where = f"model {self.name}"
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigError("a column is declared twice", where=where)
        if self.strategy is Strategy.SCD and self.dimension is None:
            raise ConfigError("strategy SCD needs a DimensionSpec", where=where,
                              fix="Set dimension=DimensionSpec(...)")
        if self.strategy is Strategy.PARTITION and self.partition_by not in names:
            raise ConfigError("strategy PARTITION needs partition_by naming a declared column",
                              where=where)
        if self.strategy is Strategy.MERGE and not self.unique_key:
            raise ConfigError("strategy MERGE needs a unique_key", where=where)

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def fingerprint(self) -> str:
        """A hash of what changes the data; metadata (descriptions, owner, tags) is left out."""
        parts = [
            self.name, self.kind.value, self.strategy.value, repr(self.inputs),
            repr([(c.name, str(c.dtype), c.nullable) for c in self.columns]),
            repr(self.unique_key), repr(self.partition_by), repr(_data_spec(self.dimension)),
            repr(self.fact),
            inspect.getsource(self.transform),
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _data_spec(spec: DimensionSpec | None) -> object:
    if spec is None:
        return None
    return {k: v for k, v in spec.__dict__.items() if k != "descriptions"}


class Cadence(StrEnum):
    """How a source lands: it tells the planner whether a logical date needs that day's extract."""

    DAILY = "daily"  # a daily extract (events, facts): a day is built once it has landed
    CHANGE_FEED = "change_feed"  # the day's changes (CDC): lands every day, possibly empty
    SNAPSHOT = "snapshot"  # the full state, every day: a key missing from it was removed
    REFERENCE = "reference"  # lands now and then: a day reads the latest landed on or before it

    @property
    def daily(self) -> bool:
        """Must this source land on a day for the day to be built?"""
        return self is not Cadence.REFERENCE


SOURCE_FORMATS = ("parquet", "csv", "ndjson", "avro")


class Completion(StrEnum):
    """How a landed day is known to be complete (loaders/landed.py): exporters write the data
    files first and a marker or manifest last, so a day without it is still being written."""

    AUTO = "auto"  # MARKER or MANIFEST once the source has written one; FILES before that
    MARKER = "marker"  # a ``_SUCCESS`` file (Spark, Hadoop, most exporters)
    MANIFEST = "manifest"  # ``_manifest.json``: every file with its bytes, rows and sha256
    FILES = "files"  # the data files are there and none is empty or still named as in progress


@dataclass(frozen=True)
class Guard:
    """How much one day of a source may change history before a build refuses it.

    ``max_closed``: the share of a dimension's live keys one snapshot may close (a truncated
    or empty export closes everything it lacks), once it closes more than ``at_least`` keys (a
    store closing among seven is news, not an accident); ``allow_empty``: a day with no rows is
    valid (None: only a change feed's). ``starsmith build --accept-changes`` lets one build
    through.
    """

    max_closed: float = 0.1
    at_least: int = 10
    allow_empty: bool | None = None


@dataclass(frozen=True)
class Source:
    """A landing-zone feed: one folder per landing, ``<landing>/<name>/date=YYYY-MM-DD/``.

    ``future_days``: how many days after today a landing may be dated (time zones, exporters
    that date by the next business day); a folder dated later is refused, not built.
    """

    name: str
    format: str  # parquet | csv | ndjson | avro
    columns: tuple[Column, ...]
    description: str = ""
    cadence: Cadence = Cadence.DAILY
    completion: Completion = Completion.AUTO
    guard: Guard = field(default_factory=Guard)
    future_days: int = 1
    extract: Postgres | None = None  # landed by `starsmith extract` (loaders/extract)

    def __post_init__(self) -> None:
        if self.extract is not None and self.format != "parquet":
            raise ConfigError(f"source {self.name!r} is extracted from a database: its "
                              "format is parquet", fix='Declare format="parquet"')
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(f"source {self.name!r} has format {self.format!r}",
                              fix=f"Use one of {', '.join(SOURCE_FORMATS)}")
        if not isinstance(self.cadence, Cadence):
            raise ConfigError(f"source {self.name!r} has cadence {self.cadence!r}",
                              fix=f"Use Cadence.{', Cadence.'.join(c.name for c in Cadence)}")

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def allows_empty(self) -> bool:
        """May a landed day hold no rows? A change feed's quiet day may; a snapshot or a daily
        extract with no rows is a broken export unless the source says otherwise."""
        if self.guard.allow_empty is not None:
            return self.guard.allow_empty
        return self.cadence in (Cadence.CHANGE_FEED, Cadence.REFERENCE)

    def fingerprint(self) -> str:
        """What changes the data read from it: format, cadence, columns and types."""
        parts = [self.name, self.format, self.cadence.value,
                 repr([(c.name, str(c.dtype), c.nullable) for c in self.columns])]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


SYSTEM_DESCRIPTIONS = {
    "valid_from": "start of the version's validity, inclusive",
    "valid_to": "end of the version's validity, exclusive; 9999-12-31 while open",
    "is_current": "true on the open version of a key (valid_to = 9999-12-31)",
    "is_deleted": "true on a version that records the key's deletion in the source",
    "is_inferred": "true while the row is a placeholder for a key seen in facts first",
    "run_id": "the run that last wrote this row",
}


def dimension_columns(spec: DimensionSpec, attributes: tuple[Column, ...]) -> tuple[Column, ...]:
    """The full column list of a dimension table: surrogate key, attributes, convention columns."""
    from starsmith.dimensions.members import dimension_schema

    schema = dimension_schema(spec, {c.name: c.dtype for c in attributes})
    described = {c.name: c for c in attributes}
    cols = [Column(spec.surrogate_key, pl.Int64(), "surrogate key; -1 Unknown, -2 Not applicable",
                   nullable=False)]
    for name in spec.natural_key:  # NULL on the reserved members only
        cols.append(replace(described[name], nullable=True))
    for name in spec.attributes:
        cols.append(described[name])
    for name in spec.system_columns:
        cols.append(Column(name, schema[name], SYSTEM_DESCRIPTIONS[name], nullable=False))
    return tuple(cols)
