"""Stores: SCD1, a rename overwrites the name on the store's one row."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Input, Kind, Model, Strategy, dimension_columns
from starsmith.dimensions import ChangeDetection, DimensionSpec, SCDType

from .stg_stores import SOURCE

SPEC = DimensionSpec(
    name="dim_store",
    surrogate_key="store_key",
    natural_key=("store_id",),
    columns=(("store_name", SCDType.OVERWRITE), ("city", SCDType.OVERWRITE),
             ("region", SCDType.OVERWRITE)),
    detection=ChangeDetection.CHECK,
    snapshot=True,
)
ATTRIBUTES = tuple(c for c in SOURCE.columns if c.name in {"store_id", *SPEC.attributes})


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_stores"].select("store_id", *SPEC.attributes)


MODEL = Model(
    name="dim_store",
    kind=Kind.DIMENSION,
    inputs=(Input("stg_stores"),),
    columns=dimension_columns(SPEC, ATTRIBUTES),
    transform=transform,
    strategy=Strategy.SCD,
    dimension=SPEC,
    unique_key=("store_key",),
    description="One row per store, always its latest name (SCD1).",
)
