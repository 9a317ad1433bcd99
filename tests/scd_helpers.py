"""Small-frame helpers for SCD tests: a spec, a dimension, and applying a batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from starsmith.dimensions import (
    ChangeDetection,
    DeletePolicy,
    DimensionSpec,
    DuplicatePolicy,
    LatePolicy,
    SCDFrames,
    SCDType,
    dimension_schema,
    reserved_members,
    scd_changes,
)

TYPES = {"id": pl.Int64(), "a": pl.String(), "b": pl.String(), "e": pl.String(),
         "f": pl.String()}


def spec(**overrides: Any) -> DimensionSpec:
    base: dict[str, Any] = dict(
        name="dim_test", surrogate_key="sk", natural_key=("id",),
        columns=(("a", SCDType.VERSIONED), ("b", SCDType.VERSIONED), ("e", SCDType.OVERWRITE),
                 ("f", SCDType.FIXED)),
        detection=ChangeDetection.TIMESTAMP, updated_at="ts", deleted_flag="deleted",
        deletes=DeletePolicy.NEW_RECORD, late_changes=LatePolicy.QUARANTINE,
        duplicates=DuplicatePolicy.FAIL,
    )
    base.update(overrides)
    return DimensionSpec(**base)


def empty(s: DimensionSpec) -> pl.DataFrame:
    return reserved_members(s, dimension_schema(s, TYPES)).collect()


def batch(rows: list[tuple[Any, ...]], cols: tuple[str, ...] = ("id", "a", "b", "e", "f", "ts",
                                                                  "deleted")) -> pl.DataFrame:
    schema = {c: TYPES.get(c, pl.Datetime("us") if c == "ts" else pl.Boolean()) for c in cols}
    if "seq" in cols:
        schema["seq"] = pl.Int64()
    return pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], schema=schema,
                        orient="row")


def step(dim: pl.DataFrame, b: pl.DataFrame, s: DimensionSpec, *, run: str = "r",
         at: datetime = datetime(2024, 1, 2), narrowed: bool = False
         ) -> tuple[pl.DataFrame, SCDFrames]:
    """Apply a batch the way the warehouse does: replace the changed rows by surrogate key.

    Every test also checks that this gives what replacing every row of each changed key with
    ``rows`` gives: the versions left alone are exactly the unchanged ones.
    """
    max_key = max(0, int(dim[s.surrogate_key].max() or 0))
    nk, sk = list(s.natural_key), s.surrogate_key
    # narrowed: hand over only the batch's keys' rows, as the build step reads them
    existing = dim.join(b.select(nk).unique(), on=nk, how="semi") if narrowed else dim
    out = scd_changes(existing.lazy(), b.lazy(), s, batch_time=at, run_id=run,
                      max_key=max_key, narrowed=narrowed).collect()
    new = out.apply(dim, sk).sort(sk)
    whole = pl.concat([dim.join(out.rows.select(nk), on=nk, how="anti", nulls_equal=True),
                       out.rows]).sort(sk)
    assert new.equals(whole), "the unchanged rows of a changed key differ from the stored ones"
    return new, out


def versions(dim: pl.DataFrame, key: int) -> pl.DataFrame:
    return dim.filter(pl.col("id") == key).sort("valid_from")
