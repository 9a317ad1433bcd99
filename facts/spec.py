"""What a fact builder needs to know: grain, type, event date, lookback, and its key lookups."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from starsmith.dimensions.spec import DimensionSpec
from starsmith.errors import ConfigError


class FactType(StrEnum):
    TRANSACTION = "transaction"  # one row per event; measures additive
    PERIODIC_SNAPSHOT = "periodic_snapshot"  # one row per grain per period; levels semi-additive
    ACCUMULATING_SNAPSHOT = "accumulating_snapshot"  # one row per process, updated as it moves


class MissingKey(StrEnum):
    """What a fact row gets when its natural key is not in the dimension at all."""

    UNKNOWN = "unknown"  # the -1 "Unknown" member
    INFERRED = "inferred"  # a new inferred member, completed when the real row arrives
    QUARANTINE = "quarantine"  # hold the fact row back with the reason


class Additivity(StrEnum):
    ADDITIVE = "additive"  # sums over every dimension
    SEMI_ADDITIVE = "semi_additive"  # sums over every dimension but time (levels, balances)
    NON_ADDITIVE = "non_additive"  # ratios, lags: never summed


@dataclass(frozen=True)
class KeyLookup:
    """Replace a natural key in the facts by the surrogate key valid at the event time."""

    dimension: DimensionSpec
    fact_columns: tuple[str, ...]  # the fact's natural key columns, in the dimension's order
    event_time: str  # the fact column whose time picks the version
    missing: MissingKey = MissingKey.UNKNOWN
    key_name: str = ""  # the surrogate key column in the fact; default: the dimension's

    def __post_init__(self) -> None:
        if len(self.fact_columns) != len(self.dimension.natural_key):
            raise ConfigError(
                f"lookup into {self.dimension.name} names {len(self.fact_columns)} fact column(s)"
                f" for a natural key of {len(self.dimension.natural_key)}")

    @property
    def output(self) -> str:
        return self.key_name or self.dimension.surrogate_key


@dataclass(frozen=True)
class FactSpec:
    name: str
    fact_type: FactType
    grain: tuple[str, ...]
    event_date: str  # the partition column: facts are partitioned by event date
    lookups: tuple[KeyLookup, ...] = ()
    lookback_days: int = 7  # each run also rebuilds this many recent partitions
    # partitions built at once (a full rebuild's memory is one batch's); None: about 500k event
    # rows a batch when a full rebuild has counted them, else 31 (orchestration/budget.py)
    batch_days: int | None = None
    measures: tuple[tuple[str, Additivity], ...] = field(default=())
    event_input: str = ""  # the input whose rows carry event_date; default: the first input

    def __post_init__(self) -> None:
        if not self.grain:
            raise ConfigError("a fact needs a declared grain", where=f"fact {self.name}")
        inferred = [lk.dimension.name for lk in self.lookups if lk.missing is MissingKey.INFERRED]
        if len(set(inferred)) != len(inferred):
            raise ConfigError("two lookups add inferred members to one dimension",
                              where=f"fact {self.name}")
