"""Helpers the staging models share: row-level rules that send bad rows to quarantine."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from starsmith.contract import QUARANTINE_REASON


def quarantine_when(lf: pl.LazyFrame, rules: Sequence[tuple[pl.Expr, str]]) -> pl.LazyFrame:
    """Add the quarantine reason column: the first rule a row breaks, NULL when it breaks none.

    A reason may contain ``{col}`` placeholders naming columns of the row, so a steward reads
    ``unknown segment code 'XX'`` rather than a rule id.
    """
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    for condition, text in reversed(rules):
        reason = pl.when(condition.fill_null(False)).then(_text(text)).otherwise(reason)
    return lf.with_columns(reason.alias(QUARANTINE_REASON))


def _text(template: str) -> pl.Expr:
    if "{" not in template:
        return pl.lit(template)
    parts, cols = [], []
    rest = template
    while "{" in rest:
        before, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        parts.append(before)
        cols.append(pl.col(name).cast(pl.String).fill_null("NULL"))
    parts.append(rest)
    return pl.format("{}".join(p.replace("{", "{{").replace("}", "}}") for p in parts), *cols)


def not_in(col: str, allowed: Sequence[str]) -> pl.Expr:
    return pl.col(col).is_not_null() & ~pl.col(col).is_in(list(allowed))
