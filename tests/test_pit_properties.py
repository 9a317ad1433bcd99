"""Property test: the point-in-time lookup agrees with a plain reading of its rules.

Random dimensions mix every shape the packed one-join path and the general range pass split
between them: keys with more versions than the slots hold, gaps after invalidating deletes, a
closed last version, surrogate keys out of time order (so the tie rule across a gap shows). Facts
fall on version boundaries, inside gaps, before the first version, after the last, on unknown keys
and on NULL keys. The oracle is the docstring of facts/keys.py, written out row by row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsmith.dimensions import OPEN_END, ChangeDetection, DimensionSpec
from starsmith.facts.keys import MATCH, how_names, lookup_key
from starsmith.facts.packed import MAX_LEVELS, SLOTS
from starsmith.facts.spec import KeyLookup

EPOCH = datetime(2024, 1, 1)
SPEC = DimensionSpec(name="dim_k", surrogate_key="k_key", natural_key=("k",), columns=(),
                     detection=ChangeDetection.CHECK)

Version = tuple[int, int, datetime, datetime]  # (sk, natural key, valid_from, valid_to)


@st.composite
def dimensions(draw: Any) -> list[Version]:
    rows: list[tuple[int, datetime, datetime]] = []
    for key in range(1, draw(st.integers(1, 5)) + 1):
        n = draw(st.integers(1, SLOTS + 3))
        starts = sorted(draw(st.sets(st.integers(0, 40), min_size=n, max_size=n)))
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            if draw(st.integers(0, 4)) == 0:  # an invalidating delete: a gap, or a closed end
                end = draw(st.integers(start + 1, end if end is not None else 45))
            rows.append((key, EPOCH + timedelta(hours=start),
                         OPEN_END if end is None else EPOCH + timedelta(hours=end)))
    sks = draw(st.permutations(range(1, len(rows) + 1)))  # keys issued in any order
    return [(sk, *row) for sk, row in zip(sks, rows, strict=True)]


def oracle(versions: list[Version], key: int | None, at: datetime) -> tuple[int, str]:
    if key is None:
        return -2, "not_applicable"
    mine = [v for v in versions if v[1] == key]
    if not mine:
        return -1, "missing"
    for sk, _, start, end in mine:
        if start <= at < end:
            return sk, "exact"
    gap = min(mine, key=lambda v: (v[2] - at if at < v[2] else at - v[3], v[0]))
    return gap[0], "nearest"


# Natural keys as small integers (found by direct addressing), as integers spread far apart and
# as strings (both found by a hash join).
KEY_FORMS = {"dense": lambda k: k, "sparse": lambda k: k * 10**12, "text": lambda k: f"c-{k}"}


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=dimensions(), facts=st.lists(st.tuples(st.sampled_from([None, 1, 2, 3, 4, 5, 9]),
                                                       st.integers(-3, 50)),
                                             min_size=1, max_size=40))
def test_lookup_matches_the_rules(form: str, versions: list[Version],
                                  facts: list[tuple[int | None, int]]) -> None:
    as_key = KEY_FORMS[form]
    dim = pl.DataFrame([(sk, as_key(k), a, b) for sk, k, a, b in versions],
                       schema={"k_key": pl.Int64(), "k": pl.String() if form == "text" else pl.Int64(),
                               "valid_from": pl.Datetime("us"), "valid_to": pl.Datetime("us")},
                       orient="row")
    dim = dim.with_columns(is_current=pl.col("valid_to") == OPEN_END)
    times = [EPOCH + timedelta(hours=h) for _, h in facts]
    frame = pl.DataFrame({"k": [None if k is None else as_key(k) for k, _ in facts], "at": times},
                         schema={"k": dim.schema["k"], "at": pl.Datetime("us")})
    got = lookup_key(frame.lazy(), dim.lazy(), KeyLookup(SPEC, ("k",), "at")).facts.collect()
    want = [oracle(versions, k, at) for (k, _), at in zip(facts, times, strict=True)]
    assert list(zip(got["k_key"].to_list(), how_names(got[MATCH]), strict=True)) == want
    assert got.select("k", "at").equals(frame)  # the facts keep their rows and order


def test_a_history_longer_than_every_level_still_finds_each_version() -> None:
    n = SLOTS * MAX_LEVELS + 5
    starts = [EPOCH + timedelta(hours=h) for h in range(n)]
    versions = [(1000 - i, 7, start, starts[i + 1] if i + 1 < n else OPEN_END)
                for i, start in enumerate(starts)]
    assert [oracle(versions, 7, at) for at in starts] == [(1000 - i, "exact") for i in range(n)]
    dim = pl.DataFrame(versions, schema=["k_key", "k", "valid_from", "valid_to"], orient="row")
    frame = pl.DataFrame({"k": [7] * n, "at": starts})
    got = lookup_key(frame.lazy(), dim.lazy(), KeyLookup(SPEC, ("k",), "at")).facts.collect()
    assert got["k_key"].to_list() == [1000 - i for i in range(n)]
    assert set(how_names(got[MATCH])) == {"exact"}
