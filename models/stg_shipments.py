"""Staging of fulfilment milestones (JSON lines; some a day late, out of order)."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.quality.rules import not_in, quarantine_when

from .sources import SOURCES

SOURCE = next(s for s in SOURCES if s.name == "shipments")
MILESTONES = ("ordered", "paid", "shipped", "delivered")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.shipments"].unique(maintain_order=True).with_columns(
        load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [
        (pl.col("order_id").is_null(), "order_id is NULL"),
        (not_in("milestone", MILESTONES), "unknown milestone '{milestone}'"),
        (pl.col("event_ts").is_null(), "event_ts is NULL"),
    ])


MODEL = Model(
    name="stg_shipments",
    kind=Kind.STAGING,
    inputs=(Input("landing.shipments"),),
    columns=(*SOURCE.columns, Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="Fulfilment milestones, one partition per landing day.",
)
