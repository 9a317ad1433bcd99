"""A catch-up builds many pending days with one step per model per range
(orchestration/ranges.py); it must leave every table exactly as the nights would have.

The reference is the nights themselves: the same user project, landed one day at a time and
built after each landing. The catch-up lands everything first and builds once. The project is
messy where a range could go wrong:

- customers come as a daily change feed: C3 and C6 arrive on days 4 and 6, named by sales since
  days 2 and 1 (the nights quarantined those sales as missing until a night rebuilt their
  partition after the arrival); C1's change of day 2 is told on day 6, and a change of C2 older
  than one already built arrives on day 7 (its history is re-derived); a sale names C9, whom
  the feed never sends;
- the product list (reference data) lands on days 0, 5 and 9: a category changes, P9 is added
  (sold since day 2: Unknown until then), then dropped;
- sales land a day late (inside the fact's three-day lookback) and a week late (past it), some
  days are sent twice, and a negative quantity is quarantined by staging;
- staging and the fact stamp the run that built each row (``ctx.run_id``), a full-replace
  model stamps its logical date, and a model keeps the product list of every day (a partition
  a day, whether the list landed that day or not): each must be the night's.

Then two projects a range must not build in one go: a key that moves to another partition (the
fact rebuilds that range night by night in its step, each night keyed as of itself) and a merge
model (the whole catch-up runs night by night, and says why). Each is compared with its nights
the same way.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.user_projects import STARSMITH, build_in_process, starsmith_toml

FIRST = date(2025, 1, 6)
DAYS = 12

SOURCES = '''\
"""Daily sales, and the product list landed now and then."""

from __future__ import annotations

import polars as pl

from starsmith import Cadence, Column, Source

SALES = Source("sales", "parquet", (
    Column("sale_id", pl.Int64(), "sale", nullable=False),
    Column("line", pl.Int32(), "line of the sale", nullable=False),
    Column("product", pl.String(), "product code"),
    Column("customer", pl.String(), "customer code"),
    Column("sold_on", pl.Date(), "the day of the sale", nullable=False),
    Column("qty", pl.Int64(), "units"),
    Column("amount", pl.Decimal(12, 2), "value"),
), "Sales, exported each night.", cadence=Cadence.DAILY)

CUSTOMERS = Source("customers", "parquet", (
    Column("customer", pl.String(), "customer code", nullable=False),
    Column("segment", pl.String(), "market segment"),
    Column("updated_at", pl.Datetime("us"), "when the change happened", nullable=False),
), "The day's changes to customers.", cadence=Cadence.CHANGE_FEED)

PRODUCTS = Source("products", "parquet", (
    Column("code", pl.String(), "product code", nullable=False),
    Column("name", pl.String(), "name"),
    Column("category", pl.String(), "category"),
), "The product list, exported now and then.", cadence=Cadence.REFERENCE)
'''

STG = '''\
"""Sales as landed, one partition per landing day, stamped with the run that built them."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy, quarantine_when

from .sources import SALES


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    rows = inputs["landing.sales"].unique(maintain_order=True).with_columns(
        landed_on=pl.lit(ctx.logical_date), loaded_by=pl.lit(ctx.run_id))
    return quarantine_when(rows, [(pl.col("qty") < 0, "sale {sale_id} has a negative qty")])


MODEL = Model(
    name="stg_sales", kind=Kind.STAGING, inputs=(Input("landing.sales"),),
    columns=(*SALES.columns, Column("landed_on", pl.Date(), "landing day", nullable=False),
             Column("loaded_by", pl.String(), "the run that staged it", nullable=False)),
    transform=transform, strategy=Strategy.PARTITION, partition_by="landed_on",
    description="Sales as landed.")
'''

DIM = '''\
"""Products: the category is history, the name is overwritten; a dropped product is closed."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (BuildContext, ChangeDetection, DimensionSpec, Input, Kind, Model,
                       SCDType, Strategy, dimension_columns)

from .sources import PRODUCTS

SPEC = DimensionSpec(
    name="dim_product", surrogate_key="product_key", natural_key=("code",),
    columns=(("name", SCDType.OVERWRITE), ("category", SCDType.VERSIONED)),
    detection=ChangeDetection.CHECK, snapshot=True)


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.products"].select("code", "name", "category")


MODEL = Model(
    name="dim_product", kind=Kind.DIMENSION, inputs=(Input("landing.products"),),
    columns=dimension_columns(SPEC, PRODUCTS.columns), transform=transform,
    strategy=Strategy.SCD, dimension=SPEC, unique_key=("product_key",),
    description="One row per version of a product.")
'''

STG_CUSTOMERS = '''\
"""Customer changes as landed, one partition per landing day."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy

from .sources import CUSTOMERS


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.customers"].with_columns(landed_on=pl.lit(ctx.logical_date))


MODEL = Model(
    name="stg_customers", kind=Kind.STAGING, inputs=(Input("landing.customers"),),
    columns=(*CUSTOMERS.columns, Column("landed_on", pl.Date(), "landing day", nullable=False)),
    transform=transform, strategy=Strategy.PARTITION, partition_by="landed_on",
    description="Customer changes as landed.")
'''

DIM_CUSTOMER = '''\
"""Customers: the segment is history, dated by the change; late changes are placed."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (BuildContext, ChangeDetection, DimensionSpec, Input, Kind, Model,
                       SCDType, Strategy, dimension_columns)

from .sources import CUSTOMERS

SPEC = DimensionSpec(
    name="dim_customer", surrogate_key="customer_key", natural_key=("customer",),
    columns=(("segment", SCDType.VERSIONED),), detection=ChangeDetection.TIMESTAMP,
    updated_at="updated_at")


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_customers"].select("customer", "segment", "updated_at")


MODEL = Model(
    name="dim_customer", kind=Kind.DIMENSION, inputs=(Input("stg_customers"),),
    columns=dimension_columns(SPEC, CUSTOMERS.columns[:2]), transform=transform,
    strategy=Strategy.SCD, dimension=SPEC, unique_key=("customer_key",),
    description="One row per version of a customer.")
'''

FACT = '''\
"""Sale lines keyed to the product as it was on the day of the sale."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import (Additivity, BuildContext, Column, FactSpec, FactType, Input, KeyLookup,
                       Kind, MissingKey, Model, Strategy)

from . import dim_customer, dim_product

FACT = FactSpec(
    name="fact_sales", fact_type=FactType.TRANSACTION, grain=("sale_id", "line"),
    event_date="sold_on", lookback_days=3,
    lookups=(KeyLookup(dim_product.SPEC, ("product",), "sold_on", MissingKey.UNKNOWN),
             KeyLookup(dim_customer.SPEC, ("customer",), "sold_on", MissingKey.QUARANTINE)),
    measures=(("qty", Additivity.ADDITIVE), ("amount", Additivity.ADDITIVE)))


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_sales"].unique(subset=["sale_id", "line"], keep="last",
                                      maintain_order=True).with_columns(built_by=pl.lit(ctx.run_id))


MODEL = Model(
    name="fact_sales", kind=Kind.FACT,
    inputs=(Input("stg_sales"), Input("dim_product"), Input("dim_customer")),
    columns=(Column("sale_id", pl.Int64(), "sale", nullable=False),
             Column("line", pl.Int32(), "line", nullable=False),
             Column("sold_on", pl.Date(), "the partition", nullable=False),
             Column("product_key", pl.Int64(), "the product then", nullable=False),
             Column("customer_key", pl.Int64(), "the customer then", nullable=False),
             Column("qty", pl.Int64(), "units"),
             Column("amount", pl.Decimal(12, 2), "value"),
             Column("built_by", pl.String(), "the run that keyed it", nullable=False)),
    transform=transform, strategy=Strategy.PARTITION, partition_by="sold_on",
    unique_key=("sale_id", "line"), fact=FACT, description="Sale lines.")
'''

TOTALS = '''\
"""Units sold so far, replaced each night and stamped with its logical date."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy, Window


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_sales"].group_by("product").agg(units=pl.col("qty").sum()).with_columns(
        as_of=pl.lit(ctx.logical_date))


MODEL = Model(
    name="product_totals", kind=Kind.STAGING, inputs=(Input("stg_sales", Window.ALL),),
    columns=(Column("product", pl.String(), "product code"),
             Column("units", pl.Int64(), "units so far"),
             Column("as_of", pl.Date(), "the night it was built", nullable=False)),
    transform=transform, strategy=Strategy.FULL, description="Units so far.")
'''

PRODUCT_DAYS = '''\
"""The product list as each day reads it (the latest landed on or before), one partition a day."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy

from .sources import PRODUCTS


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.products"].with_columns(as_of=pl.lit(ctx.logical_date))


MODEL = Model(
    name="product_days", kind=Kind.STAGING, inputs=(Input("landing.products"),),
    columns=(*PRODUCTS.columns, Column("as_of", pl.Date(), "the day", nullable=False)),
    transform=transform, strategy=Strategy.PARTITION, partition_by="as_of",
    description="The product list of each day.")
'''

MERGED = '''\
"""The latest line of each sale, merged night by night."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stg_sales"].select("sale_id", "qty").unique("sale_id", keep="last")


MODEL = Model(
    name="latest_sale", kind=Kind.STAGING, inputs=(Input("stg_sales"),),
    columns=(Column("sale_id", pl.Int64(), "sale", nullable=False),
             Column("qty", pl.Int64(), "units")),
    transform=transform, strategy=Strategy.MERGE, unique_key=("sale_id",),
    description="Latest line of each sale.")
'''


def _product_landings() -> dict[int, pl.DataFrame]:
    """The product list by landing day (day offsets from FIRST)."""
    base = {"code": ["P1", "P2", "P3"], "name": ["bolt", "nut", "gear"],
            "category": ["metal", "metal", "parts"]}
    day5 = {"code": ["P1", "P2", "P3", "P9"], "name": ["bolt", "nut", "gear wheel", "spring"],
            "category": ["metal", "fasteners", "parts", "parts"]}
    day9 = {"code": ["P1", "P2", "P3"], "name": ["bolt", "nut", "gear wheel"],
            "category": ["hardware", "fasteners", "parts"]}
    return {0: pl.DataFrame(base), 5: pl.DataFrame(day5), 9: pl.DataFrame(day9)}


def _customers(day: int) -> pl.DataFrame:
    """The customer changes landed on FIRST + day (most days none)."""
    def at(d: int, hour: int) -> datetime:
        return datetime.combine(FIRST + timedelta(d), time(hour))

    changes = {
        0: [("C1", "retail", at(0, 10)), ("C2", "retail", at(0, 11))],
        3: [("C2", "trade", at(3, 9))],
        4: [("C3", "retail", at(4, 8))],
        # C6 arrives, named by sales since day 1; C1 changed on day 2, told only now
        6: [("C6", "trade", at(6, 7)), ("C1", "trade", at(2, 12))],
        # older than a change of C2 already built: its history is re-derived
        7: [("C2", "wholesale", at(1, 15))],
    }.get(day, [])
    return pl.DataFrame(changes, orient="row", schema={
        "customer": pl.String(), "segment": pl.String(), "updated_at": pl.Datetime("us")})


def _sales(day: int, *, moved_key: bool) -> pl.DataFrame:
    """The sales landed on FIRST + day: messy on purpose."""
    today = FIRST + timedelta(day)
    codes = ["P1", "P2", "P3"] + (["P9"] if day >= 2 else [])
    who = ["C1", "C2", "C6" if day >= 1 else "C2", "C3"]  # C6 and C3 before they arrive
    rows = [(day * 100 + i, 1, code, who[i], today, i + 1, Decimal(f"{i + 1}.50"))
            for i, code in enumerate(codes)]
    if day >= 1:  # a sale of the day before, landed a day late (inside the lookback), by a
        # customer the feed never sends (quarantined by the lookup)
        rows.append((day * 100 + 50, 1, "P2", "C9", today - timedelta(1), 2, Decimal("3.00")))
    if day == 8:  # a sale of day 1, landed a week late (past the lookback)
        rows.append((8850, 1, "P3", "C1", FIRST + timedelta(1), 4, Decimal("8.00")))
    if day == 6:  # a negative quantity: quarantined by staging
        rows.append((660, 1, "P1", "C1", today, -1, Decimal("1.00")))
    if moved_key and day == 7:  # sale 301 again, dated another day: a key in two partitions
        rows.append((301, 1, "P2", "C2", today, 9, Decimal("9.00")))
    frame = pl.DataFrame(rows, orient="row", schema={
        "sale_id": pl.Int64(), "line": pl.Int32(), "product": pl.String(),
        "customer": pl.String(), "sold_on": pl.Date(), "qty": pl.Int64(),
        "amount": pl.Decimal(12, 2)})
    if day % 4 == 3:  # sent twice
        frame = pl.concat([frame, frame])
    return frame


def _write(root: Path, *, merged: bool) -> None:
    models = root / "models"
    models.mkdir(parents=True)
    (root / "starsmith.toml").write_text(starsmith_toml("shop"))
    for name, text in {"sources": SOURCES, "stg_sales": STG, "dim_product": DIM,
                       "stg_customers": STG_CUSTOMERS, "dim_customer": DIM_CUSTOMER,
                       "fact_sales": FACT, "product_totals": TOTALS, "product_days": PRODUCT_DAYS,
                       **({"latest_sale": MERGED} if merged else {})}.items():
        (models / f"{name}.py").write_text(text)


def _land(root: Path, day: int, *, moved_key: bool) -> None:
    when = (FIRST + timedelta(day)).isoformat()
    folder = root / "landing" / "sales" / f"date={when}"
    folder.mkdir(parents=True)
    _sales(day, moved_key=moved_key).write_parquet(folder / "part-0.parquet")
    (folder / "_SUCCESS").touch()
    folder = root / "landing" / "customers" / f"date={when}"
    folder.mkdir(parents=True)
    _customers(day).write_parquet(folder / "part-0.parquet")
    (folder / "_SUCCESS").touch()
    products = _product_landings().get(day)
    if products is not None:
        folder = root / "landing" / "products" / f"date={when}"
        folder.mkdir(parents=True)
        products.write_parquet(folder / "part-0.parquet")
        (folder / "_SUCCESS").touch()


def _tables(warehouse: Path) -> dict[str, pl.DataFrame]:
    """Every table of the warehouse (and the days each model built), rows sorted."""
    out: dict[str, pl.DataFrame] = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        names = con.sql("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
                        ).fetchall()
        for (name,) in names:
            frame = con.sql(f'SELECT * FROM main."{name}"').pl()
            out[name] = frame.sort(frame.columns, nulls_last=True)
        out["_watermarks"] = con.sql("SELECT model, logical_date FROM _starsmith.watermarks "
                                     "ORDER BY ALL").pl()
    return out


def _project(tmp: Path, name: str, *, merged: bool = False, moved_key: bool = False
             ) -> tuple[Path, Path]:
    """(the nights' project, built after each landing; the catch-up's, all landed, unbuilt)."""
    nights, catch_up = tmp / f"{name}-nights", tmp / f"{name}-catch-up"
    for root in (nights, catch_up):
        _write(root, merged=merged)
    for day in range(DAYS):
        _land(nights, day, moved_key=moved_key)
        done = build_in_process(nights)
        assert done.returncode == 0, done.stdout + done.stderr
        _land(catch_up, day, moved_key=moved_key)
    return nights, catch_up


def _assert_same(nights: Path, catch_up: Path) -> None:
    want = _tables(nights / ".state" / "warehouse.duckdb")
    got = _tables(catch_up / ".state" / "warehouse.duckdb")
    assert sorted(got) == sorted(want)
    for name, frame in want.items():
        mine = got[name]
        if name.endswith("__quarantine"):
            # a quarantine table gains the columns of whatever rows were ever held (a night's
            # empty frame may carry a lookup's): the same rows, extra columns empty
            shared = [c for c in frame.columns if c in mine.columns]
            extra = [c for c in (*frame.columns, *mine.columns) if c not in shared]
            both = pl.concat([frame, mine], how="diagonal_relaxed")
            assert all(both[c].null_count() == both.height for c in extra), (name, extra)
            frame, mine = (f.select(shared).sort(shared, nulls_last=True) for f in (frame, mine))
        assert mine.equals(frame), (name, mine, frame)


def _steps(warehouse: Path, model: str) -> int:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return int(con.sql("SELECT count(*) FROM _starsmith.run_log WHERE model = ?",
                           params=[model]).fetchall()[0][0])


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _project(tmp_path_factory.mktemp("ranges"), "shop")


def test_ranges_through_temporal_equal_the_nights(shop: tuple[Path, Path]) -> None:
    nights, catch_up = shop
    root = catch_up.parent / "shop-temporal"
    shutil.copytree(catch_up, root)
    done = subprocess.run([str(STARSMITH), "build"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # one range: one step per model
    assert f"{DAYS} days built in 1 range(s)" in done.stdout, done.stdout
    warehouse = root / ".state" / "warehouse.duckdb"
    assert _steps(warehouse, "fact_sales") == 1
    assert _steps(warehouse, "stg_sales") == 1
    _assert_same(nights, root)
    facts = _tables(warehouse)["fact_sales"]
    spring = facts.filter(pl.col("sale_id") % 100 == 3)  # the P9 sales of each day
    # Unknown while its list had not landed: the sale of day 2, whose partition's last night
    # was day 4; those of days 3 and 4 were keyed again by nights 5 and 6 (the lookback)
    keys = spring.sort("sold_on")["product_key"].to_list()
    assert keys[0] == -1 and min(keys[1:9]) > 0, keys
    assert set(facts["built_by"].to_list()) > {f"build-{FIRST + timedelta(DAYS - 1)}"}
    # C6 is in the dimension now, yet the sales of days 2 and 3 stay held back: the last nights
    # of their partitions (4 and 5) came before C6 arrived (day 6)
    held = _tables(warehouse)["fact_sales__quarantine"]
    assert held.filter(pl.col("customer") == "C6")["sale_id"].to_list() == [202, 302]
    assert _tables(warehouse)["dim_customer"].filter(pl.col("customer") == "C6").height == 1


def test_ranges_in_process_equal_the_nights(shop: tuple[Path, Path]) -> None:
    nights, catch_up = shop
    root = catch_up.parent / "shop-in-process"
    shutil.copytree(catch_up, root)
    done = build_in_process(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in 1 range(s)" in done.stdout
    _assert_same(nights, root)
    quarantined = _tables(root / ".state" / "warehouse.duckdb")["stg_sales__quarantine"]
    assert quarantined["sale_id"].to_list() == [660]
    # a re-run builds nothing and changes nothing
    again = build_in_process(root)
    assert again.returncode == 0 and "nothing to build" in again.stdout, again.stdout
    _assert_same(nights, root)


def test_a_key_in_two_partitions_rebuilds_that_range_night_by_night(tmp_path: Path) -> None:
    nights, catch_up = _project(tmp_path, "moved", moved_key=True)
    done = build_in_process(catch_up)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in 1 range(s)" in done.stdout
    _assert_same(nights, catch_up)
    quarantined = _tables(catch_up / ".state" / "warehouse.duckdb")["fact_sales__quarantine"]
    moved = quarantined.filter(pl.col("sale_id") == 301)  # held back by its night
    assert moved["reason"].to_list() == ["key (sale_id, line) already published in partition "
                                         f"{FIRST + timedelta(3)}"], moved
    # the fact's range ran as its nights, in its step
    assert _steps(catch_up / ".state" / "warehouse.duckdb", "fact_sales") == DAYS


def test_a_merge_model_keeps_the_catch_up_night_by_night(tmp_path: Path) -> None:
    nights, catch_up = _project(tmp_path, "merged", merged=True)
    done = build_in_process(catch_up)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{DAYS} days built night by night (latest_sale: its strategy (merge)" in " ".join(
        done.stdout.split()), done.stdout
    _assert_same(nights, catch_up)


def test_each_reason_to_build_night_by_night_is_named() -> None:
    """The demo's models, each judged: what keeps a catch-up night by night is named per model
    (the first of them is the build's note), and the models a range can build are not."""
    from starsmith.orchestration.ranges import judged_per_night, not_batchable, why_not_ranges
    from starsmith.scaffold import demo_catalogue

    cat = demo_catalogue()
    why = {name: not_batchable(cat, name) for name in cat.order}
    assert why["stg_orders"] == ""  # a staging table partitioned by landing day
    assert why["dim_date"] == ""  # built from nothing: a range builds it as its last night
    assert why["dim_product"] == ""  # an SCD no fact adds inferred members to
    assert why["dim_customer"] == "fact_sales adds inferred members to it"
    assert why["stg_order_lines"] == "its check Volume is judged per night"
    assert why["stg_customers"] == ("its rule expect_table_row_count_to_be_between is judged "
                                    "over each night's rows")
    assert why["fact_order_fulfilment"] == "an accumulating snapshot merges night by night"
    assert why["fact_inventory_daily"] == "its transform reads dim_product as of each night"
    assert why["fact_sales"] == "it adds inferred members to a dimension"
    assert judged_per_night(cat.models["fact_sales"]) == "its check References is judged per night"
    assert judged_per_night(cat.models["fact_inventory_daily"]) == (
        "its rule expect_column_proportion_of_unique_values_to_be_between is judged over each "
        "night's rows")
    assert judged_per_night(cat.models["dim_customer"]) == (  # its uniqueness rule is its own key's
        "its rule expect_column_values_to_not_be_null has mostly=0.95")
    assert why_not_ranges(cat, list(cat.order)) != ""


def test_nights_share_one_transform_only_when_the_context_changes_nothing(tmp_path: Path
                                                                          ) -> None:
    """A range's fact runs its transform once for the nights whose plans are the same (the
    context unused), and once a night when the context is in the plan: a literal, or a frame
    built from it."""
    from starsmith.contract import BuildContext
    from starsmith.discover import load_catalogue
    from starsmith.orchestration.fact_range import _alike
    from starsmith.project import load_project

    _write(tmp_path, merged=False)
    cat = load_catalogue(load_project(tmp_path))
    nights = [FIRST + timedelta(n) for n in range(5)]

    def groups(model: str, inp: str) -> int:
        empty = pl.DataFrame(schema=cat.models[inp].schema if inp in cat.models
                             else dict((c.name, c.dtype) for c in cat.sources[inp].columns))
        return len(_alike(cat.models[model], {inp: empty.lazy()}, nights))

    assert groups("fact_sales", "stg_sales") == 5  # stamps ctx.run_id
    assert groups("product_totals", "stg_sales") == 5  # stamps ctx.logical_date
    assert groups("dim_product", "landing.products") == 1  # never reads its context
    assert groups("stg_customers", "landing.customers") == 5

    def spine(inputs: dict[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
        day = pl.DataFrame({"code": ["P1"], "seen": [ctx.logical_date]})  # a frame, not a lit
        return inputs["landing.products"].join(day.lazy(), on="code", how="left")

    cat.models["dim_product"] = dataclasses.replace(cat.models["dim_product"], transform=spine)
    assert groups("dim_product", "landing.products") == 5


def test_catch_ups_one_after_another_equal_the_nights(shop: tuple[Path, Path]) -> None:
    """Three catch-ups (days 0-5, 6-8, 9-11): each starts where the last one stopped; in the
    second the product list does not change (its replay writes nothing) while customers do."""
    nights, catch_up = shop
    root = catch_up.parent / "shop-in-steps"
    _write(root, merged=False)
    for first, last in ((0, 5), (6, 8), (9, 11)):
        for d in range(first, last + 1):
            _land(root, d, moved_key=False)
        done = build_in_process(root)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{last - first + 1} days built in 1 range(s)" in done.stdout, done.stdout
    _assert_same(nights, root)
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        written = con.sql("SELECT rows_written FROM _starsmith.run_log WHERE model = "
                          "'dim_product' ORDER BY logical_date").fetchall()
    assert [n for (n,) in written][1] == 0  # nothing landed for it in days 6-8


def test_a_catch_up_killed_in_its_fact_resumes_to_the_nights(shop: tuple[Path, Path]) -> None:
    """The process is killed (SIGKILL) after the fact's range is staged, before it publishes:
    staging and the dimensions have published the whole range. The next build runs the fact
    for those days without building the dimensions' older days again (that would apply an old
    input on top of a newer one), and ends as the nights did."""
    import os

    nights, catch_up = shop
    root = catch_up.parent / "shop-killed"
    shutil.copytree(catch_up, root)
    killed = subprocess.run([str(STARSMITH), "build", "--in-process"], cwd=root,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "STARSMITH_FAILPOINT": "after_stage:fact_sales"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert _steps(root / ".state" / "warehouse.duckdb", "dim_customer") == 1
    assert _steps(root / ".state" / "warehouse.duckdb", "fact_sales") == 0
    done = build_in_process(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{DAYS} day(s) some models built already" in done.stdout, done.stdout
    # the dimension ran again for its last day only (idempotent), never for an older one
    assert _steps(root / ".state" / "warehouse.duckdb", "dim_customer") == 2
    _assert_same(nights, root)
