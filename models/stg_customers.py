"""Staging of the CRM change feed: typed, deduplicated, bad rows quarantined with a reason."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.expect import Expect
from starsmith.quality.rules import not_in, quarantine_when

from .sources import SOURCES

SEGMENTS = ("CONS", "CORP", "SMB")
SOURCE = next(s for s in SOURCES if s.name == "customers")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.customers"].unique(maintain_order=True).with_columns(
        is_delete=pl.col("op") == "D",
        load_date=pl.lit(ctx.logical_date),
    )
    return quarantine_when(rows, [
        (pl.col("customer_id").is_null(), "customer_id is NULL"),
        (not_in("op", ("I", "U", "D")), "unknown change operation '{op}'"),
        (pl.col("updated_at").is_null(), "updated_at is NULL"),
        (not_in("segment", SEGMENTS), "unknown segment code '{segment}'"),
    ])


MODEL = Model(
    name="stg_customers",
    kind=Kind.STAGING,
    inputs=(Input("landing.customers"),),
    columns=(
        *SOURCE.columns,
        Column("is_delete", pl.Boolean(), "the change deletes the customer"),
        Column("load_date", pl.Date(), "the landing day this row came from", nullable=False),
    ),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    expectations=(
        Expect("expect_column_values_to_not_be_null", column="customer_id"),
        Expect("expect_column_values_to_be_in_set", column="op", value_set=["I", "U", "D"]),
        Expect("expect_column_values_to_match_regex", column="email", regex=r"^[^@\s]+@[^@\s]+$",
               severity="warn"),
        Expect("expect_table_row_count_to_be_between", min_value=1, severity="warn"),
    ),
    description="Every valid customer change, one partition per landing day.",
)
