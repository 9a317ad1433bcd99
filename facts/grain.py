"""The grain check: a fact table has exactly one row per declared grain, or the step fails."""

from __future__ import annotations

import polars as pl

from starsmith.errors import DataError


def grain_violations(facts: pl.LazyFrame, grain: tuple[str, ...]) -> pl.LazyFrame:
    """Every grain value that occurs more than once, with how many times."""
    return facts.group_by(list(grain)).agg(rows=pl.len()).filter(pl.col("rows") > 1).sort(
        list(grain))


def check_grain(violations: pl.DataFrame, grain: tuple[str, ...], table: str) -> None:
    if not violations.height:
        return
    shown = "; ".join(", ".join(f"{c}={r[c]!r}" for c in grain) + f" ({r['rows']} rows)"
                      for r in violations.head(10).iter_rows(named=True))
    more = f" and {violations.height - 10} more" if violations.height > 10 else ""
    raise DataError(f"the grain ({', '.join(grain)}) is not unique: {shown}{more}",
                    where=table, fix="Nothing was published; deduplicate the source or fix the "
                    "grain declared in the model")
