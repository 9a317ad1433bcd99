"""Packed versions: each key's latest versions in fixed slots, probed fact by fact.

The as-of join's cost is memory traffic: an equi-join then a range filter makes a candidate row
per fact and version (~3x the facts, materialised). Here each key has a row number; slot i of
every key is one contiguous array of version starts, and a fact's version is the count of its
key's starts at or before its time: a few gathers from arrays of one value per key, and a few
comparisons, in fact order. Facts are probed in chunks, so the temporaries stay small whatever the
batch. (One row per key holding every slot, gathered whole, measured ~2x slower: numpy copies
rows far more slowly than single values.)

A key is packed when its latest versions follow one another without gaps and the last is open;
then the version at T, for T at or after its first slot, is the last one starting at or before T.
Every other fact (older than the slots, before the key's first version, NULL time, a key not
packed or not in the dimension) goes to the general range pass in facts/keys.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from starsmith.dimensions.keyed import key_starts
from starsmith.dimensions.spec import OPEN_END

SLOTS = 4  # latest versions per key held in slots (measured: benchmarks/pit_lookup.py)
EXACT, NEAREST, NOT_APPLICABLE, MISSING, INFERRED, TODO = 0, 1, 2, 3, 4, 255
NEVER = np.iinfo(np.int64).max  # the start of an empty slot: no event reaches it
NULL_TIME = np.iinfo(np.int64).min  # a NULL event time: before every slot, so the range pass
MAX_LEVELS = 8  # keys with more than SLOTS x MAX_LEVELS versions: older facts take the range pass
CHUNK = 1 << 18  # facts probed at once: temporaries stay in cache (1M measured ~1.5x slower)
DENSE = 8  # integer keys spanning up to DENSE x their count are found by direct addressing
OPEN_US = int(pl.Series([OPEN_END]).dt.epoch("us")[0])


@dataclass(frozen=True)
class Level:
    """Slots of one depth: level 0 holds each key's latest SLOTS versions, level 1 the SLOTS
    before those, and so on. The last key row (-1) is a sentinel for keys not packed."""

    starts: np.ndarray  # (SLOTS, keys + 1) int64: version starts in microseconds, NEVER if empty
    sks: np.ndarray  # ((keys + 1) * SLOTS) int64: surrogate key of slot i of key g at g*SLOTS+i
    # (keys + 1) int64: slot 0's surrogate keys, when no key of the level uses another slot (a
    # dimension of one version per key): a fact is then one start and one key away
    first: np.ndarray | None = None


@dataclass(frozen=True)
class Packed:
    keys: pl.DataFrame  # the natural key columns, one row per key
    levels: list[Level]
    versions: pl.DataFrame  # every version, for the facts the range pass answers
    # one integer key column over a dense range: (its lowest value, each value's key row from
    # there, -1 where none and in the last entry); built once, with the slots
    dense: tuple[int, np.ndarray] | None = None


def _numbers(series: pl.Series, null: int) -> np.ndarray:
    """An integer column as numpy, NULL as ``null`` (zero-copy when there is no NULL)."""
    values: np.ndarray = (series.fill_null(null) if series.null_count() else series).to_numpy()
    return values


def _micros(frame: pl.DataFrame, col: str) -> np.ndarray:
    return frame[col].cast(pl.Datetime("us")).to_physical().to_numpy()


def pack(versions: pl.DataFrame, nk: Sequence[str], sk: str) -> Packed:
    """Pack versions (surrogate key, natural key, valid_from, valid_to) by natural key.

    A level's slots answer a key's facts from its first slot on when every version from there
    to the latest follows the one before without a gap and the latest is open; otherwise its
    first slot starts NEVER and the facts move on (deeper levels, then the range pass). Levels
    stop at MAX_LEVELS: keys with longer histories send their oldest facts to the range pass.
    """
    v = versions.sort([*nk, "valid_from"])
    n = v.height
    first = v.select(key_starts(list(nk)))[:, 0].to_numpy() if n else np.zeros(0, bool)
    begin = np.flatnonzero(first)
    end = np.r_[begin[1:], n].astype(np.int64) if n else np.zeros(0, np.int64)
    vf, vt, keys = _micros(v, "valid_from"), _micros(v, "valid_to"), v[sk].to_numpy()
    last = np.zeros(n, bool)
    last[end - 1] = True
    tiles = np.where(last, vt == OPEN_US, vt == np.r_[vf[1:], NEVER])
    gaps = np.r_[0, np.cumsum(~tiles)]
    k = len(begin)
    depth = min(-(-int((end - begin).max()) // SLOTS), MAX_LEVELS) if k else 0
    # Each version's level (0: among its key's latest SLOTS) and slot (windows are filled from
    # their oldest version), scattered into every level at once.
    key_of = np.cumsum(first) - 1
    row = np.arange(n)
    level = (end[key_of] - 1 - row) // SLOTS
    kept = level < depth
    lo = np.maximum(begin[key_of], end[key_of] - (level + 1) * SLOTS)
    level, slot, key_of = level[kept], (row - lo)[kept], key_of[kept]
    starts = np.full((depth, SLOTS, k + 1), NEVER, np.int64)
    starts.ravel()[(level * SLOTS + slot) * (k + 1) + key_of] = vf[kept]
    sks = np.zeros((depth, k + 1, SLOTS), np.int64)
    sks.ravel()[(level * (k + 1) + key_of) * SLOTS + slot] = keys[kept]
    levels = []
    for d in range(depth):
        hi = end - d * SLOTS
        window = np.maximum(begin, hi - SLOTS)
        packed = (hi > begin) & (gaps[end] == gaps[np.minimum(window, end)])
        starts[d, 0, :k][~packed] = NEVER
        single = bool((starts[d, 1:] == NEVER).all())
        levels.append(Level(starts[d], sks[d].ravel(),
                            np.ascontiguousarray(sks[d, :, 0]) if single else None))
    keyed = v[begin].select(nk)
    return Packed(keyed, levels, v, _dense(keyed))


def _dense(keys: pl.DataFrame) -> tuple[int, np.ndarray] | None:
    """The direct-address table of one integer key column spanning up to DENSE x its count;
    None for any other key (facts find theirs by a hash join)."""
    cols = keys.columns
    if len(cols) != 1 or not keys.height:
        return None
    dtype = keys[cols[0]].dtype
    if not (dtype.is_signed_integer() or dtype in (pl.UInt8(), pl.UInt16(), pl.UInt32())):
        return None
    known = keys[cols[0]].cast(pl.Int64).to_numpy()
    low, span = int(known.min()), int(known.max()) - int(known.min())
    if span >= DENSE * len(known) + 65_536:
        return None
    table = np.full(span + 2, -1, np.int64)  # the last entry: outside the range
    table[known - low] = np.arange(len(known))
    return low, table


Part = slice | np.ndarray  # a run of facts, or their positions


def locator(packed: Packed, facts: pl.DataFrame) -> Callable[[Part], np.ndarray]:
    """Each fact's key row (-1, the sentinel, where its key is not packed or NULL), some facts
    at a time.

    One integer key column over a dense range is found by direct addressing (one read per fact,
    done chunk by chunk with the probe); anything else by a hash join kept in fact order.
    """
    cols = packed.keys.columns
    if not packed.keys.height:
        return lambda part: np.full(len(np.arange(facts.height)[part]), -1, np.int64)
    if packed.dense is not None and facts[cols[0]].dtype.is_integer():
        low, table = packed.dense
        last = len(table) - 1
        fk = _numbers(facts[cols[0]].cast(pl.Int64, strict=False), low - 1)

        def dense(part: Part) -> np.ndarray:
            # NULL and outside the range land on the last entry (negatives wrap to huge)
            offset = (fk[part] - low).view(np.uint64)
            rows: np.ndarray = table[np.minimum(offset, last).view(np.int64)]
            return rows
        return dense
    index = packed.keys.with_row_index("_g").with_columns(pl.col("_g").cast(pl.Int64))
    found = facts.select(cols).join(index, on=cols, how="left", maintain_order="left",
                                    nulls_equal=False)
    where = found["_g"].fill_null(-1).to_numpy()
    return lambda part: where[part]


def _slots(level: Level, g: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(surrogate key, whether the slots answer) for facts at key rows g and times t."""
    if level.first is not None:
        return level.first[g], t >= level.starts[0][g]
    slot = (t >= level.starts[1][g]).astype(np.int64)
    for i in range(2, SLOTS):
        slot += t >= level.starts[i][g]
    return level.sks[g * SLOTS + slot], t >= level.starts[0][g]


def find(packed: Packed, facts: pl.DataFrame, event: str) -> tuple[np.ndarray, np.ndarray]:
    """(surrogate key, how) per fact; how is TODO where the range pass must answer.

    Level 0 reads every fact, in chunks on every core (numpy releases the GIL); each deeper
    level reads only the facts the ones before left.
    """
    n = facts.height
    locate = locator(packed, facts)
    ts = _numbers(facts[event].cast(pl.Datetime("us")).to_physical(), NULL_TIME)
    key = np.empty(n, np.int64)
    how = np.full(n, TODO, np.uint8)
    if not packed.levels:
        return key, how

    def first(begin: int) -> None:
        part = slice(begin, min(begin + CHUNK, n))
        key[part], answered = _slots(packed.levels[0], locate(part), ts[part])
        how[part] = (~answered).view(np.uint8) * np.uint8(TODO)  # else EXACT (0)

    if n <= CHUNK:
        first(0)  # one chunk: no threads to start
    else:
        with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
            list(pool.map(first, range(0, n, CHUNK)))
    left = np.flatnonzero(how == TODO)
    where = locate(left)  # found again for the few facts left, rather than kept for all
    for level in packed.levels[1:]:
        if not len(left):
            break
        got, answered = _slots(level, where, ts[left])
        done = left[answered]
        key[done], how[done] = got[answered], EXACT
        left, where = left[~answered], where[~answered]
    return key, how
