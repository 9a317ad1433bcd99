"""Sales: a transaction fact, one row per sale line, keyed to the customer as they were."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (
    Additivity,
    BuildContext,
    Column,
    Expect,
    FactSpec,
    FactType,
    Input,
    KeyLookup,
    Kind,
    MissingKey,
    Model,
    Strategy,
)

from . import dim_customer

AMOUNT = pl.Decimal(18, 4)  # exact: quantity x price keeps every decimal place

FACT = FactSpec(
    name="fact_sales",
    fact_type=FactType.TRANSACTION,
    grain=("sale_id",),
    event_date="sale_date",
    lookups=(KeyLookup(dim_customer.SPEC, ("customer_id",), "sold_at", MissingKey.UNKNOWN),),
    measures=(("quantity", Additivity.ADDITIVE), ("amount", Additivity.ADDITIVE)),
)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    # Cast one side up first: Polars keeps the left operand's scale in a Decimal product.
    return inputs["stg_sales"].with_columns(
        amount=pl.col("unit_price").cast(AMOUNT) * pl.col("quantity").cast(pl.Decimal(18, 0)))


MODEL = Model(
    name="fact_sales",
    kind=Kind.FACT,
    inputs=(Input("stg_sales"), Input("dim_customer")),
    columns=(
        Column("sale_id", pl.Int64(), "receipt line id", nullable=False),
        Column("sale_date", pl.Date(), "the day of the sale; the partition", nullable=False),
        Column("customer_key", pl.Int64(), "the customer as they were at the sale",
               nullable=False),
        Column("quantity", pl.Int32(), "units sold (additive)"),
        Column("unit_price", pl.Decimal(12, 2), "price per unit (non-additive)"),
        Column("amount", AMOUNT, "quantity x unit_price, exact (additive)"),
        Column("sold_at", pl.Datetime("us"), "when the sale happened"),
    ),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="sale_date",
    unique_key=("sale_id",),
    fact=FACT,
    expectations=(Expect("expect_column_values_to_be_between", column="quantity", min_value=0,
                         max_value=1000),),
    description="Sale lines, keyed point-in-time to dim_customer.",
)
