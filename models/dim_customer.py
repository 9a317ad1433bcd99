"""Customers: SCD2 on address, city and segment; type 1 on name and email; deletes versioned.

The CRM feed is a change log, so changes are dated by the CRM's ``updated_at``: several changes
of one customer in a day become several versions, in order. A change dated before the customer's
latest version is quarantined with the reason (never dropped, never misordered).
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
from starsmith.dimensions import ChangeDetection, DeletePolicy, DimensionSpec, DuplicatePolicy, SCDType
from starsmith.quality.expect import Expect

from .stg_customers import SOURCE

SPEC = DimensionSpec(
    name="dim_customer",
    surrogate_key="customer_key",
    natural_key=("customer_id",),
    columns=(
        ("name", SCDType.OVERWRITE),
        ("email", SCDType.OVERWRITE),
        ("address", SCDType.VERSIONED),
        ("city", SCDType.VERSIONED),
        ("segment", SCDType.VERSIONED),
    ),
    detection=ChangeDetection.TIMESTAMP,
    updated_at="updated_at",
    deleted_flag="is_delete",
    deletes=DeletePolicy.NEW_RECORD,
    duplicates=DuplicatePolicy.LATEST,
    sequence="change_seq",
)
ATTRIBUTES = tuple(c for c in SOURCE.columns if c.name in {"customer_id", *SPEC.attributes})


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    """The day's valid changes as an SCD batch (the builder does the rest)."""
    return inputs["stg_customers"].select(
        "customer_id", *SPEC.attributes, "updated_at", "is_delete", "change_seq"
    )


MODEL = Model(
    name="dim_customer",
    kind=Kind.DIMENSION,
    inputs=(Input("stg_customers"),),
    columns=dimension_columns(SPEC, ATTRIBUTES),
    transform=transform,
    strategy=Strategy.SCD,
    dimension=SPEC,
    unique_key=("customer_key",),
    expectations=(
        Expect("expect_column_values_to_be_unique", column="customer_key"),
        Expect("expect_compound_columns_to_be_unique", column_list=["customer_id", "valid_from"],
               ignore_row_if="any_value_is_missing"),  # the reserved members have no id
        Expect("expect_column_values_to_be_in_set", column="segment",
               value_set=["CONS", "CORP", "SMB", "Unknown", "Not applicable"]),
        Expect("expect_column_values_to_not_be_null", column="email", mostly=0.95,
               severity="warn"),
    ),
    description="One row per customer version; join facts on customer_key.",
)
