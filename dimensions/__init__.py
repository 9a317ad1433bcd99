"""Dimension builders: pure functions over Polars LazyFrames (no I/O, no engine imports)."""

from starsmith.dimensions.invariants import invariant_violations
from starsmith.dimensions.members import dimension_schema, inferred_members, reserved_members
from starsmith.dimensions.scd import SCDFrames, SCDResult, scd_changes
from starsmith.dimensions.spec import (
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
