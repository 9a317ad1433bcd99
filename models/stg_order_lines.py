"""Staging of order lines and returns: exact duplicates removed, unusable rows quarantined.

A NULL product_id is kept: the fact maps it to the -2 "Not applicable" product.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.checks import Volume
from starsmith.quality.rules import quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "order_lines")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.order_lines"].unique(maintain_order=True).with_columns(
        sale_date=pl.col("line_ts").dt.date(), load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [
        (pl.col("order_id").is_null(), "order_id is NULL"),
        (pl.col("quantity").is_null() | (pl.col("quantity") == 0), "quantity is NULL or zero"),
        (pl.col("line_ts").is_null(), "line_ts is NULL"),
    ])


MODEL = Model(
    name="stg_order_lines",
    kind=Kind.STAGING,
    inputs=(Input("landing.order_lines"),),
    columns=(*SOURCE.columns,
             Column("sale_date", pl.Date(), "the day the line was sold or returned"),
             Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    checks=(Volume(min_ratio=0.5, max_ratio=2.0),),
    description="Order lines and returns, one partition per landing day.",
)
