"""Snapshot builders: periodic snapshots made complete, accumulating snapshots merged forward."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


def complete_grain(snapshot: pl.LazyFrame, expected: pl.LazyFrame, grain: Sequence[str],
                   zero: dict[str, pl.Expr]) -> pl.LazyFrame:
    """Every expected grain row present: missing pairs get an explicit zero row, flagged.

    A periodic snapshot with holes reads as "no stock" and as "no data" at once; an explicit row
    with ``is_filled = true`` tells them apart.
    """
    have = snapshot.with_columns(is_filled=pl.lit(False))
    missing = expected.join(snapshot.select(grain), on=list(grain), how="anti").with_columns(
        is_filled=pl.lit(True), **zero)
    return pl.concat([have, missing], how="diagonal_relaxed")


def accumulate(current: pl.LazyFrame, events: pl.LazyFrame, key: Sequence[str],
               milestone: str, at: str, order: Sequence[str]) -> pl.LazyFrame:
    """Merge milestone events into one row per key; a milestone never moves backwards.

    ``current`` holds one row per key with a timestamp column per milestone (``<name>_at``).
    Each milestone keeps its earliest time seen, whatever order events arrive in, so a replayed
    or late event cannot undo progress.
    """
    cols = [f"{m}_at" for m in order]
    wide = events.filter(pl.col(milestone).is_in(list(order))).group_by(list(key)).agg(
        [pl.col(at).filter(pl.col(milestone) == m).min().alias(f"{m}_at") for m in order])
    merged = pl.concat([current.select(*key, *cols), wide], how="vertical_relaxed")
    return merged.group_by(list(key)).agg([pl.col(c).min() for c in cols])
