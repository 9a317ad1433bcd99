"""The one root exception type and its families.

Every error starsmith raises says what is wrong, where, and what to do, and carries whether a
retry can help. The orchestration layer turns ``retryable=False`` into a non-retryable Temporal
failure, so bad data or bad configuration fails at once instead of being retried for hours.
"""

from __future__ import annotations


class StarsmithError(Exception):
    """Root of every error starsmith raises on purpose."""

    retryable: bool = False

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        parts = [what]
        if where:
            parts.append(f"(in {where})")
        message = " ".join(parts)
        if fix:
            message += f". {fix}"
        super().__init__(message)


class ConfigError(StarsmithError):
    """Bad configuration or a bad model definition: fix the project, then run again."""


class ModelGraphError(ConfigError):
    """The model catalogue does not form a valid graph (unknown input, cycle, duplicate name)."""


class ModelError(ConfigError):
    """A model's definition does not fit its inputs (unknown column, wrong type, bad join)."""


class ProjectMismatch(ConfigError):
    """A worker's copy of the project differs from the one the build was planned with."""


class DataError(StarsmithError):
    """The data breaks a rule (grain, SCD invariants, a blocking expectation): no retry helps."""


class InvariantViolation(DataError):
    """A dimension would be written with overlapping windows, two current rows, or reused keys."""


class SourceMissing(DataError):
    """A source has no extract for the logical date being built."""


class RetryableError(StarsmithError):
    """A transient failure (I/O, a lock held by another process, the network): a retry may help."""

    retryable = True


class WarehouseBusy(RetryableError):
    """The warehouse is locked by another writer."""


class WriteConflict(RetryableError):
    """Another step's transaction wrote what this one did (steps in flight at once): the step,
    run again, starts from what that one committed."""
