"""Dimension builders: pure functions over Polars LazyFrames (no I/O, no engine imports)."""

from dimensions.invariants import invariant_violations
from dimensions.members import dimension_schema, inferred_members, reserved_members
from dimensions.scd import SCDFrames, SCDResult, scd_changes
from dimensions.spec import (
    BEGINNING,
    NOT_APPLICABLE_KEY,
    OPEN_END,
    UNKNOWN_KEY,
    ChangeDetection,
    DeletePolicy,
    DimensionSpec,
    DuplicatePolicy,
    LatePolicy,
    SCDType,
)

__all__ = [
    "BEGINNING", "NOT_APPLICABLE_KEY", "OPEN_END", "UNKNOWN_KEY", "ChangeDetection",
    "DeletePolicy", "DimensionSpec", "DuplicatePolicy", "LatePolicy", "SCDFrames", "SCDResult",
    "SCDType", "dimension_schema", "inferred_members", "invariant_violations", "reserved_members",
    "scd_changes",
]
