"""Point-in-time surrogate keys: each fact takes the dimension version valid at its event time.

The as-of join is done in two passes rather than with ``join_asof`` (3x slower here, FACTS.md).
Most facts of a nightly batch fall in their key's current version, so the first pass is a plain
equi-join on the current versions; only the facts left over (events before the current version
began) go through the range join over the key's older versions.

The rules, for a fact with natural key K at time T:

- K is NULL: -2 "Not applicable";
- a version of K covers T (valid_from <= T < valid_to): that version's key;
- K is known but no version covers T (T before K's first version, or inside a gap after an
  invalidating delete): the nearest version in time (the first one, or the last before T);
- K is not in the dimension: the lookup's ``missing`` policy (-1 "Unknown", a new inferred member,
  or quarantine with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from dimensions.spec import NOT_APPLICABLE_KEY, UNKNOWN_KEY
from facts.spec import KeyLookup, MissingKey

MATCH = "_match"  # how each fact found its key: exact, nearest, not_applicable, missing


@dataclass(frozen=True)
class Lookup:
    facts: pl.LazyFrame  # the input facts plus the key column and the MATCH column
    missing_keys: pl.LazyFrame  # distinct natural keys not in the dimension (dimension's names)


def lookup_key(facts: pl.LazyFrame, versions: pl.LazyFrame, lk: KeyLookup) -> Lookup:
    """Add ``lk.output`` to every fact; missing keys are -1 until the caller applies the policy.

    Keys are found on narrow rows (row id, natural key, event time) and joined without keeping
    order, then sorted back by row id and set beside the facts: an order-keeping join of the
    wide fact rows cost ~3x more here (benchmarks/pit_lookup.py).
    """
    spec = lk.dimension
    nk, sk, out = list(spec.natural_key), spec.surrogate_key, lk.output
    fk = list(lk.fact_columns)
    v = versions.filter(pl.col(sk) >= 0).select(sk, *nk, "valid_from", "valid_to", "is_current")
    current = v.filter(pl.col("is_current")).select(
        *[pl.col(b).alias(a) for a, b in zip(fk, nk, strict=True)],
        _cur=pl.col(sk), _cur_from=pl.col("valid_from"))
    wide = facts.collect(engine="in-memory")
    any_null = pl.any_horizontal([pl.col(c).is_null() for c in fk])
    # Pass 1, one equi-join: facts at or after their key's current version (most of a night).
    f = (wide.lazy().select(*fk, _ts=pl.col(lk.event_time).cast(pl.Datetime("us")))
         .with_row_index("_fid").join(current, on=fk, how="left")
         .with_columns(_na=any_null).cache())
    hit = pl.col("_cur").is_not_null() & (pl.col("_ts") >= pl.col("_cur_from"))
    # Pass 2, on the facts left over only: the older version covering the event, else the
    # nearest version of a known key.
    rest = f.filter(~hit & ~pl.col("_na")).select(
        "_fid", "_ts", *[pl.col(a).alias(b) for a, b in zip(fk, nk, strict=True)]).cache()
    older = rest.join(v.filter(~pl.col("is_current")), on=nk, how="inner").filter(
        (pl.col("valid_from") <= pl.col("_ts")) & (pl.col("_ts") < pl.col("valid_to"))
    ).select("_fid", _key=pl.col(sk), _how=pl.lit("exact")).cache()
    gap = (pl.when(pl.col("_ts") < pl.col("valid_from")).then(pl.col("valid_from") - pl.col("_ts"))
           .otherwise(pl.col("_ts") - pl.col("valid_to")))
    nearest = (rest.join(older.select("_fid"), on="_fid", how="anti").join(v, on=nk, how="inner")
               .with_columns(_gap=gap).sort("_fid", "_gap", sk)
               .group_by("_fid", maintain_order=True).first()
               .select("_fid", _key=pl.col(sk), _how=pl.lit("nearest")))
    found = pl.concat([older, nearest])
    keyed = pl.concat([
        f.filter(hit & ~pl.col("_na")).select("_fid", _key=pl.col("_cur"), _how=pl.lit("exact")),
        f.filter(pl.col("_na")).select("_fid", _key=pl.lit(NOT_APPLICABLE_KEY, dtype=pl.Int64),
                                       _how=pl.lit("not_applicable")),
        rest.select("_fid").join(found, on="_fid", how="left").select(
            "_fid", _key=pl.col("_key").fill_null(UNKNOWN_KEY),
            _how=pl.col("_how").fill_null("missing")),
    ], how="vertical_relaxed").sort("_fid").select(
        pl.col("_key").cast(pl.Int64).alias(out), pl.col("_how").alias(MATCH)
    ).collect(engine="in-memory")
    joined = wide.hstack(keyed.get_columns())
    missing = joined.lazy().filter(pl.col(MATCH) == "missing").select(
        [pl.col(a).alias(b) for a, b in zip(fk, nk, strict=True)]).unique().sort(nk)
    return Lookup(joined.lazy(), missing)


def apply_missing(facts: pl.LazyFrame, lk: KeyLookup, inferred: pl.LazyFrame | None
                  ) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Apply the missing-key policy: returns (facts to keep, facts to quarantine with a reason).

    ``inferred`` holds the new inferred members (natural key and surrogate key) when the policy
    is INFERRED.
    """
    spec, out = lk.dimension, lk.output
    is_missing = pl.col(MATCH) == "missing"
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
            pl.when(is_missing).then(pl.lit("inferred")).otherwise(pl.col(MATCH)).alias(MATCH),
        ).drop("_inferred_key")
    return facts, facts.filter(pl.lit(False)).with_columns(reason=pl.lit(""))
