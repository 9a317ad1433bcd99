"""Expressions over frames sorted by natural key, where a key's rows are contiguous.

In that order "the previous row of the same key" is a global shift masked where the key changes,
and "a key's total of a flag" is a running sum read at the key's last row less the one before
its first. Both replace windows (``over``) and group-bys, which hash every key: per-group work
costs ~10 us a key, and dominated a nightly batch of 200k keys.
"""

from __future__ import annotations

import polars as pl


def same_as(cols: list[str], offset: int) -> pl.Expr:
    """True where the row ``offset`` rows away holds the same values in ``cols`` (NULL-safe;
    False where there is no such row)."""
    return pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(offset)) for c in cols]
                             ).fill_null(False)


def key_starts(nk: list[str]) -> pl.Expr:
    """True on the first row of each key."""
    return ~same_as(nk, 1)


def key_ends(nk: list[str]) -> pl.Expr:
    """True on the last row of each key."""
    return ~same_as(nk, -1)


def key_total(flag: pl.Expr, nk: list[str]) -> pl.Expr:
    """On every row, how many rows of its key have ``flag`` set."""
    one = flag.cast(pl.UInt32)
    seen = one.cum_sum()
    upto = pl.when(key_ends(nk)).then(seen).backward_fill()
    before = pl.when(key_starts(nk)).then(seen - one).forward_fill()
    return upto - before


def _row_number() -> pl.Expr:
    return pl.int_range(pl.len(), dtype=pl.get_index_type())  # what gather takes as is


def _first_row(nk: list[str]) -> pl.Expr:
    """On every row, the position of its key's first row."""
    return pl.when(key_starts(nk)).then(_row_number()).forward_fill()


def at_key_end(expr: pl.Expr, nk: list[str]) -> pl.Expr:
    """On every row, ``expr``'s value on its key's last row (a gather, not a window)."""
    return expr.gather(pl.when(key_ends(nk)).then(_row_number()).backward_fill())


def at_key_start(expr: pl.Expr, nk: list[str]) -> pl.Expr:
    """On every row, ``expr``'s value on its key's first row."""
    return expr.gather(_first_row(nk))


def last_in_key(flag: pl.Expr, nk: list[str]) -> pl.Expr:
    """On every row, the position of its key's last row where ``flag`` holds; NULL if none."""
    upto = pl.when(flag).then(_row_number()).forward_fill()
    return at_key_end(pl.when(upto >= _first_row(nk)).then(upto), nk)
