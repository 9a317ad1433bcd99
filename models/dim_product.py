"""Products: SCD2 on category and list price (by check against the daily snapshot).

The catalogue lands as a full snapshot each day, so a change is found by comparing tracked
columns null-safely and is dated at the snapshot's day; a product missing from the snapshot is
discontinued (its version is closed), and one that comes back opens a new version.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import (
    BuildContext,
    Input,
    Kind,
    Model,
    Strategy,
    dimension_columns,
)
from starsmith.dimensions import ChangeDetection, DeletePolicy, DimensionSpec, SCDType

from .stg_products import SOURCE

SPEC = DimensionSpec(
    name="dim_product",
    surrogate_key="product_key",
    natural_key=("product_id",),
    columns=(
        ("sku", SCDType.FIXED),
        ("product_name", SCDType.OVERWRITE),
        ("category", SCDType.VERSIONED),
        ("list_price", SCDType.VERSIONED),
    ),
    detection=ChangeDetection.CHECK,
    snapshot=True,
    deletes=DeletePolicy.INVALIDATE,
)
ATTRIBUTES = tuple(c for c in SOURCE.columns if c.name in {"product_id", *SPEC.attributes})


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_products"].select("product_id", *SPEC.attributes)


MODEL = Model(
    name="dim_product",
    kind=Kind.DIMENSION,
    inputs=(Input("stg_products"),),
    columns=dimension_columns(SPEC, ATTRIBUTES),
    transform=transform,
    strategy=Strategy.SCD,
    dimension=SPEC,
    unique_key=("product_key",),
    description="One row per product version; a discontinued product's last version is closed.",
)
