"""The grain check: a fact table has exactly one row per declared grain, or the step fails.

Before a transaction fact's transform runs, its event rows are checked at the grain too: a row
sent twice with every value equal is harmless and kept once, but rows sharing a grain with
different values cannot both be right, and a transform keeping one of them (``unique(...,
keep="last")``) would publish a guess and satisfy the grain check. Every such row is held back
in the quarantine instead, with the reason, and none of them is published.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from starsmith.errors import DataError

_ROW = "__starsmith_row"
_VERSIONS = "__starsmith_versions"


def key_hashes(rows: pl.DataFrame, key: Sequence[str]) -> pl.Series:
    """Each row's key as one 64-bit hash. Equal keys (NULLs included) hash equal, so as many
    distinct hashes as rows proves the key unique without grouping the rows (a 6M-row fact: 0.13 s
    against 0.2-0.5 s for a group by); fewer may be a collision, which an exact check settles.
    Hashes are comparable within one process and one set of column types only."""
    return rows.select(pl.struct(list(key)).hash(seed=0)).to_series()


def surely_unique(hashes: pl.Series) -> bool:
    """True when the hashed keys are unique for certain; False when a key may repeat.

    Sorted in NumPy, then neighbours compared: 3 ms of one core for 500k hashes, against 15 ms
    of two for Polars' ``n_unique`` (a parallel sort); a 6M-row rebuild asks this twice a batch
    and once over all its rows."""
    ordered = np.sort(hashes.to_numpy())
    return not bool((ordered[1:] == ordered[:-1]).any())


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


def split_grain_conflicts(rows: pl.DataFrame, grain: Sequence[str], ignore: Sequence[str] = ()
                          ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows at most one per grain, and the rows held back because their grain is in conflict.

    Exact duplicates (equal in every column but those in ``ignore``, e.g. the landing day of a
    line sent again on a later day) collapse to one row: the one landed last by ``ignore``, in
    the rows' order. Two or more different rows sharing a grain are all held back, each with a
    ``reason`` naming the grain and how many different rows share it. The kept rows keep their
    order; the held rows come with the columns of ``rows`` plus ``reason``.
    """
    grain = list(grain)
    if surely_unique(key_hashes(rows, grain)):
        return rows, rows.clear().with_columns(reason=pl.lit("", dtype=pl.String()))
    values = [c for c in rows.columns if c not in ignore]
    numbered = rows.with_row_index(_ROW)
    last = numbered.sort([*(c for c in ignore if c in rows.columns), _ROW], nulls_last=False)
    distinct = last.unique(subset=values, keep="last").sort(_ROW)
    marked = distinct.with_columns(pl.len().over(grain).alias(_VERSIONS))
    conflict = pl.col(_VERSIONS) > 1
    kept = marked.filter(~conflict).drop(_ROW, _VERSIONS)
    named: list[pl.Expr] = []
    for i, c in enumerate(grain):
        named += [pl.lit(f"{', ' if i else ''}{c}="), pl.col(c).cast(pl.String).fill_null("NULL")]
    reason = pl.concat_str([pl.lit("duplicate grain ("), *named, pl.lit("): "),
                            pl.col(_VERSIONS).cast(pl.String),
                            pl.lit(" rows with different values")])
    held = marked.filter(conflict).with_columns(reason=reason).drop(_ROW, _VERSIONS)
    return kept, held
