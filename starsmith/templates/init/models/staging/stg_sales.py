"""Staging of the daily sales extract: one partition per landing day; bad rows quarantined."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy, quarantine_when

from ..sources import SALES


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.sales"].unique(maintain_order=True).with_columns(
        sale_date=pl.col("sold_at").dt.date(), load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [(pl.col("sold_at").is_null(), "sold_at is NULL")])


MODEL = Model(
    name="stg_sales",
    kind=Kind.STAGING,
    inputs=(Input("landing.sales"),),
    columns=(*SALES.columns,
             Column("sale_date", pl.Date(), "the day of the sale"),
             Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="Sales as landed, one partition per landing day.",
)
