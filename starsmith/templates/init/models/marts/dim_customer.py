"""Customers: the segment is history (SCD2), the name is overwritten (SCD1)."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (
    BuildContext,
    ChangeDetection,
    DimensionSpec,
    Input,
    Kind,
    Model,
    SCDType,
    Strategy,
    dimension_columns,
)

from ..sources import CUSTOMERS

SPEC = DimensionSpec(
    name="dim_customer",
    surrogate_key="customer_key",
    natural_key=("customer_id",),
    columns=(("name", SCDType.OVERWRITE), ("segment", SCDType.VERSIONED)),
    detection=ChangeDetection.CHECK,  # compare the attributes with the current version
    snapshot=True,  # each export is the whole list
)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.customers"].select("customer_id", *SPEC.attributes)


MODEL = Model(
    name="dim_customer",
    kind=Kind.DIMENSION,
    inputs=(Input("landing.customers"),),
    columns=dimension_columns(SPEC, CUSTOMERS.columns),
    transform=transform,
    strategy=Strategy.SCD,
    dimension=SPEC,
    unique_key=("customer_key",),
    description="One row per version of a customer.",
)
