"""Every SCD behaviour of the dimension builder, on small frames."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from starsmith.dimensions import (
    OPEN_END,
    ChangeDetection,
    DeletePolicy,
    DuplicatePolicy,
    LatePolicy,
    SCDType,
    dimension_schema,
    inferred_members,
    invariant_violations,
    reserved_members,
)
from starsmith.dimensions.scd import reason_column, reject_columns
from starsmith.errors import ConfigError, DataError
from tests.scd_helpers import TYPES, batch, empty, spec, step, versions


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour)


def test_new_keys_get_sequential_surrogate_keys_and_open_versions() -> None:
    s = spec()
    dim, out = step(empty(s), batch([(2, "x", "p", "e", "f", t(1, 3), False),
                                     (1, "y", "q", "e", "f", t(1, 1), False)]), s)
    live = dim.filter(pl.col("sk") > 0).sort("id")
    assert live["sk"].to_list() == [1, 2]  # numbered in natural-key order, not arrival order
    assert live["valid_to"].to_list() == [OPEN_END, OPEN_END]
    assert live["valid_from"].to_list() == [t(1, 1), t(1, 3)]
    assert live["is_current"].all()
    assert out.stats["inserted"] == 2
    assert dim.filter(pl.col("sk") < 0)["a"].to_list() == ["Not applicable", "Unknown"]


def test_type2_change_closes_the_old_version_where_the_new_one_starts() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(1), False)]), s)
    dim, out = step(dim, batch([(1, "x2", "p", "e", "f", t(2, 5), False)]), s, run="r2")
    v = versions(dim, 1)
    assert v["a"].to_list() == ["x", "x2"]
    assert v["valid_to"][0] == v["valid_from"][1] == t(2, 5)
    assert v["is_current"].to_list() == [False, True]
    assert v["run_id"].to_list() == ["r2", "r2"]  # the closed row was rewritten by run r2
    assert (out.stats["inserted"], out.stats["closed"]) == (1, 1)


def test_a_change_to_a_long_history_writes_only_the_rows_it_changes() -> None:
    s = spec()
    dim = empty(s)
    for day, a in enumerate(["x1", "x2", "x3", "x4"], start=1):
        dim, _ = step(dim, batch([(1, a, "p", "e", "f", t(day), False)]), s, run=f"r{day}")
    dim, out = step(dim, batch([(1, "x5", "p", "e", "f", t(5), False),
                                (2, "y", "p", "e", "f", t(5), False)]), s, run="r5")
    assert out.rows.filter(pl.col("id") == 1).height == 5  # the invariants saw the whole key
    written = out.changes().sort("sk")
    assert written.select("id", "a", "run_id").rows() == [(1, "x4", "r5"), (1, "x5", "r5"),
                                                         (2, "y", "r5")]
    assert versions(dim, 1)["run_id"].to_list() == ["r2", "r3", "r4", "r5", "r5"]  # untouched
    # A type-1 change rewrites every version: each one's values change.
    dim, out = step(dim, batch([(1, "x5", "p", "e2", "f", t(6), False)]), s, run="r6")
    assert out.changes().height == 5 and versions(dim, 1)["e"].to_list() == ["e2"] * 5


def test_type1_overwrites_every_version_and_type0_keeps_the_first_value() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, "x", "p", "e1", "f1", t(1), False)]), s)
    dim, _ = step(dim, batch([(1, "x2", "p", "e1", "f2", t(2), False)]), s)
    dim, out = step(dim, batch([(1, "x2", "p", "e3", "f3", t(3), False)]), s)
    v = versions(dim, 1)
    assert v.height == 2  # the e/f changes made no version
    assert v["e"].to_list() == ["e3", "e3"]
    assert v["f"].to_list() == ["f1", "f1"]
    assert out.stats["inserted"] == 0


def test_change_detection_is_null_safe() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, None, "p", "e", "f", t(1), False)]), s)
    dim, same = step(dim, batch([(1, None, "p", "e", "f", t(2), False)]), s)
    assert same.stats["inserted"] == 0 and same.rows.height == 0  # NULL to NULL: no change
    dim, _ = step(dim, batch([(1, "x", "p", "e", "f", t(3), False)]), s)
    dim, _ = step(dim, batch([(1, None, "p", "e", "f", t(4), False)]), s)
    assert versions(dim, 1)["a"].to_list() == [None, "x", None]


def test_several_changes_of_one_key_in_one_batch_each_make_a_version_in_order() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, "a0", "p", "e", "f", t(1), False)]), s)
    dim, out = step(dim, batch([
        (1, "a3", "p", "e", "f", t(2, 9), False),  # arrives first, happened last
        (1, "a1", "p", "e", "f", t(2, 1), False),
        (1, "a2", "p", "e", "f", t(2, 5), False),
    ]), s)
    v = versions(dim, 1)
    assert v["a"].to_list() == ["a0", "a1", "a2", "a3"]
    assert v["valid_from"].to_list() == [t(1), t(2, 1), t(2, 5), t(2, 9)]
    assert v["valid_to"].to_list()[:-1] == v["valid_from"].to_list()[1:]
    assert out.stats["inserted"] == 3


def test_a_late_change_is_quarantined_with_its_reason() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(5), False)]), s)
    dim, out = step(dim, batch([(1, "old", "p", "e", "f", t(3), False)]), s)
    assert versions(dim, 1)["a"].to_list() == ["x"]
    assert out.rejects.height == 1
    assert out.rejects["reason"][0] == (
        "late change: dated 2024-01-03 00:00:00 but the dimension already has a version "
        "from 2024-01-05 00:00:00 for this key")


def test_a_late_change_can_be_versioned_at_the_batch_time_instead() -> None:
    s = spec(late_changes=LatePolicy.BATCH_TIME)
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(5), False)]), s)
    dim, out = step(dim, batch([(1, "late", "p", "e", "f", t(3), False)]), s, at=t(6))
    v = versions(dim, 1)
    assert v["a"].to_list() == ["x", "late"]
    assert v["valid_from"][1] == t(6)
    assert out.rejects.height == 0


def test_replaying_a_batch_changes_nothing() -> None:
    s = spec()
    b1 = batch([(1, "x", "p", "e", "f", t(1), False), (2, "y", "q", "e", "f", t(1, 2), False)])
    b2 = batch([(1, "x2", "p", "e", "f", t(2, 1), False), (1, "x3", "p", "e", "f", t(2, 2), False),
                (2, "y", "q", "e", "f", t(2, 3), True)])
    dim, _ = step(empty(s), b1, s)
    dim, _ = step(dim, b2, s)
    again, out = step(dim, b2, s, run="again")
    assert again.equals(dim)
    assert out.rows.height == 0 and out.rejects.height == 0
    older, out = step(dim, b1, s, run="older")  # an older day replayed after a newer one
    assert older.equals(dim) and out.rejects.height == 0


def test_conflicting_records_at_one_instant_fail_naming_the_keys() -> None:
    s = spec()
    with pytest.raises(DataError) as err:
        step(empty(s), batch([(7, "x", "p", "e", "f", t(1), False),
                              (7, "y", "p", "e", "f", t(1), False)]), s)
    assert str(err.value) == (
        "1 natural key(s) have two different records at the same instant: [id=7] "
        "(in the batch for dim_test). Fix the source, or declare "
        "duplicates=DuplicatePolicy.LATEST with a sequence")


def test_latest_duplicate_policy_keeps_the_highest_sequence_and_quarantines_the_rest() -> None:
    s = spec(duplicates=DuplicatePolicy.LATEST, sequence="seq")
    cols = ("id", "a", "b", "e", "f", "ts", "deleted", "seq")
    dim, out = step(empty(s), batch([(7, "y", "p", "e", "f", t(1), False, 2),
                                     (7, "x", "p", "e", "f", t(1), False, 1)], cols), s)
    assert versions(dim, 7)["a"].to_list() == ["y"]
    assert out.rejects["a"].to_list() == ["x"]
    assert out.rejects["reason"][0].startswith("superseded")


def test_exact_duplicate_rows_collapse_and_are_counted() -> None:
    s = spec()
    row = (1, "x", "p", "e", "f", t(1), False)
    dim, out = step(empty(s), batch([row, row, row]), s)
    assert versions(dim, 1).height == 1
    assert out.stats["exact_duplicates"] == 2


@pytest.mark.parametrize("policy", list(DeletePolicy))
def test_delete_policies_and_a_key_that_comes_back(policy: DeletePolicy) -> None:
    s = spec(deletes=policy)
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(1), False)]), s)
    dim, _ = step(dim, batch([(1, "x", "p", "e", "f", t(2), True)]), s)
    deleted = versions(dim, 1)
    dim, _ = step(dim, batch([(1, "x", "p", "e", "f", t(3), False)]), s)
    back = versions(dim, 1)
    if policy is DeletePolicy.IGNORE:
        assert deleted.height == 1 and deleted["is_current"].all()
        assert back.height == 1
        assert "is_deleted" not in dim.columns
        return
    if policy is DeletePolicy.INVALIDATE:
        assert deleted["valid_to"].to_list() == [t(2)]
        assert not deleted["is_current"].any()
        assert back["valid_from"].to_list() == [t(1), t(3)]
    else:
        assert deleted["is_deleted"].to_list() == [False, True]
        assert deleted["is_current"].to_list() == [False, True]
        assert deleted["a"].to_list() == ["x", "x"]  # the deleted version keeps the attributes
        assert back["is_deleted"].to_list() == [False, True, False]
        assert back["valid_from"].to_list() == [t(1), t(2), t(3)]
    assert back["is_current"].sum() == 1
    assert back["sk"].n_unique() == back.height
    assert invariant_violations(dim.lazy(), s).collect().height == 0


def test_snapshot_source_closes_keys_that_disappear() -> None:
    s = spec(detection=ChangeDetection.CHECK, updated_at=None, deleted_flag=None, snapshot=True,
             deletes=DeletePolicy.INVALIDATE)
    cols = ("id", "a", "b", "e", "f")
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f"), (2, "y", "p", "e", "f")], cols), s,
                  at=t(1))
    dim, out = step(dim, batch([(1, "x", "p", "e", "f")], cols), s, at=t(2))
    assert versions(dim, 2)["valid_to"].to_list() == [t(2)]
    assert versions(dim, 1)["is_current"].to_list() == [True]
    assert out.stats["closed"] == 1


def test_keys_gone_from_a_snapshot_too_late_are_each_held_back_once() -> None:
    # Keys first seen at t(2) vanish from a snapshot also taken at t(2): their delete is no later
    # than their versions, so each is held back as late, once (records of a snapshot's absent
    # keys are told apart, not matched to each other's versions).
    s = spec(detection=ChangeDetection.CHECK, updated_at=None, deleted_flag=None, snapshot=True,
             deletes=DeletePolicy.INVALIDATE)
    cols = ("id", "a", "b", "e", "f")
    rows = [(1, "x", "p", "e", "f"), (2, "y", "p", "e", "f"), (3, "z", "p", "e", "f")]
    dim, _ = step(empty(s), batch(rows, cols), s, at=t(2))
    after, out = step(dim, batch(rows[:1], cols), s, at=t(2))
    assert sorted(out.rejects["id"].to_list()) == [2, 3]
    assert out.rejects["reason"].str.starts_with("late change").all()
    assert after.equals(dim)


def test_an_inferred_member_is_completed_in_place_and_keeps_its_key() -> None:
    s = spec()
    schema = dimension_schema(s, TYPES)
    dim = empty(s)
    inferred = inferred_members(s, schema, dim.lazy(), pl.LazyFrame({"id": [5, 5, None]}),
                                max_key=0, run_id="facts").collect()
    assert inferred["sk"].to_list() == [1] and inferred["is_inferred"].all()
    dim = pl.concat([dim, inferred])
    dim, out = step(dim, batch([(5, "real", "p", "e", "f", t(2), False)]), s)
    v = versions(dim, 5)
    assert v["sk"].to_list() == [1]
    assert v["a"].to_list() == ["real"] and not v["is_inferred"].any()
    assert out.stats["inserted"] == 0


def test_reserved_members_are_never_touched() -> None:
    s = spec()
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(1), False)]), s)
    dim2, _ = step(dim, batch([(None, "z", "p", "e", "f", t(2), False)]), s)
    assert dim2.filter(pl.col("sk") < 0).equals(dim.filter(pl.col("sk") < 0))


def test_surrogate_keys_are_stable_and_never_reused() -> None:
    s = spec()
    b = batch([(3, "x", "p", "e", "f", t(1), False), (1, "y", "p", "e", "f", t(1), False)])
    first, _ = step(empty(s), b, s)
    again, _ = step(empty(s), b, s)
    assert first.equals(again)
    later, _ = step(first, batch([(2, "n", "p", "e", "f", t(2), False),
                                  (1, "y2", "p", "e", "f", t(2), False)]), s)
    assert later.filter(pl.col("id") == 3)["sk"].to_list() == [2]  # kept its key
    assert sorted(later.filter(pl.col("sk") > 2)["sk"].to_list()) == [3, 4]


def test_invariant_violations_name_each_problem() -> None:
    s = spec()
    bad = pl.DataFrame({
        "sk": [1, 2, 2, 4], "id": [1, 1, 2, 3],
        "valid_from": [t(1), t(2), t(1), t(5)], "valid_to": [t(3), OPEN_END, OPEN_END, t(4)],
        "is_current": [True, True, True, False],
    })
    found = invariant_violations(bad.lazy(), s).collect()
    presorted = invariant_violations(bad.sort("id", "valid_from").lazy(), s, presorted=True)
    assert set(presorted.collect().iter_rows()) == set(found.iter_rows())  # the builder's path
    assert set(found.iter_rows()) == {
        (1, "overlapping windows"), (1, "more than one current row"),
        (1, "is_current disagrees with valid_to"), (2, "surrogate key used twice"),
        (1, "surrogate key used twice"), (3, "inverted or empty window (valid_from >= valid_to)"),
    }


def test_bad_specs_fail_at_definition() -> None:
    with pytest.raises(ConfigError, match="timestamp change detection needs an updated_at"):
        spec(updated_at=None)
    with pytest.raises(ConfigError, match="duplicates='latest' needs a sequence"):
        spec(duplicates=DuplicatePolicy.LATEST)
    with pytest.raises(ConfigError, match="both natural key and attribute"):
        spec(columns=(("id", SCDType.VERSIONED),))


def test_attributes_named_like_the_reject_columns_do_not_clash() -> None:
    # A dimension may have attributes called reason, updated_at (not the spec's updated_at
    # column) or is_delete: the rejects frame then names its own columns with a leading "_".
    s = spec(columns=(("reason", SCDType.VERSIONED), ("updated_at", SCDType.OVERWRITE),
                      ("is_delete", SCDType.VERSIONED)))
    types = {"id": pl.Int64(), "reason": pl.String(), "updated_at": pl.String(),
             "is_delete": pl.Boolean()}
    cols = {**types, "ts": pl.Datetime("us"), "deleted": pl.Boolean()}

    def rows(*records: tuple[object, ...]) -> pl.DataFrame:
        return pl.DataFrame(list(records), schema=cols, orient="row")

    dim = reserved_members(s, dimension_schema(s, types)).collect()
    dim, _ = step(dim, rows((1, "new", "mon", False, t(1), False),
                            (2, "new", "mon", False, t(1), False)), s)
    dim, out = step(dim, rows((1, "moved", "tue", True, t(2), False),  # a change
                              (None, "x", "tue", False, t(2), False),  # NULL natural key
                              (2, "old", "tue", False, t(1), False)), s)  # late
    assert versions(dim, 1)["reason"].to_list() == ["new", "moved"]
    assert versions(dim, 1)["is_delete"].to_list() == [False, True]
    assert reject_columns(s) == ("_updated_at", "_is_delete", "_reason")
    assert reason_column(s) == "_reason"
    assert out.rejects.columns == ["id", "reason", "updated_at", "is_delete", "_updated_at",
                                   "_is_delete", "_reason"]
    rejected = out.rejects.sort("id", nulls_last=True)
    assert rejected["reason"].to_list() == ["old", "x"]  # the attribute, as sent
    assert rejected["_reason"].to_list() == [
        "late change: dated 2024-01-01 00:00:00 but the dimension already has a version from "
        "2024-01-01 00:00:00 for this key", "natural key or updated_at is NULL"]
    assert rejected["_updated_at"].to_list() == [t(1), t(2)]
    assert out.stats["rejected"] == 2
    # Without a clash the names stay; with a clash on the prefixed name too, it takes another.
    assert reject_columns(spec()) == ("updated_at", "is_delete", "reason")
    assert reason_column(spec()) == "reason"
    assert reason_column(spec(columns=(("reason", SCDType.VERSIONED),
                                       ("_reason", SCDType.VERSIONED)))) == "__reason"


def test_a_tie_on_the_highest_sequence_is_never_picked() -> None:
    # Two records of key 7 at one instant with the same sequence but different values: neither
    # is picked, both are held back, and the key keeps its state. Key 8 in the same batch is not
    # affected; key 9's exact duplicates still collapse.
    s = spec(duplicates=DuplicatePolicy.LATEST, sequence="seq")
    cols = ("id", "a", "b", "e", "f", "ts", "deleted", "seq")
    dim, _ = step(empty(s), batch([(7, "w", "p", "e", "f", t(1), False, 1),
                                   (8, "w", "p", "e", "f", t(1), False, 1)], cols), s)
    dim, out = step(dim, batch([(7, "x", "p", "e", "f", t(2), False, 5),
                                (7, "z", "p", "e", "f", t(2), False, 4),
                                (8, "v", "p", "e", "f", t(2), False, 5),
                                (9, "n", "p", "e", "f", t(2), False, 5),
                                (7, "y", "p", "e", "f", t(2), False, 5),
                                (9, "n", "p", "e", "f", t(2), False, 5)], cols), s)
    assert versions(dim, 7)["a"].to_list() == ["w"] and versions(dim, 7)["is_current"].all()
    assert versions(dim, 8)["a"].to_list() == ["w", "v"]
    assert versions(dim, 9)["a"].to_list() == ["n"]
    assert out.stats["exact_duplicates"] == 1
    rejected = {a: r for a, r in out.rejects.select("a", "reason").iter_rows()}
    tie = "tie: another record of this key has the same ts and seq with different values"
    assert rejected == {"x": tie, "y": tie, "z": "superseded: another record of this key at "
                                                  "the same instant has a higher seq"}
    # An exact copy of a tied record with a lower sequence does not break the tie.
    _, out = step(dim, batch([(7, "x", "p", "e", "f", t(3), False, 4),
                              (7, "x", "p", "e", "f", t(3), False, 5),
                              (7, "y", "p", "e", "f", t(3), False, 5)], cols), s)
    assert out.rows.height == 0 and out.rejects["reason"].str.starts_with("tie").all()
    assert sorted(out.rejects["a"].to_list()) == ["x", "y"]


def test_a_higher_sequence_still_wins_over_records_that_tie_below_it() -> None:
    s = spec(duplicates=DuplicatePolicy.LATEST, sequence="seq")
    cols = ("id", "a", "b", "e", "f", "ts", "deleted", "seq")
    dim, out = step(empty(s), batch([(7, "x", "p", "e", "f", t(1), False, 1),
                                     (7, "y", "p", "e", "f", t(1), False, 1),
                                     (7, "z", "p", "e", "f", t(1), False, 2)], cols), s)
    assert versions(dim, 7)["a"].to_list() == ["z"]
    assert sorted(out.rejects["a"].to_list()) == ["x", "y"]
    assert out.rejects["reason"].str.starts_with("superseded").all()


def test_a_snapshot_record_the_dimension_already_shows_is_not_held_back_every_day() -> None:
    # A timestamp-detected snapshot re-sends every record each day. Key 1's updated_at was
    # rewritten to an earlier time (before its latest version) with its state unchanged: it is no
    # change, not a late change to quarantine again on every batch. Key 2 changed without its
    # updated_at moving: the dimension does not show that state, so it stays held back.
    s = spec(updated_at="ts", deleted_flag=None, snapshot=True, deletes=DeletePolicy.INVALIDATE)
    cols = ("id", "a", "b", "e", "f", "ts")
    dim, _ = step(empty(s), batch([(1, "x", "p", "e", "f", t(1)),
                                   (2, "m", "p", "e", "f", t(1))], cols), s, at=t(1))
    dim, _ = step(dim, batch([(1, "y", "p", "e", "f", t(2, 6)),
                              (2, "m", "p", "e", "f", t(1))], cols), s, at=t(2))
    snapshot = batch([(1, "y", "p", "e", "f", t(2, 1)), (2, "n", "p", "e", "f", t(1))], cols)
    for day in (3, 4, 5):
        after, out = step(dim, snapshot, s, at=t(day))
        assert after.equals(dim)
        assert out.rejects["id"].to_list() == [2]
        assert out.rejects["reason"][0].startswith("late change")
        assert out.stats["replayed"] == 1
    # A type-1 difference is a change the dimension does not show: still held back.
    _, out = step(dim, batch([(1, "y", "p", "e2", "f", t(2, 1)), (2, "n", "p", "e", "f", t(1))],
                             cols), s, at=t(6))
    assert out.rejects["id"].to_list() == [1, 2] and out.rows.height == 0
    # Once key 1 is closed (gone from a snapshot), its old record is no longer its state.
    dim, _ = step(dim, batch([(2, "m", "p", "e", "f", t(1))], cols), s, at=t(7))
    _, out = step(dim, snapshot, s, at=t(8))
    assert sorted(out.rejects["id"].to_list()) == [1, 2]
