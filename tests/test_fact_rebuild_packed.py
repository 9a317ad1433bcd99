"""Property tests of what a full rebuild keys its facts with: one index of the dimension's
versions, packed once and used for every batch, and the shortcut for a dimension of one version
per key. Both must give what the rules say (the oracle of tests/test_pit_properties.py) and what
keying each batch against the versions of its own keys gave.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsmith.dimensions import OPEN_END
from starsmith.facts.keys import MATCH, KeyIndex, how_names, lookup_key
from starsmith.facts.spec import KeyLookup
from tests.test_pit_properties import EPOCH, KEY_FORMS, SPEC, Version, dimensions, oracle

FACTS = st.lists(st.tuples(st.sampled_from([None, 1, 2, 3, 4, 5, 9]), st.integers(-3, 50)),
                 min_size=1, max_size=40)


@st.composite
def one_version_each(draw: Any) -> list[Version]:
    """Keys of one version each (a type-1 dimension): open, or closed by a delete."""
    rows: list[Version] = []
    for key in range(1, draw(st.integers(1, 5)) + 1):
        start = draw(st.integers(0, 40))
        end = draw(st.one_of(st.none(), st.integers(start + 1, 45)))
        rows.append((0, key, EPOCH + timedelta(hours=start),
                     OPEN_END if end is None else EPOCH + timedelta(hours=end)))
    sks = draw(st.permutations(range(1, len(rows) + 1)))
    return [(sk, *row[1:]) for sk, row in zip(sks, rows, strict=True)]


def frames(form: str, versions: list[Version], facts: list[tuple[int | None, int]]
           ) -> tuple[pl.DataFrame, pl.DataFrame]:
    as_key = KEY_FORMS[form]
    key_type = pl.String() if form == "text" else pl.Int64()
    dim = pl.DataFrame([(sk, as_key(k), a, b) for sk, k, a, b in versions],
                       schema={"k_key": pl.Int64(), "k": key_type, "valid_from": pl.Datetime("us"),
                               "valid_to": pl.Datetime("us")}, orient="row")
    frame = pl.DataFrame({"k": [None if k is None else as_key(k) for k, _ in facts],
                          "at": [EPOCH + timedelta(hours=h) for _, h in facts]},
                         schema={"k": key_type, "at": pl.Datetime("us")})
    return dim, frame


def expected(versions: list[Version], facts: list[tuple[int | None, int]]
             ) -> list[tuple[int, str]]:
    return [oracle(versions, k, EPOCH + timedelta(hours=h)) for k, h in facts]


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=one_version_each(), facts=FACTS)
def test_one_version_per_key_takes_the_shortcut_and_keeps_the_rules(
        form: str, versions: list[Version], facts: list[tuple[int | None, int]]) -> None:
    dim, frame = frames(form, versions, facts)
    lk = KeyLookup(SPEC, ("k",), "at")
    index = KeyIndex(dim.lazy(), lk)
    assert index.packed.levels[0].first is not None  # the shortcut is what is tested
    got = index.lookup(frame).facts.collect()
    assert list(zip(got["k_key"].to_list(), how_names(got[MATCH]), strict=True)) == \
        expected(versions, facts)
    assert got.select("k", "at").equals(frame)


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=dimensions(), facts=FACTS, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_one_index_keys_every_batch_as_each_batchs_own_versions_did(
        form: str, versions: list[Version], facts: list[tuple[int | None, int]],
        cuts: list[int]) -> None:
    dim, frame = frames(form, versions, facts)
    lk = KeyLookup(SPEC, ("k",), "at")
    index = KeyIndex(dim.lazy(), lk)  # packed once, whole
    role = KeyLookup(SPEC, ("other_k",), "other_at", key_name="other_key")
    bounds = sorted({0, frame.height, *(c for c in cuts if c < frame.height)})
    want = expected(versions, facts)
    for lo, hi in pairwise(bounds):
        batch = frame[lo:hi]
        mine = dim.join(batch.select("k").drop_nulls().unique(), on="k", how="semi")
        alone = lookup_key(batch.lazy(), mine.lazy(), lk).facts.collect()
        got = index.lookup(batch).facts.collect()
        assert got.equals(alone)
        assert list(zip(got["k_key"].to_list(), how_names(got[MATCH]), strict=True)) == \
            want[lo:hi]
        # another role of the same dimension: other columns, the same index
        other = index.lookup(batch.rename({"k": "other_k", "at": "other_at"}), role)
        assert other.facts.collect()["other_key"].equals(got["k_key"].alias("other_key"))


def test_a_dense_integer_key_is_addressed_once_per_index() -> None:
    """The direct-address table is built with the slots, not per batch."""
    dim = pl.DataFrame({"k_key": [1, 2, 3], "k": [10, 11, 13],
                        "valid_from": [datetime(2024, 1, 1)] * 3, "valid_to": [OPEN_END] * 3})
    index = KeyIndex(dim.lazy(), KeyLookup(SPEC, ("k",), "at"))
    assert index.packed.dense is not None
    low, table = index.packed.dense
    assert low == 10 and table.tolist() == [0, 1, -1, 2, -1]
    facts = pl.DataFrame({"k": [13, 12, None, 10, -5, 99],
                          "at": [datetime(2024, 2, 1)] * 6})
    got = index.lookup(facts).facts.collect()
    assert got["k_key"].to_list() == [3, -1, -2, 1, -1, -1]
    assert how_names(got[MATCH]) == ["exact", "missing", "not_applicable", "exact", "missing",
                                     "missing"]
