"""What a model's build hands to the publish: rows to stage and how to publish them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import polars as pl
from sqlglot import exp

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
