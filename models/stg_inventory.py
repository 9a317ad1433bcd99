"""Staging of the daily inventory levels."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.rules import quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "inventory")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.inventory"].unique(maintain_order=True).with_columns(
        load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [
        (pl.col("product_id").is_null() | pl.col("store_id").is_null(),
         "product_id or store_id is NULL"),
        (pl.col("on_hand") < 0, "negative on_hand {on_hand}"),
    ])


MODEL = Model(
    name="stg_inventory",
    kind=Kind.STAGING,
    inputs=(Input("landing.inventory"),),
    columns=(*SOURCE.columns, Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="Inventory levels per product, store and day.",
)
