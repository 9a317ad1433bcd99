"""Staging of the daily product catalogue snapshot."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.rules import quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "products")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.products"].unique(maintain_order=True).with_columns(
        load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [
        (pl.col("product_id").is_null(), "product_id is NULL"),
        (pl.col("list_price") < 0, "negative list_price {list_price}"),
    ])


MODEL = Model(
    name="stg_products",
    kind=Kind.STAGING,
    inputs=(Input("landing.products"),),
    columns=(*SOURCE.columns,
             Column("load_date", pl.Date(), "the snapshot's landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="The product catalogue as snapshotted each day.",
)
