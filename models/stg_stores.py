"""Staging of the daily store master CSV."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.rules import quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "stores")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.stores"].unique(maintain_order=True).with_columns(
        load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [(pl.col("store_id").is_null(), "store_id is NULL")])


MODEL = Model(
    name="stg_stores",
    kind=Kind.STAGING,
    inputs=(Input("landing.stores"),),
    columns=(*SOURCE.columns,
             Column("load_date", pl.Date(), "the snapshot's landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="The store master as snapshotted each day.",
)
