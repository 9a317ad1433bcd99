"""Fact builders on small frames: point-in-time keys and their edge cases, grain, snapshots."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from starsmith.dimensions import OPEN_END, DeletePolicy, dimension_schema, inferred_members
from starsmith.errors import DataError
from starsmith.facts.grain import check_grain, grain_violations
from starsmith.facts.keys import MATCH, apply_missing, how_names, lookup_key
from starsmith.facts.snapshots import accumulate, complete_grain
from starsmith.facts.spec import KeyLookup, MissingKey
from tests.scd_helpers import TYPES, batch, empty, spec, step


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour)


@pytest.fixture
def dim() -> pl.DataFrame:
    """Key 1: versions from day 2 and day 5. Key 2: live day 2, deleted day 4, back day 6."""
    s = spec(deletes=DeletePolicy.INVALIDATE)
    d, _ = step(empty(s), batch([(1, "v1", "p", "e", "f", t(2), False),
                                 (2, "w1", "p", "e", "f", t(2), False)]), s)
    d, _ = step(d, batch([(2, "w1", "p", "e", "f", t(4), True)]), s)
    d, _ = step(d, batch([(1, "v2", "p", "e", "f", t(5), False)]), s)
    d, _ = step(d, batch([(2, "w2", "p", "e", "f", t(6), False)]), s)
    return d


def keyed(dim: pl.DataFrame, facts: list[tuple[int | None, datetime]],
          missing: MissingKey = MissingKey.UNKNOWN) -> pl.DataFrame:
    lk = KeyLookup(spec(deletes=DeletePolicy.INVALIDATE), ("cid",), "at", missing)
    frame = pl.DataFrame({"cid": [f[0] for f in facts], "at": [f[1] for f in facts]},
                         schema={"cid": pl.Int64(), "at": pl.Datetime("us")})
    out = lookup_key(frame.lazy(), dim.lazy(), lk)
    return out.facts.collect().join(dim.select("sk", "a"), on="sk", how="left",
                                    maintain_order="left")


def test_event_at_valid_from_and_at_valid_to(dim: pl.DataFrame) -> None:
    got = keyed(dim, [(1, t(2)), (1, t(5)), (1, t(4, 23))])
    assert got["a"].to_list() == ["v1", "v2", "v1"]  # [valid_from, valid_to): valid_to is the next
    assert how_names(got[MATCH]) == ["exact", "exact", "exact"]


def test_event_before_the_first_version_takes_the_first(dim: pl.DataFrame) -> None:
    got = keyed(dim, [(1, t(1))])
    assert got["a"].to_list() == ["v1"] and how_names(got[MATCH]) == ["nearest"]


def test_while_deleted_and_after_the_return(dim: pl.DataFrame) -> None:
    got = keyed(dim, [(2, t(3)), (2, t(5)), (2, t(6)), (2, t(9))])
    assert got["a"].to_list() == ["w1", "w1", "w2", "w2"]
    assert how_names(got[MATCH]) == ["exact", "nearest", "exact", "exact"]


def test_null_key_is_not_applicable_and_unknown_key_is_unknown(dim: pl.DataFrame) -> None:
    got = keyed(dim, [(None, t(3)), (99, t(3))])
    assert got["sk"].to_list() == [-2, -1]
    assert how_names(got[MATCH]) == ["not_applicable", "missing"]


def test_an_empty_dimension_no_facts_text_keys_and_dates() -> None:
    """The lookup's edges: nothing to look in, nothing to look up, keys that are not numbers,
    event times that are dates."""
    s = spec(deletes=DeletePolicy.INVALIDATE)
    lk = KeyLookup(s, ("cid",), "at")
    versions = pl.DataFrame({"sk": [5], "id": [1], "valid_from": [t(2)], "valid_to": [OPEN_END]})
    facts = pl.DataFrame({"cid": [1, None], "at": [t(3), t(3)]})
    got = lookup_key(facts.lazy(), versions.clear().lazy(), lk).facts.collect()
    assert got["sk"].to_list() == [-1, -2] and how_names(got[MATCH]) == ["missing", "not_applicable"]
    assert lookup_key(facts.clear().lazy(), versions.lazy(), lk).facts.collect().height == 0
    text = versions.with_columns(id=pl.lit("c-1"))
    dated = pl.DataFrame({"cid": ["c-1", "c-2"], "at": [date(2024, 1, 3), date(2024, 1, 1)]})
    got = lookup_key(dated.lazy(), text.lazy(), lk).facts.collect()
    assert got["sk"].to_list() == [5, -1] and how_names(got[MATCH]) == ["exact", "missing"]


def test_a_type2_change_after_the_event_does_not_move_old_facts(dim: pl.DataFrame) -> None:
    before = keyed(dim, [(1, t(3))])["sk"][0]
    s = spec(deletes=DeletePolicy.INVALIDATE)
    later, _ = step(dim, batch([(1, "v3", "p", "e", "f", t(8), False)]), s)
    assert keyed(later, [(1, t(3))])["sk"][0] == before


def test_missing_policies_inferred_and_quarantine(dim: pl.DataFrame) -> None:
    s = spec(deletes=DeletePolicy.INVALIDATE)
    lk = KeyLookup(s, ("cid",), "at", MissingKey.INFERRED)
    facts = pl.LazyFrame({"cid": [99, 99, 1], "at": [t(3), t(4), t(3)]},
                         schema={"cid": pl.Int64(), "at": pl.Datetime("us")})
    out = lookup_key(facts, dim.lazy(), lk)
    new = inferred_members(s, dimension_schema(s, TYPES), dim.lazy(),
                           out.missing_keys, max_key=int(dim["sk"].max()), run_id="r").collect()
    keep, held = apply_missing(out.facts, lk, new.lazy())
    keep_df = keep.collect()
    assert keep_df["sk"].to_list()[:2] == [int(dim["sk"].max()) + 1] * 2
    assert how_names(keep_df[MATCH]) == ["inferred", "inferred", "exact"]
    assert held.collect().height == 0
    # the next day the real row arrives: the inferred member is completed, the key is kept
    completed, _ = step(pl.concat([dim, new]), batch([(99, "real", "p", "e", "f", t(5), False)]), s)
    row = completed.filter(pl.col("id") == 99)
    assert row["sk"].to_list() == [keep_df["sk"][0]] and row["a"].to_list() == ["real"]
    assert not row["is_inferred"].any() and row["valid_to"].to_list() == [OPEN_END]

    q = KeyLookup(s, ("cid",), "at", MissingKey.QUARANTINE)
    kept, held = apply_missing(lookup_key(facts, dim.lazy(), q).facts, q, None)
    assert kept.collect().height == 1
    assert held.collect()["reason"].to_list() == ["cid 99 not found in dim_test"] * 2


def test_grain_violations_are_named() -> None:
    facts = pl.LazyFrame({"order_id": [1, 1, 2], "line_no": [1, 1, 1]})
    bad = grain_violations(facts, ("order_id", "line_no")).collect()
    with pytest.raises(DataError) as err:
        check_grain(bad, ("order_id", "line_no"), "fact_sales")
    assert str(err.value) == ("the grain (order_id, line_no) is not unique: order_id=1, "
                              "line_no=1 (2 rows) (in fact_sales). Nothing was published; "
                              "deduplicate the source or fix the grain declared in the model")


def test_periodic_snapshot_is_completed_with_flagged_zero_rows() -> None:
    levels = pl.LazyFrame({"d": [date(2024, 1, 1)], "p": [1], "s": [1], "on_hand": [5]})
    expected = pl.LazyFrame({"d": [date(2024, 1, 1)] * 2, "p": [1, 2], "s": [1, 1]})
    out = complete_grain(levels, expected, ("d", "p", "s"), {"on_hand": pl.lit(0)}).collect()
    assert out.sort("p").select("p", "on_hand", "is_filled").rows() == [(1, 5, False),
                                                                        (2, 0, True)]


def test_accumulating_snapshot_across_three_days_out_of_order() -> None:
    order = ("ordered", "paid", "shipped", "delivered")
    empty_row = pl.LazyFrame(schema={"order_id": pl.Int64(), **{f"{m}_at": pl.Datetime("us")
                                                                 for m in order}})
    days = [
        [(1, "shipped", t(3)), (1, "ordered", t(1))],  # day 1: shipped lands before paid
        [(1, "delivered", t(5)), (1, "shipped", t(4))],  # a later duplicate of shipped
        [(1, "paid", t(2))],  # day 3: the late paid event
    ]
    current = empty_row
    for events in days:
        ev = pl.LazyFrame(events, schema={"order_id": pl.Int64(), "milestone": pl.String(),
                                          "at": pl.Datetime("us")}, orient="row")
        current = accumulate(current, ev, ("order_id",), "milestone", "at", order)
    row = current.collect().row(0, named=True)
    assert [row[f"{m}_at"] for m in order] == [t(1), t(2), t(3), t(5)]
