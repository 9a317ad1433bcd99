"""The SCD2 invariants, as a query that returns the offending keys.

Checked on every write before anything reaches the warehouse, and stated again as expectations by
the quality layer: one current row per live key, no overlapping or inverted windows, is_current
consistent with valid_to, surrogate keys unique.
"""

from __future__ import annotations

import polars as pl

from starsmith.dimensions.keyed import key_starts, key_total, same_as
from starsmith.dimensions.spec import OPEN_END, DimensionSpec


def invariant_violations(rows: pl.LazyFrame, spec: DimensionSpec, *, presorted: bool = False
                         ) -> pl.LazyFrame:
    """One row per (natural key, problem) that breaks an invariant; empty when all hold.

    ``presorted``: the rows are the builder's output, already in (natural key, valid_from) order
    and without the reserved members, so neither a sort nor a filter is needed.
    """
    nk, sk = list(spec.natural_key), spec.surrogate_key
    if not presorted:  # the builder's rows never hold the reserved members: no copy of them
        rows = rows.filter(pl.col(sk) >= 0)
    ordered = (rows if presorted else rows.sort([*nk, "valid_from"]))
    ordered = ordered.with_columns(  # a masked global shift, not a window
        _prev_to=pl.when(same_as(nk, 1)).then(pl.col("valid_to").shift(1))
    )
    many = (ordered.filter(key_starts(nk) & (key_total(pl.col("is_current"), nk) > 1))
            if presorted else
            rows.group_by(nk).agg(n=pl.col("is_current").sum()).filter(pl.col("n") > 1))
    keys = pl.col(sk).sort()
    reused = keys.filter(keys == keys.shift(1))
    checks = [
        ordered.filter(pl.col("valid_from") >= pl.col("valid_to"))
        .select(*nk, problem=pl.lit("inverted or empty window (valid_from >= valid_to)")),
        ordered.filter(pl.col("valid_from") < pl.col("_prev_to"))
        .select(*nk, problem=pl.lit("overlapping windows")),
        many.select(*nk, problem=pl.lit("more than one current row")),
        rows.filter(pl.col("is_current") != (pl.col("valid_to") == OPEN_END))
        .select(*nk, problem=pl.lit("is_current disagrees with valid_to")),
        # Sorted keys repeat as neighbours: half the time of hashing every key (is_duplicated).
        rows.filter(pl.col(sk).is_in(reused.implode()))
        .select(*nk, problem=pl.lit("surrogate key used twice")),
    ]
    return pl.concat(checks, how="vertical_relaxed").unique(maintain_order=True)
