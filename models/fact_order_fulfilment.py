"""Fulfilment: an accumulating snapshot, one row per order, updated as milestones arrive.

Each milestone keeps the earliest time it was seen, whatever order events land in, so progress
never moves backwards; the lags between milestones are non-additive measures (average them).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.dimensions.date_dim import date_key
from starsmith.facts.snapshots import accumulate
from starsmith.facts.spec import Additivity, FactSpec, FactType

from .stg_shipments import MILESTONES

FACT = FactSpec(
    name="fact_order_fulfilment",
    fact_type=FactType.ACCUMULATING_SNAPSHOT,
    grain=("order_id",),
    event_date="order_date",
    measures=tuple((f"hours_to_{m}", Additivity.NON_ADDITIVE) for m in MILESTONES[1:]),
)
STAMPS = [f"{m}_at" for m in MILESTONES]


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = accumulate(inputs["fact_order_fulfilment"], inputs["stg_shipments"], ("order_id",),
                      "milestone", "event_ts", MILESTONES)
    hours = {f"hours_to_{m}": ((pl.col(f"{m}_at") - pl.col("ordered_at")).dt.total_seconds()
                               / 3600).round(2) for m in MILESTONES[1:]}
    status = pl.coalesce([pl.when(pl.col(s).is_not_null()).then(pl.lit(m))
                          for m, s in reversed(list(zip(MILESTONES, STAMPS, strict=True)))])
    return rows.with_columns(
        order_date=pl.col("ordered_at").dt.date(),
        status=status,
        **hours,
    ).with_columns(date_key=pl.coalesce(date_key("order_date"), pl.lit(-1, dtype=pl.Int64)))


MODEL = Model(
    name="fact_order_fulfilment",
    kind=Kind.FACT,
    inputs=(Input("stg_shipments"), Input("dim_date")),
    columns=(
        Column("order_id", pl.Int64(), "order number", nullable=False),
        Column("order_date", pl.Date(), "day ordered (NULL until the ordered milestone lands)"),
        Column("date_key", pl.Int64(), "dim_date key of order_date; -1 until known",
               nullable=False),
        *[Column(s, pl.Datetime("us"), f"when the order was first seen {m}")
          for m, s in zip(MILESTONES, STAMPS, strict=True)],
        Column("status", pl.String(), "the furthest milestone reached"),
        *[Column(f"hours_to_{m}", pl.Float64(), f"hours from ordered to {m} (non-additive)")
          for m in MILESTONES[1:]],
    ),
    transform=transform,
    strategy=Strategy.MERGE,
    unique_key=("order_id",),
    fact=FACT,
    description="One row per order with its fulfilment milestones and the lags between them.",
)
