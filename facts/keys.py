"""Point-in-time surrogate keys: each fact takes the dimension version valid at its event time.

Neither ``join_asof`` (3x slower here) nor an equi-join then a range filter (a
candidate row per fact and version) does the bulk of the work. The latest versions of a key
almost always follow one another without gaps, so facts/packed.py lays each key's latest versions
side by side and finds a fact's version with one read and a few comparisons, in fact order: no
candidate rows, no sort, and a nightly batch costs what a year costs per fact. Facts older than
their key's packed versions, keys with gaps in their latest versions (an invalidating delete) and
keys not in the dimension go through the general range pass below, on their facts only.

The rules, for a fact with natural key K at time T:

- K is NULL: -2 "Not applicable";
- a version of K covers T (valid_from <= T < valid_to): that version's key;
- K is known but no version covers T (T before K's first version, or inside a gap after an
  invalidating delete): the nearest version in time (the first one, or the closest across the
  gap, the earlier on a tie);
- K is not in the dimension: the lookup's ``missing`` policy (-1 "Unknown", a new inferred member,
  or quarantine with the reason).

How each fact found its key is the MATCH column, a small code (``HOW`` names the codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from starsmith.dimensions.spec import NOT_APPLICABLE_KEY, UNKNOWN_KEY
from starsmith.facts.packed import EXACT, INFERRED, MISSING, NEAREST, NOT_APPLICABLE, TODO, find, pack
from starsmith.facts.spec import KeyLookup, MissingKey

MATCH = "_match"  # how each fact found its key: a code of HOW
HOW = {EXACT: "exact", NEAREST: "nearest", NOT_APPLICABLE: "not_applicable", MISSING: "missing",
       INFERRED: "inferred"}
TS = pl.Datetime("us")


@dataclass(frozen=True)
class Lookup:
    facts: pl.LazyFrame  # the input facts plus the key column and the MATCH column
    missing_keys: pl.LazyFrame  # distinct natural keys not in the dimension (dimension's names)


def how_names(codes: pl.Series) -> list[str]:
    """The MATCH codes as words (reports and tests)."""
    return [HOW[c] for c in codes.to_list()]


def _general(rest: pl.LazyFrame, v: pl.LazyFrame, nk: list[str], sk: str) -> pl.LazyFrame:
    """Keys for facts (``_fid``, ``_ts``, natural key) the packed versions could not answer."""
    exact = rest.join(v, on=nk, how="inner").filter(
        (pl.col("valid_from") <= pl.col("_ts")) & (pl.col("_ts") < pl.col("valid_to"))
    ).select("_fid", _key=pl.col(sk), _how=pl.lit(EXACT, dtype=pl.UInt8)).cache()
    gap = (pl.when(pl.col("_ts") < pl.col("valid_from")).then(pl.col("valid_from") - pl.col("_ts"))
           .otherwise(pl.col("_ts") - pl.col("valid_to")))
    nearest = (rest.join(exact.select("_fid"), on="_fid", how="anti").join(v, on=nk, how="inner")
               .with_columns(_gap=gap).sort("_fid", "_gap", sk)
               .group_by("_fid", maintain_order=True).first()
               .select("_fid", _key=pl.col(sk), _how=pl.lit(NEAREST, dtype=pl.UInt8)))
    return rest.select("_fid").join(pl.concat([exact, nearest]), on="_fid", how="left").select(
        "_fid", _key=pl.col("_key").fill_null(UNKNOWN_KEY),
        _how=pl.col("_how").fill_null(MISSING))


class KeyIndex:
    """A dimension's versions packed once, to key any number of fact batches against.

    A step keys one batch (``lookup_key``); a build that streams facts through in batches packs
    each dimension once and keys every batch with it (benchmarks/pit_lookup.py).
    """

    def __init__(self, versions: pl.LazyFrame, lk: KeyLookup) -> None:
        self.lk = lk
        spec = lk.dimension
        self.nk, self.sk = list(spec.natural_key), spec.surrogate_key
        v = versions.filter(pl.col(self.sk) >= 0).select(
            self.sk, *self.nk, "valid_from", "valid_to").collect(engine="in-memory")
        self.packed = pack(v, self.nk, self.sk)

    def lookup(self, facts: pl.LazyFrame | pl.DataFrame, lk: KeyLookup | None = None) -> Lookup:
        """Add ``lk.output`` and MATCH to every fact; missing keys are -1 until the caller
        applies the policy. The facts keep their order; the keys are set beside them (joining
        the wide fact rows cost ~3x more here, benchmarks/pit_lookup.py).

        ``lk`` is another lookup into the same dimension (a role: the facts' other columns)."""
        lk = lk or self.lk
        nk, sk = self.nk, self.sk
        assert lk.dimension.name == self.lk.dimension.name
        wide = facts.collect(engine="in-memory") if isinstance(facts, pl.LazyFrame) else facts
        narrow = wide.select(
            *[pl.col(a).alias(b) for a, b in zip(lk.fact_columns, nk, strict=True)],
            _ts=pl.col(lk.event_time).cast(TS))
        key, how = find(self.packed, narrow, "_ts")
        if any(narrow[c].null_count() for c in nk):
            na = narrow.select(pl.any_horizontal([pl.col(c).is_null() for c in nk]))[:, 0]
            key[na.to_numpy()], how[na.to_numpy()] = NOT_APPLICABLE_KEY, NOT_APPLICABLE
        todo = np.flatnonzero(how == TODO)
        if len(todo):  # unknown or unpacked keys, facts before the first slot (older, or nearest)
            rest = narrow.lazy().with_row_index("_fid").filter(
                pl.col("_fid").is_in(pl.Series(todo, dtype=pl.UInt32).implode()))
            versions = self.packed.versions.lazy().join(rest.select(nk).unique(), on=nk,
                                                        how="semi")
            found = _general(rest, versions, nk, sk).sort("_fid").collect(engine="in-memory")
            key[found["_fid"].to_numpy()] = found["_key"].to_numpy()
            how[found["_fid"].to_numpy()] = found["_how"].to_numpy()
        joined = wide.hstack([pl.Series(lk.output, key), pl.Series(MATCH, how)])
        missing = joined.lazy().filter(pl.col(MATCH) == MISSING).select(
            [pl.col(a).alias(b) for a, b in zip(lk.fact_columns, nk, strict=True)]
        ).unique().sort(nk)
        return Lookup(joined.lazy(), missing)


def index_bytes(versions: int, columns: pl.Schema) -> int:
    """About what a :class:`KeyIndex` of this many versions holds at its peak, for columns
    (surrogate key, natural key, valid_from, valid_to) of these types: the read rows and their
    packed copy, 64 bytes of slots and ~8 of direct addressing per key (measured ~115 bytes a
    version for an integer key, one version per key). A string counts 32 bytes, a number 8."""
    row = sum(32 if dtype in (pl.String(), pl.Binary(), pl.Categorical()) else 8
              for dtype in columns.values())
    return versions * (2 * row + 72)


def lookup_key(facts: pl.LazyFrame, versions: pl.LazyFrame, lk: KeyLookup) -> Lookup:
    """Key one batch of facts: :meth:`KeyIndex.lookup` with the versions packed for it."""
    return KeyIndex(versions, lk).lookup(facts)


def apply_missing(facts: pl.LazyFrame, lk: KeyLookup, inferred: pl.LazyFrame | None
                  ) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Apply the missing-key policy: returns (facts to keep, facts to quarantine with a reason).

    ``inferred`` holds the new inferred members (natural key and surrogate key) when the policy
    is INFERRED.
    """
    spec, out = lk.dimension, lk.output
    is_missing = pl.col(MATCH) == MISSING
    if lk.missing is MissingKey.QUARANTINE:
        reason = pl.format(f"{'/'.join(lk.fact_columns)} {{}} not found in {spec.name}",
                           pl.concat_str([pl.col(c).cast(pl.String) for c in lk.fact_columns],
                                         separator="/"))
        return facts.filter(~is_missing), facts.filter(is_missing).with_columns(reason=reason)
    if lk.missing is MissingKey.INFERRED and inferred is not None:
        keyed = inferred.select(*[pl.col(b).alias(a) for a, b in zip(lk.fact_columns,
                                                                    spec.natural_key, strict=True)],
                                pl.col(spec.surrogate_key).alias("_inferred_key"))
        facts = facts.join(keyed, on=list(lk.fact_columns), how="left",
                           maintain_order="left").with_columns(
            pl.when(is_missing).then(pl.col("_inferred_key")).otherwise(pl.col(out)).alias(out),
            pl.when(is_missing).then(pl.lit(INFERRED, dtype=pl.UInt8)).otherwise(pl.col(MATCH))
            .alias(MATCH),
        ).drop("_inferred_key")
    return facts, facts.filter(pl.lit(False)).with_columns(reason=pl.lit(""))
