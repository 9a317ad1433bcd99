"""The demo retail business's landing-zone feeds: what arrives, in which format, with which types.

Each source lands one folder per day, ``landing/<source>/date=YYYY-MM-DD/``, in the format real
exports come in. The types below are the contract the staging models cast to.
"""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Source

MONEY = pl.Decimal(12, 2)
TS = pl.Datetime("us")

SOURCES: tuple[Source, ...] = (
    Source(
        "customers", "parquet",
        (
            Column("customer_id", pl.Int64(), "CRM customer id", nullable=False),
            Column("name", pl.String(), "full name"),
            Column("email", pl.String(), "contact email"),
            Column("address", pl.String(), "street address"),
            Column("city", pl.String(), "city"),
            Column("segment", pl.String(), "segment code: CONS, CORP or SMB"),
            Column("op", pl.String(), "change operation: I insert, U update, D delete"),
            Column("updated_at", TS, "when the CRM recorded the change"),
            Column("change_seq", pl.Int64(), "CRM change-log sequence number"),
        ),
        "CRM change feed (CDC): every insert, update and delete of a customer, one file per day.",
        cadence=Cadence.CHANGE_FEED,
    ),
    Source(
        "products", "parquet",
        (
            Column("product_id", pl.Int64(), "catalogue id", nullable=False),
            Column("sku", pl.String(), "stock keeping unit"),
            Column("product_name", pl.String(), "name"),
            Column("category", pl.String(), "category"),
            Column("list_price", MONEY, "list price"),
        ),
        "Product catalogue: a full snapshot every day; a product missing from it was discontinued.",
        cadence=Cadence.SNAPSHOT,
    ),
    Source(
        "stores", "csv",
        (
            Column("store_id", pl.Int64(), "store id", nullable=False),
            Column("store_name", pl.String(), "name"),
            Column("city", pl.String(), "city"),
            Column("region", pl.String(), "region"),
        ),
        "Store master: a full CSV snapshot every day.",
        cadence=Cadence.SNAPSHOT,
    ),
    Source(
        "orders", "parquet",
        (
            Column("order_id", pl.Int64(), "order number", nullable=False),
            Column("customer_id", pl.Int64(), "customer (NULL for guest checkouts)"),
            Column("store_id", pl.Int64(), "store"),
            Column("order_ts", TS, "when the order was placed"),
            Column("channel", pl.String(), "web, store or phone"),
        ),
        "Order headers, landed on the day they are extracted (some days late).",
        cadence=Cadence.DAILY,
    ),
    Source(
        "order_lines", "parquet",
        (
            Column("order_id", pl.Int64(), "order number", nullable=False),
            Column("line_no", pl.Int32(), "line number; returns are numbered from 1001"),
            Column("product_id", pl.Int64(), "product"),
            Column("quantity", pl.Int32(), "units; negative for a return"),
            Column("unit_price", MONEY, "price per unit"),
            Column("discount", MONEY, "discount on the line"),
            Column("line_ts", TS, "when the line was sold or returned"),
        ),
        "Order lines, and returns as negative lines arriving days later.",
        cadence=Cadence.DAILY,
    ),
    Source(
        "shipments", "ndjson",
        (
            Column("order_id", pl.Int64(), "order number", nullable=False),
            Column("milestone", pl.String(), "ordered, paid, shipped or delivered"),
            Column("event_ts", TS, "when the milestone happened"),
        ),
        "Fulfilment milestones as JSON lines, sometimes a day late and out of order.",
        cadence=Cadence.CHANGE_FEED,
    ),
    Source(
        "inventory", "csv",
        (
            Column("snapshot_date", pl.Date(), "the day the level was counted"),
            Column("product_id", pl.Int64(), "product"),
            Column("store_id", pl.Int64(), "store"),
            Column("on_hand", pl.Int32(), "units on hand at close of day"),
        ),
        "Daily inventory levels per product and store; a few pairs are missing some days.",
        cadence=Cadence.DAILY,
    ),
)
