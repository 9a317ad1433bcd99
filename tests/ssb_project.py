"""A second business for starsmith: a Star Schema Benchmark-like star (TPC-H reshaped).

Written into a folder as a user would write it (``starsmith.toml`` and model files as text, with
relative imports between ``models/``, ``models/staging/`` and ``models/marts/``), with a
deterministic landing zone: the reference sources (customer, part, supplier) land once, the
lineorder source lands every day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

FIRST_DAY = date(1997, 12, 30)  # five days cross a year end, so a one-year filter selects a part
MONEY = pl.Decimal(15, 2)
REGIONS = {"AMERICA": ("ARGENTINA", "BRAZIL", "CANADA", "PERU", "UNITED STATES"),
           "ASIA": ("CHINA", "INDIA", "INDONESIA", "JAPAN", "VIETNAM"),
           "EUROPE": ("FRANCE", "GERMANY", "ROMANIA", "RUSSIA", "UNITED KINGDOM"),
           "AFRICA": ("ALGERIA", "ETHIOPIA", "KENYA", "MOROCCO", "MOZAMBIQUE"),
           "MIDDLE EAST": ("EGYPT", "IRAN", "IRAQ", "JORDAN", "SAUDI ARABIA")}
NATIONS = [(n, r) for r, ns in REGIONS.items() for n in ns]
SEGMENTS = ("AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY")
COLORS = ("almond", "blue", "coral", "khaki", "linen", "navy", "olive", "plum", "rose", "tan")

STARSMITH_TOML = """\
name = "ssb"
models = "models"
landing = "landing"
state = ".state"
target = "dev"

[targets.dev]
type = "duckdb"
path = ".state/warehouse.duckdb"
memory_limit = "1GB"
"""

SOURCES_PY = '''\
"""The Star Schema Benchmark feeds: three reference lists, landed now and then, and the daily
order lines."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Source

MONEY = pl.Decimal(15, 2)

CUSTOMER = Source(
    "customer", "parquet",
    (
        Column("custkey", pl.Int64(), "customer number", nullable=False),
        Column("name", pl.String(), "name"),
        Column("city", pl.String(), "city"),
        Column("nation", pl.String(), "nation"),
        Column("region", pl.String(), "region"),
        Column("mktsegment", pl.String(), "market segment"),
    ),
    "The customer list, exported now and then.",
    cadence=Cadence.REFERENCE,
)

PART = Source(
    "part", "parquet",
    (
        Column("partkey", pl.Int64(), "part number", nullable=False),
        Column("name", pl.String(), "name"),
        Column("mfgr", pl.String(), "manufacturer, MFGR#1..5"),
        Column("category", pl.String(), "category, MFGR#11..55"),
        Column("brand", pl.String(), "brand, MFGR#1101..5540"),
        Column("color", pl.String(), "colour"),
    ),
    "The part catalogue, exported now and then.",
    cadence=Cadence.REFERENCE,
)

SUPPLIER = Source(
    "supplier", "parquet",
    (
        Column("suppkey", pl.Int64(), "supplier number", nullable=False),
        Column("name", pl.String(), "name"),
        Column("city", pl.String(), "city"),
        Column("nation", pl.String(), "nation"),
        Column("region", pl.String(), "region"),
    ),
    "The supplier list, exported now and then.",
    cadence=Cadence.REFERENCE,
)

LINEORDER = Source(
    "lineorder", "parquet",
    (
        Column("orderkey", pl.Int64(), "order number", nullable=False),
        Column("linenumber", pl.Int32(), "line of the order", nullable=False),
        Column("custkey", pl.Int64(), "customer"),
        Column("partkey", pl.Int64(), "part"),
        Column("suppkey", pl.Int64(), "supplier"),
        Column("orderdate", pl.Date(), "day the order was placed"),
        Column("quantity", pl.Int32(), "units"),
        Column("extendedprice", MONEY, "quantity x the part's price"),
        Column("discount", MONEY, "discount as a fraction, 0.00 to 0.10"),
    ),
    "Order lines, one extract per day (an order can land up to two days late).",
    cadence=Cadence.DAILY,
)
'''

STG_LINEORDER_PY = '''\
"""Staging of the daily order lines: one partition per landing day; unusable rows quarantined."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy, quarantine_when

from ..sources import LINEORDER


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.lineorder"].unique(maintain_order=True).with_columns(
        load_date=pl.lit(ctx.logical_date))
    return quarantine_when(rows, [(pl.col("orderdate").is_null(), "orderdate is NULL")])


MODEL = Model(
    name="stg_lineorder",
    kind=Kind.STAGING,
    inputs=(Input("landing.lineorder"),),
    columns=(*LINEORDER.columns,
             Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
    description="Order lines as landed, one partition per landing day.",
)
'''

DIM_TEMPLATE = '''\
"""{title}: every attribute but the name is history (SCD2); the name is overwritten."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (
    BuildContext,
    ChangeDetection,
    DimensionSpec,
    Input,
    Kind,
    Model,
    SCDType,
    Strategy,
    dimension_columns,
)

from ..sources import {source}

SPEC = DimensionSpec(
    name="dim_{entity}",
    surrogate_key="{entity}_key",
    natural_key=("{natural_key}",),
    columns=(("name", SCDType.OVERWRITE),
             *((c, SCDType.VERSIONED) for c in {versioned!r})),
    detection=ChangeDetection.CHECK,
    snapshot=True,
)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.{entity}"].select("{natural_key}", *SPEC.attributes)


MODEL = Model(
    name="dim_{entity}",
    kind=Kind.DIMENSION,
    inputs=(Input("landing.{entity}"),),
    columns=dimension_columns(SPEC, {source}.columns),
    transform=transform,
    strategy=Strategy.SCD,
    dimension=SPEC,
    unique_key=("{entity}_key",),
    description="One row per version of a {entity}.",
)
'''

DIM_DATE_PY = '''\
"""The calendar of the benchmark: 1992 to 1998."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import polars as pl

from starsmith import DATE_SCHEMA, BuildContext, Column, Kind, Model, Strategy, date_dimension


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return date_dimension(date(1992, 1, 1), date(1998, 12, 31))


MODEL = Model(
    name="dim_date",
    kind=Kind.DIMENSION,
    inputs=(),
    columns=tuple(Column(c, t, c.replace("_", " "), nullable=c != "date_key")
                  for c, t in DATE_SCHEMA.items()),
    transform=transform,
    strategy=Strategy.FULL,
    unique_key=("date_key",),
    description="One row per calendar day, keyed yyyymmdd.",
)
'''

FACT_LINEORDER_PY = '''\
"""Order lines: a transaction fact, keyed to the customer, part and supplier as they were on the
order date; revenue (extendedprice x discount) is exact."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (
    Additivity,
    BuildContext,
    Column,
    FactSpec,
    FactType,
    Input,
    KeyLookup,
    Kind,
    MissingKey,
    Model,
    References,
    Strategy,
    date_key,
)

from ..sources import MONEY
from . import dim_customer, dim_part, dim_supplier

REVENUE = pl.Decimal(18, 4)

FACT = FactSpec(
    name="fact_lineorder",
    fact_type=FactType.TRANSACTION,
    grain=("orderkey", "linenumber"),
    event_date="orderdate",
    lookups=(
        KeyLookup(dim_customer.SPEC, ("custkey",), "orderdate", MissingKey.UNKNOWN),
        KeyLookup(dim_part.SPEC, ("partkey",), "orderdate", MissingKey.UNKNOWN),
        KeyLookup(dim_supplier.SPEC, ("suppkey",), "orderdate", MissingKey.UNKNOWN),
    ),
    measures=(("quantity", Additivity.ADDITIVE), ("extendedprice", Additivity.ADDITIVE),
              ("discount", Additivity.NON_ADDITIVE), ("revenue", Additivity.ADDITIVE)),
)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    lines = inputs["stg_lineorder"].unique(subset=["orderkey", "linenumber"], keep="last",
                                           maintain_order=True)
    # Cast one side up first: the product keeps every decimal place (2 + 2).
    return lines.with_columns(
        date_key=date_key("orderdate"),
        revenue=pl.col("extendedprice").cast(REVENUE) * pl.col("discount"))


MODEL = Model(
    name="fact_lineorder",
    kind=Kind.FACT,
    inputs=(Input("stg_lineorder"), Input("dim_customer"), Input("dim_part"),
            Input("dim_supplier"), Input("dim_date")),
    columns=(
        Column("orderkey", pl.Int64(), "order number (degenerate dimension)", nullable=False),
        Column("linenumber", pl.Int32(), "line of the order", nullable=False),
        Column("orderdate", pl.Date(), "the order date; the partition", nullable=False),
        Column("date_key", pl.Int64(), "dim_date key of orderdate", nullable=False),
        Column("customer_key", pl.Int64(), "the customer as of the order date", nullable=False),
        Column("part_key", pl.Int64(), "the part as of the order date", nullable=False),
        Column("supplier_key", pl.Int64(), "the supplier as of the order date", nullable=False),
        Column("quantity", pl.Int32(), "units (additive)"),
        Column("extendedprice", MONEY, "quantity x price (additive)"),
        Column("discount", MONEY, "discount fraction (non-additive)"),
        Column("revenue", REVENUE, "extendedprice x discount, exact (additive)"),
    ),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="orderdate",
    unique_key=("orderkey", "linenumber"),
    fact=FACT,
    checks=(References("customer_key", "dim_customer", max_unknown_rate=0.0),
            References("part_key", "dim_part", max_unknown_rate=0.0),
            References("supplier_key", "dim_supplier", max_unknown_rate=0.0),
            References("date_key", "dim_date", max_unknown_rate=0.0)),
    description="Order lines, keyed point-in-time to the customer, part and supplier.",
)
'''

MODEL_FILES = {
    "sources.py": SOURCES_PY,
    "staging/stg_lineorder.py": STG_LINEORDER_PY,
    "marts/dim_customer.py": DIM_TEMPLATE.format(
        title="Customers", entity="customer", source="CUSTOMER", natural_key="custkey",
        versioned=("city", "nation", "region", "mktsegment")),
    "marts/dim_part.py": DIM_TEMPLATE.format(
        title="Parts", entity="part", source="PART", natural_key="partkey",
        versioned=("mfgr", "category", "brand", "color")),
    "marts/dim_supplier.py": DIM_TEMPLATE.format(
        title="Suppliers", entity="supplier", source="SUPPLIER", natural_key="suppkey",
        versioned=("city", "nation", "region")),
    "marts/dim_date.py": DIM_DATE_PY,
    "marts/fact_lineorder.py": FACT_LINEORDER_PY,
}
MODELS = ("stg_lineorder", "dim_customer", "dim_part", "dim_supplier", "dim_date",
          "fact_lineorder")


@dataclass(frozen=True)
class Scale:
    customers: int = 200
    parts: int = 100
    suppliers: int = 20
    days: int = 5
    lines_per_day: int = 500


def landing_days(scale: Scale) -> list[date]:
    return [FIRST_DAY + timedelta(days=i) for i in range(scale.days)]


def write_project(root: Path) -> Path:
    """The project's files, as text; returns the project folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "starsmith.toml").write_text(STARSMITH_TOML)
    for rel, text in MODEL_FILES.items():
        path = root / "models" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def land(landing: Path, source: str, day: date, frame: pl.DataFrame) -> Path:
    folder = landing / source / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    frame.write_parquet(path)
    return path


def _money(cents: np.ndarray) -> pl.Series:
    return pl.Series([Decimal(int(c)).scaleb(-2) for c in cents], dtype=MONEY)


def customers(scale: Scale, rng: np.random.Generator) -> pl.DataFrame:
    n = scale.customers
    nation = rng.integers(0, len(NATIONS), n)
    return pl.DataFrame({
        "custkey": np.arange(1, n + 1, dtype=np.int64),
        "name": [f"Customer#{k:09d}" for k in range(1, n + 1)],
        "city": [f"{NATIONS[i][0][:9]:<9}{rng.integers(0, 10)}" for i in nation],
        "nation": [NATIONS[i][0] for i in nation],
        "region": [NATIONS[i][1] for i in nation],
        "mktsegment": [SEGMENTS[i] for i in rng.integers(0, len(SEGMENTS), n)],
    })


def suppliers(scale: Scale, rng: np.random.Generator) -> pl.DataFrame:
    n = scale.suppliers
    # every region has suppliers, whatever the seed
    nation = (np.arange(n) * 5 + rng.integers(0, 5, n)) % len(NATIONS)
    return pl.DataFrame({
        "suppkey": np.arange(1, n + 1, dtype=np.int64),
        "name": [f"Supplier#{k:09d}" for k in range(1, n + 1)],
        "city": [f"{NATIONS[i][0][:9]:<9}{rng.integers(0, 10)}" for i in nation],
        "nation": [NATIONS[i][0] for i in nation],
        "region": [NATIONS[i][1] for i in nation],
    })


def parts(scale: Scale, rng: np.random.Generator) -> pl.DataFrame:
    n = scale.parts
    mfgr = rng.integers(1, 6, n)
    category = mfgr * 10 + rng.integers(1, 6, n)
    brand = category * 100 + rng.integers(1, 41, n)
    # a few parts of MFGR#12 whatever the seed, so the Q2.1-like answer is never empty
    category[:6], brand[:6] = 12, 1200 + np.arange(1, 7)
    mfgr[:6] = 1
    return pl.DataFrame({
        "partkey": np.arange(1, n + 1, dtype=np.int64),
        "name": [f"{COLORS[i]} part" for i in rng.integers(0, len(COLORS), n)],
        "mfgr": [f"MFGR#{m}" for m in mfgr],
        "category": [f"MFGR#{c}" for c in category],
        "brand": [f"MFGR#{b}" for b in brand],
        "color": [COLORS[i] for i in rng.integers(0, len(COLORS), n)],
    })


def lineorders(scale: Scale, day_index: int, day: date, rng: np.random.Generator,
               price_cents: np.ndarray) -> pl.DataFrame:
    """About ``lines_per_day`` lines in orders of 1 to 7 lines; an order can be 0-2 days old."""
    sizes: list[int] = []
    while sum(sizes) < scale.lines_per_day:
        sizes.append(int(rng.integers(1, 8)))
    n_orders, n = len(sizes), sum(sizes)
    first_order = (day_index + 1) * 100_000
    order = np.repeat(np.arange(first_order, first_order + n_orders, dtype=np.int64), sizes)
    line = np.concatenate([np.arange(1, s + 1, dtype=np.int32) for s in sizes])
    late = rng.choice(3, n_orders, p=[0.8, 0.15, 0.05])
    orderdate = [day - timedelta(days=int(d)) for d in np.repeat(late, sizes)]
    cust = np.repeat(rng.integers(1, scale.customers + 1, n_orders), sizes)
    part = rng.integers(1, scale.parts + 1, n)
    quantity = rng.integers(1, 51, n).astype(np.int32)
    return pl.DataFrame({
        "orderkey": order,
        "linenumber": line,
        "custkey": cust.astype(np.int64),
        "partkey": part.astype(np.int64),
        "suppkey": rng.integers(1, scale.suppliers + 1, n).astype(np.int64),
        "orderdate": pl.Series(orderdate, dtype=pl.Date()),
        "quantity": quantity,
        "extendedprice": _money(quantity.astype(np.int64) * price_cents[part - 1]),
        "discount": _money(rng.integers(0, 11, n)),
    })


def land_all(landing: Path, scale: Scale | None = None, *, seed: int = 1998) -> list[date]:
    """Land the reference lists once, on the first day, and the order lines every day; returns
    the days."""
    scale = scale or Scale()
    rng = np.random.default_rng(seed)
    days = landing_days(scale)
    ref = days[0]
    land(landing, "customer", ref, customers(scale, rng))
    land(landing, "part", ref, parts(scale, rng))
    land(landing, "supplier", ref, suppliers(scale, rng))
    price_cents = rng.integers(90_000, 210_000, scale.parts).astype(np.int64)  # 900.00-2099.99
    for i, day in enumerate(days):
        land(landing, "lineorder", day, lineorders(scale, i, day, rng, price_cents))
    return days
