"""The per-key expressions the SCD builder is made of, on frames sorted by key.

Each is checked against the same answer computed the plain way (a group-by), including keys whose
values are NULL, where a forward or backward fill would leak another key's value.
"""

from __future__ import annotations

import polars as pl

from starsmith.dimensions.keyed import at_key_end, at_key_start, key_total, last_in_key

ROWS = pl.DataFrame({
    "k": [1, 1, 1, 2, 3, 3, 4, 4],
    "v": ["a", None, "c", "d", None, "f", "g", None],
    "flag": [True, False, False, False, False, True, False, False],
})


def test_values_at_each_keys_first_and_last_row_reach_every_row_of_the_key() -> None:
    out = ROWS.select(first=at_key_start(pl.col("v"), ["k"]), last=at_key_end(pl.col("v"), ["k"]))
    assert out["first"].to_list() == ["a", "a", "a", "d", None, None, "g", "g"]
    assert out["last"].to_list() == ["c", "c", "c", "d", "f", "f", None, None]


def test_the_position_of_each_keys_last_flagged_row_is_null_where_none_is_flagged() -> None:
    out = ROWS.select(at=last_in_key(pl.col("flag"), ["k"]), n=key_total(pl.col("flag"), ["k"]))
    assert out["at"].to_list() == [0, 0, 0, None, 5, 5, None, None]
    assert out["n"].to_list() == [1, 1, 1, 0, 1, 1, 0, 0]
    expected = ROWS.with_row_index("i").group_by("k", maintain_order=True).agg(
        pl.col("i").filter(pl.col("flag")).last())
    by_key = ROWS.with_columns(at=out["at"]).group_by("k", maintain_order=True).agg(
        pl.col("at").first())
    assert by_key["at"].to_list() == expected["i"].to_list()
