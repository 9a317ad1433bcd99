"""Inventory: a periodic snapshot at product x store x day, complete by construction.

Every product live that day x every store has a row: a pair missing from the feed gets an
explicit zero row flagged ``is_filled``. ``on_hand`` is semi-additive: sum it across products or
stores, never across days (average or take the last day instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy, Window
from starsmith.dimensions.date_dim import date_key
from starsmith.facts.snapshots import complete_grain
from starsmith.facts.spec import Additivity, FactSpec, FactType, KeyLookup, MissingKey
from starsmith.quality.expect import Expect
from starsmith.quality.rules import quarantine_when

from . import dim_product, dim_store

GRAIN = ("snapshot_date", "product_id", "store_id")
FACT = FactSpec(
    name="fact_inventory_daily",
    fact_type=FactType.PERIODIC_SNAPSHOT,
    grain=GRAIN,
    event_date="snapshot_date",
    lookback_days=1,
    lookups=(
        KeyLookup(dim_product.SPEC, ("product_id",), "snapshot_ts", MissingKey.UNKNOWN),
        KeyLookup(dim_store.SPEC, ("store_id",), "snapshot_ts", MissingKey.UNKNOWN),
    ),
    measures=(("on_hand", Additivity.SEMI_ADDITIVE),),
)


def _live(dim: pl.LazyFrame, key: str, days: pl.LazyFrame) -> pl.LazyFrame:
    """Natural keys live at the close of each day."""
    at = pl.col("snapshot_date").dt.combine(time(23, 59, 59))
    live = dim.filter(pl.col(key).is_not_null())
    if "is_deleted" in dim.collect_schema():
        live = live.filter(~pl.col("is_deleted"))
    return days.join(live.select(key, "valid_from", "valid_to"), how="cross").filter(
        (pl.col("valid_from") <= at) & (at < pl.col("valid_to"))).select("snapshot_date", key)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    # A level counted twice is one level; two different levels for one pair are never picked:
    # both are held back with the reason, and the pair is not filled with a zero either.
    levels = inputs["stg_inventory"].select(*GRAIN, "on_hand").unique(maintain_order=True)
    clash = pl.len().over(GRAIN) > 1
    conflicts = quarantine_when(levels.filter(clash), [(pl.lit(True), (
        "duplicate grain (snapshot_date={snapshot_date}, product_id={product_id}, "
        "store_id={store_id}): levels differ"))])
    levels = levels.filter(~clash)
    days = inputs["stg_inventory"].select("snapshot_date").unique()
    expected = _live(inputs["dim_product"], "product_id", days).join(
        _live(inputs["dim_store"], "store_id", days), on="snapshot_date").join(
        conflicts.select(GRAIN), on=list(GRAIN), how="anti")
    full = complete_grain(levels, expected, GRAIN, {"on_hand": pl.lit(0, dtype=pl.Int32)})
    return pl.concat([full, conflicts], how="diagonal_relaxed").with_columns(
        date_key=date_key("snapshot_date"),
        snapshot_ts=pl.col("snapshot_date").dt.combine(time(23, 59, 59)),
    )


MODEL = Model(
    name="fact_inventory_daily",
    kind=Kind.FACT,
    inputs=(Input("stg_inventory"), Input("dim_product", Window.ALL),
            Input("dim_store", Window.ALL), Input("dim_date")),
    columns=(
        Column("snapshot_date", pl.Date(), "the day; the partition", nullable=False),
        Column("date_key", pl.Int64(), "dim_date key", nullable=False),
        Column("product_key", pl.Int64(), "product as it was that day", nullable=False),
        Column("store_key", pl.Int64(), "store", nullable=False),
        Column("on_hand", pl.Int32(), "units at close of day (semi-additive: not over days)"),
        Column("is_filled", pl.Boolean(), "no level was reported: an explicit zero row"),
    ),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="snapshot_date",
    unique_key=("snapshot_date", "product_key", "store_key"),
    expectations=(
        Expect("expect_compound_columns_to_be_unique",
               column_list=["snapshot_date", "product_key", "store_key"]),
        Expect("expect_column_values_to_be_between", column="on_hand", min_value=0,
               max_value=1_000_000),
        Expect("expect_column_proportion_of_unique_values_to_be_between", column="is_filled",
               min_value=0, max_value=1, severity="warn"),
    ),
    fact=FACT,
    description="Stock per product, store and day; every live pair present every day.",
)
