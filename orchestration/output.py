"""What a model's build hands to the publish: rows to stage and how to publish them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import polars as pl
from sqlglot import exp

from models.contract import QUARANTINE_REASON, Model
from starsmith.errors import DataError

Statements = Callable[[str, str], list[exp.Expr]]
"""(target table, staged table) -> the strategy's statements for one atomic publish."""


@dataclass
class StepOutput:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    statements: Statements
    rows_read: int
    counts: dict[str, int] = field(default_factory=dict)
    days: list[date] = field(default_factory=list)
    also_staged: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # dimension -> its staged new members
    parts: list[str] = field(default_factory=list)  # rows already staged batch by batch
    rows_written: int = 0  # set when the rows were staged in parts
    quarantine_scope: tuple[str, list[date]] | None = None  # default: the logical date


def conform(frame: pl.DataFrame, model: Model) -> pl.DataFrame:
    """The declared columns, in order, with the declared types: the model's output contract."""
    missing = [c for c in model.schema.names() if c not in frame.columns]
    if missing:
        raise DataError(f"the transform of {model.name} did not produce column(s) {missing}",
                        where=f"models/{model.name}.py",
                        fix="Produce every declared column, or remove it from the spec")
    return frame.select(pl.col(c).cast(t) for c, t in model.schema.items())


def split_quarantine(frame: pl.DataFrame, model: Model) -> tuple[pl.DataFrame, pl.DataFrame]:
    if QUARANTINE_REASON not in frame.columns:
        return frame, pl.DataFrame({"reason": []}, schema={"reason": pl.String()})
    bad = frame.filter(pl.col(QUARANTINE_REASON).is_not_null())
    good = frame.filter(pl.col(QUARANTINE_REASON).is_null()).drop(QUARANTINE_REASON)
    return good, bad.rename({QUARANTINE_REASON: "reason"})
