"""Property tests: random sequences of batches keep the SCD2 invariants and match an oracle.

Each example is a random history of inserts, changes (NULLs included), deletes and returns over a
few keys, with several changes per key per batch and arrival order shuffled within a batch. After
every batch the invariants must hold; at the end each key's versions must be exactly what a
straightforward replay of its events says, whichever way the events were cut into batches.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsmith.dimensions import OPEN_END, DeletePolicy, invariant_violations
from tests.scd_helpers import batch, empty, spec, step

EPOCH = datetime(2024, 1, 1)

event = st.tuples(
    st.integers(1, 4),  # key
    st.sampled_from([None, "p", "q"]),  # a (type 2)
    st.sampled_from([None, "u"]),  # b (type 2)
    st.sampled_from(["e1", "e2"]),  # e (type 1)
    st.sampled_from(["f1", "f2"]),  # f (type 0)
    st.sampled_from([False, False, False, True]),  # deleted (a quarter of events)
)


@st.composite
def histories(draw: Any) -> tuple[list[tuple[Any, ...]], list[int], list[list[int]]]:
    events = draw(st.lists(event, min_size=1, max_size=30))
    stamped = [(*e[:5], EPOCH + timedelta(hours=i + 1), e[5]) for i, e in enumerate(events)]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stamped) - 1)), max_size=5)))
    bounds = [0, *cuts, len(stamped)]
    orders = [draw(st.permutations(range(bounds[i], bounds[i + 1])))
              for i in range(len(bounds) - 1)]
    return stamped, bounds, [list(o) for o in orders]


def expected_versions(events: list[tuple[Any, ...]], key: int) -> list[tuple[Any, ...]]:
    """The versions a key should have: a new one each time its (deleted, a, b) state changes."""
    out: list[tuple[Any, ...]] = []
    state: tuple[Any, ...] | None = None
    for k, a, b, _e, _f, ts, dead in events:
        if k != key:
            continue
        new = (True, None, None) if dead else (False, a, b)
        if state is None and dead:
            continue  # deleting a key never seen: nothing to record
        if new != state:
            carried = (state[1], state[2]) if dead and state else (a, b)
            out.append((ts, dead, *carried))
            state = new
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_random_batches_keep_invariants_and_match_the_oracle(
        history: tuple[list[tuple[Any, ...]], list[int], list[list[int]]]) -> None:
    events, _bounds, orders = history
    s = spec(deletes=DeletePolicy.NEW_RECORD)
    dim = empty(s)
    for i, order in enumerate(orders):
        dim, out = step(dim, batch([events[j] for j in order]), s, run=f"r{i}",
                        narrowed=i % 2 == 1)  # both ways the builder is handed the dimension
        assert out.rejects.height == 0
        assert invariant_violations(dim.lazy(), s).collect().height == 0
        assert dim["sk"].n_unique() == dim.height

    one_batch, _ = step(empty(s), batch(events), s, run="r0")
    comparable = [c for c in dim.columns if c not in ("sk", "run_id")]
    assert dim.select(comparable).sort("id", "valid_from", nulls_last=True).equals(
        one_batch.select(comparable).sort("id", "valid_from", nulls_last=True))

    for key in {e[0] for e in events}:
        got = dim.filter(pl.col("id") == key).sort("valid_from")
        want = expected_versions(events, key)
        assert list(got.select("valid_from", "is_deleted", "a", "b").iter_rows()) == want
        if want:
            assert got["valid_to"].to_list() == [*got["valid_from"].to_list()[1:], OPEN_END]
            live = [e for e in events if e[0] == key and not e[6]]
            assert set(got["e"].to_list()) == {live[-1][3]}  # type 1: the latest value
            assert set(got["f"].to_list()) == {live[0][4]}  # type 0: the first value
