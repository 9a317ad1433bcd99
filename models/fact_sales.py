"""Sales: a transaction fact at order-line grain; returns are negative lines arriving later.

Keys are point-in-time: the customer and store as they were when the order was placed, the
product as it was when the line was sold. A customer first seen in an order (before the CRM feed
delivers them) becomes an inferred member, completed in place when the feed catches up.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.dimensions.date_dim import date_key
from starsmith.facts.spec import Additivity, FactSpec, FactType, KeyLookup, MissingKey
from starsmith.quality.checks import Freshness, References
from starsmith.quality.expect import Expect
from starsmith.quality.rules import quarantine_when

from . import dim_customer, dim_product, dim_store

MONEY = pl.Decimal(14, 2)
FACT = FactSpec(
    name="fact_sales",
    fact_type=FactType.TRANSACTION,
    grain=("order_id", "line_no"),
    event_date="sale_date",
    lookback_days=7,
    lookups=(
        KeyLookup(dim_customer.SPEC, ("customer_id",), "order_ts", MissingKey.INFERRED),
        KeyLookup(dim_product.SPEC, ("product_id",), "line_ts", MissingKey.UNKNOWN),
        KeyLookup(dim_store.SPEC, ("store_id",), "order_ts", MissingKey.UNKNOWN),
    ),
    measures=(("quantity", Additivity.ADDITIVE), ("gross_amount", Additivity.ADDITIVE),
              ("discount", Additivity.ADDITIVE), ("net_amount", Additivity.ADDITIVE)),
)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    lines = inputs["stg_order_lines"].unique(subset=["order_id", "line_no"], keep="last",
                                             maintain_order=True)
    orders = inputs["stg_orders"].unique(subset=["order_id"], keep="last", maintain_order=True)
    rows = lines.join(orders.select("order_id", "customer_id", "store_id", "order_ts", "channel"),
                      on="order_id", how="left")
    qty = pl.col("quantity").cast(pl.Decimal(12, 0))
    gross = (qty * pl.col("unit_price")).cast(MONEY)
    sign = pl.when(pl.col("quantity") < 0).then(-1).otherwise(1).cast(pl.Decimal(12, 0))
    rows = rows.with_columns(
        date_key=date_key("sale_date"),
        is_return=pl.col("quantity") < 0,
        gross_amount=gross,
        discount=(pl.col("discount") * sign).cast(MONEY),
        net_amount=(gross - pl.col("discount") * sign).cast(MONEY),
    )
    return quarantine_when(rows, [(pl.col("order_ts").is_null(),
                                   "order {order_id} has no header landed yet")])


MODEL = Model(
    name="fact_sales",
    kind=Kind.FACT,
    inputs=(Input("stg_order_lines"), Input("stg_orders", on=("order_id",)), Input("dim_customer"),
            Input("dim_product"), Input("dim_store"), Input("dim_date")),
    columns=(
        Column("order_id", pl.Int64(), "order number (degenerate dimension)", nullable=False),
        Column("line_no", pl.Int32(), "line number; returns from 1001", nullable=False),
        Column("sale_date", pl.Date(), "event date; the partition", nullable=False),
        Column("date_key", pl.Int64(), "dim_date key of sale_date", nullable=False),
        Column("customer_key", pl.Int64(), "customer when the order was placed", nullable=False),
        Column("product_key", pl.Int64(), "product when the line was sold", nullable=False),
        Column("store_key", pl.Int64(), "store of the order", nullable=False),
        Column("channel", pl.String(), "web, store or phone"),
        Column("is_return", pl.Boolean(), "a negative line returning goods"),
        Column("quantity", pl.Int32(), "units; negative for returns (additive)"),
        Column("unit_price", MONEY, "price per unit (non-additive)"),
        Column("gross_amount", MONEY, "quantity x unit_price (additive)"),
        Column("discount", MONEY, "discount; negative on returns (additive)"),
        Column("net_amount", MONEY, "gross_amount - discount (additive)"),
        Column("line_ts", pl.Datetime("us"), "when the line was sold or returned"),
    ),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="sale_date",
    unique_key=("order_id", "line_no"),
    expectations=(
        Expect("expect_compound_columns_to_be_unique", column_list=["order_id", "line_no"]),
        *[Expect("expect_column_values_to_not_be_null", column=c)
          for c in ("date_key", "customer_key", "product_key", "store_key")],
        Expect("expect_column_values_to_be_between", column="quantity", min_value=-100,
               max_value=100),
        Expect("expect_column_values_to_be_between", column="net_amount", min_value=-100_000,
               max_value=100_000, severity="warn"),
    ),
    checks=(
        References("customer_key", "dim_customer", max_unknown_rate=0.01),
        References("product_key", "dim_product", max_unknown_rate=0.01),
        References("store_key", "dim_store", max_unknown_rate=0.02),
        References("date_key", "dim_date", max_unknown_rate=0.0),
        Freshness("line_ts", max_hours=48),
    ),
    fact=FACT,
    description="Order lines and returns, keyed to the dimensions as they were at the sale.",
)
