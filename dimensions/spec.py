"""What a dimension builder needs to know about a dimension: its keys and how each column changes.

The spec is small and frozen so that it can be hashed into a model fingerprint and shipped to any
worker. It says nothing about where data lives: builders are pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from starsmith.errors import ConfigError

OPEN_END = datetime(9999, 12, 31)
"""valid_to of a version that is still open: analysts filter ``valid_to = '9999-12-31'``."""

BEGINNING = datetime(1900, 1, 1)
"""valid_from of the reserved and inferred members, so that every fact time falls inside them."""

UNKNOWN_KEY = -1
NOT_APPLICABLE_KEY = -2
INFERRED_BASE = 1 << 50
"""Inferred members (keys facts saw before their dimension) are numbered after this; the
dimension's own versions below it, in the order its record history issues them."""


class SCDType(IntEnum):
    """How one attribute reacts to a change: 0 keep the first value, 1 overwrite, 2 version."""

    FIXED = 0
    OVERWRITE = 1
    VERSIONED = 2


class ChangeDetection(StrEnum):
    """How a change is recognised and dated."""

    TIMESTAMP = "timestamp"  # the source's updated_at dates each change
    CHECK = "check"  # tracked columns are compared; the batch time dates the change


class DeletePolicy(StrEnum):
    """What a hard delete in the source does to the dimension."""

    IGNORE = "ignore"  # keep the key as it was
    INVALIDATE = "invalidate"  # close the current version; no open version remains
    NEW_RECORD = "new_record"  # close it and open a version flagged is_deleted


class LatePolicy(StrEnum):
    """What happens to a change dated no later than the dimension's latest version of its key."""

    PLACE = "place"  # re-derive the key's versions with every staged record (orchestration/
    # late.py); where there is no staged history to read (the builder on its own), QUARANTINE
    QUARANTINE = "quarantine"  # hold it back with the reason; a steward decides
    BATCH_TIME = "batch_time"  # version it at the batch time instead of its own date


class DuplicatePolicy(StrEnum):
    """What happens when one key has two different records at the same instant in one batch."""

    FAIL = "fail"  # stop the step and name the keys
    LATEST = "latest"  # keep the record with the highest sequence; hold the others back


@dataclass(frozen=True)
class DimensionSpec:
    """Keys and change rules of one dimension.

    ``columns`` maps every attribute to its SCD type; a dimension without type-2 columns is an
    SCD1 dimension (one version per key, except around deletes and returns).
    """

    name: str
    surrogate_key: str
    natural_key: tuple[str, ...]
    columns: tuple[tuple[str, SCDType], ...]
    detection: ChangeDetection = ChangeDetection.CHECK
    updated_at: str | None = None
    deleted_flag: str | None = None
    snapshot: bool = False
    deletes: DeletePolicy = DeletePolicy.IGNORE
    late_changes: LatePolicy = LatePolicy.PLACE
    duplicates: DuplicatePolicy = DuplicatePolicy.FAIL
    sequence: str | None = None
    descriptions: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        where = f"dimension {self.name}"
        if not self.natural_key:
            raise ConfigError("a dimension needs a natural key", where=where)
        if self.detection is ChangeDetection.TIMESTAMP and not self.updated_at:
            raise ConfigError(
                "timestamp change detection needs an updated_at column",
                where=where,
                fix="Set updated_at=... or use detection=ChangeDetection.CHECK",
            )
        if self.duplicates is DuplicatePolicy.LATEST and not self.sequence:
            raise ConfigError(
                "duplicates='latest' needs a sequence column to tell which record is latest",
                where=where,
                fix="Set sequence=... or use DuplicatePolicy.FAIL",
            )
        clash = set(self.natural_key) & {c for c, _ in self.columns}
        if clash:
            raise ConfigError(f"columns {sorted(clash)} are both natural key and attribute",
                              where=where)

    @property
    def attributes(self) -> list[str]:
        return [c for c, _ in self.columns]

    def of_type(self, kind: SCDType) -> list[str]:
        return [c for c, t in self.columns if t is kind]

    @property
    def tracks_deletes(self) -> bool:
        return self.deletes is not DeletePolicy.IGNORE

    @property
    def system_columns(self) -> list[str]:
        """The convention columns every version carries, in table order."""
        cols = ["valid_from", "valid_to", "is_current"]
        if self.tracks_deletes:
            cols.append("is_deleted")
        return [*cols, "is_inferred", "run_id"]

    @property
    def output_columns(self) -> list[str]:
        return [self.surrogate_key, *self.natural_key, *self.attributes, *self.system_columns]
