"""What lands in the landing zone: each source's format, cadence and typed columns (its contract)."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Source

MONEY = pl.Decimal(12, 2)

CUSTOMERS = Source(
    "customers", "parquet",
    (
        Column("customer_id", pl.Int64(), "customer number", nullable=False),
        Column("name", pl.String(), "full name"),
        Column("segment", pl.String(), "retail or business"),
    ),
    "The customer list, exported now and then: a day reads the latest export on or before it.",
    cadence=Cadence.REFERENCE,
)

SALES = Source(
    "sales", "parquet",
    (
        Column("sale_id", pl.Int64(), "receipt line id", nullable=False),
        Column("customer_id", pl.Int64(), "customer (NULL for walk-ins)"),
        Column("sold_at", pl.Datetime("us"), "when the sale happened"),
        Column("quantity", pl.Int32(), "units sold"),
        Column("unit_price", MONEY, "price per unit"),
    ),
    "Till sales, one extract per day.",
    cadence=Cadence.DAILY,
)
