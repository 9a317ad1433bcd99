"""Staging of order headers (some land days late; the partition is the landing day)."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.rules import quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "orders")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.orders"].unique(maintain_order=True).with_columns(
        order_date=pl.col("order_ts").dt.date(), load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [
        (pl.col("order_id").is_null(), "order_id is NULL"),
        (pl.col("order_ts").is_null(), "order_ts is NULL"),
    ])


MODEL = Model(
    name="stg_orders",
    kind=Kind.STAGING,
    inputs=(Input("landing.orders"),),
    columns=(*SOURCE.columns,
             Column("order_date", pl.Date(), "the day the order was placed"),
             Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="Order headers, one partition per landing day.",
)
