"""A catch-up built in ranges on BigQuery ends with the tables the nights leave in DuckDB.

The range path (orchestration/ranges.py) has its own moving parts on a target: an SCD
dimension's replay publishes a log of the states it replaced (in ``_starsmith.asof``), and
the fact reads that log back to key each partition as of its night (orchestration/asof.py,
fact_range.py). tests/test_catch_up_ranges.py shows this on DuckDB; here the same messy user
project (late customers, late and duplicated sales, a product list that changes) is caught up in
one range on the BigQuery emulator through the official client, and compared with the same
landing built night by night into DuckDB, where single-day plans never take a range.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from starsmith.discover import load_catalogue
from starsmith.loaders.bigquery.warehouse import MERGE_MODE_ENV, BigQueryWarehouse
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import BuildPlan
from starsmith.orchestration.plan import landed_days, make_plan
from starsmith.orchestration.restate import with_restatement
from starsmith.project import load_project
from starsmith.registry import Catalogue
from tests.bigquery_emulator import PROJECT, Emulator
from tests.test_catch_up_ranges import DAYS, FIRST, _land, _write

pytestmark = pytest.mark.bigquery
DATASET = "starsmith_ranges"  # not test_bigquery_target.py's dataset: the emulator is shared
LAST = FIRST + timedelta(days=DAYS - 1)


@dataclass
class Built:
    """Both targets after their builds, and what the BigQuery catch-up planned."""

    bq: BigQueryWarehouse
    duck: DuckDBWarehouse
    cat: Catalogue
    plan: BuildPlan
    days: list[date]


def _nights(cat: Catalogue, landing: Path, days: list[date], warehouse: Path) -> None:
    """The reference: each landed day built on its own, as its night would have."""
    models = cat.select(None)
    for day in days:
        plan = make_plan(cat, models, [day])
        assert not plan.ranges  # one day is never a range
        outcomes = run_plan(plan, landing=str(landing), warehouse=str(warehouse), catalogue=cat)
        assert all(o.ok for o in outcomes), (day, [o.failed for o in outcomes])


@pytest.fixture(scope="module")
def built(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("bq-ranges") / "shop"
    _write(root, merged=False)
    for day in range(DAYS):
        _land(root, day, moved_key=False)
    project = load_project(root)
    cat = load_catalogue(project)
    models = cat.select(None)
    landing = project.landing
    assert isinstance(landing, Path)  # the project lands in a local folder
    days = landed_days(cat, models, landing)
    duck_path = tmp_path_factory.mktemp("bq-ranges-duck") / "warehouse.duckdb"
    # The emulator aborts a transaction that holds a MERGE (see test_bigquery_target.py): the
    # equivalent delete-and-insert form runs here.
    os.environ[MERGE_MODE_ENV] = "delete_insert"
    try:
        _nights(cat, landing, days, duck_path)
        ref = f"bigquery://{PROJECT}/{DATASET}?endpoint={emulator.endpoint}"
        bq = BigQueryWarehouse.from_ref(ref)
        plan = with_restatement(cat, models, days, bq, landing)
        outcomes = run_plan(plan, landing=str(landing), warehouse=ref, catalogue=cat)
        assert all(o.ok for o in outcomes), [o.failed for o in outcomes]
        yield Built(bq, DuckDBWarehouse(duck_path), cat, plan, days)
    finally:
        os.environ.pop(MERGE_MODE_ENV, None)


def _star(wh: Warehouse, cat: Catalogue) -> dict[str, pl.DataFrame]:
    """Every model table (and quarantine), typed by its model and sorted, for comparison; a
    quarantine by its model, reason and night, and the sale it held where it names one."""
    out = {}
    for name in cat.order:
        model = cat.models[name]
        frame = conform_read(wh.read(name), model.schema).select(model.schema.names())
        out[name] = frame.sort(frame.columns, nulls_last=True)
        if wh.exists(f"{name}__quarantine"):
            held = wh.read(f"{name}__quarantine")
            cols = ["model", "reason", "logical_date"] + (
                ["sale_id"] if "sale_id" in held.columns else [])
            q = held.select(cols).cast({"sale_id": pl.Int64()} if "sale_id" in cols else {})
            out[f"{name}__quarantine"] = q.sort(q.columns, nulls_last=True)
    return out


def test_the_catch_up_is_planned_as_one_range(built: Built) -> None:
    assert built.days == [FIRST + timedelta(days=d) for d in range(DAYS)]
    assert built.plan.ranges == {LAST.isoformat(): FIRST.isoformat()}, built.plan.ranges
    assert built.plan.dates == (LAST.isoformat(),) and not built.plan.phases


def test_ranges_on_bigquery_equal_the_nights_in_duckdb(built: Built) -> None:
    bq, duck = _star(built.bq, built.cat), _star(built.duck, built.cat)
    assert bq.keys() == duck.keys()
    assert {"fact_sales__quarantine", "stg_sales__quarantine"} <= duck.keys()
    for name in duck:
        assert bq[name].height == duck[name].height, (name, bq[name], duck[name])
        assert bq[name].equals(duck[name]), (name, bq[name], duck[name])
    # the messy parts are there to compare: C6 and C9's sales held back, late versions
    held = duck["fact_sales__quarantine"]["sale_id"].to_list()
    assert {202, 302} <= set(held) and any(s % 100 == 50 for s in held), held
    assert duck["dim_customer"].filter(pl.col("customer") == "C2").height >= 3


def test_bigquery_records_every_night(built: Built) -> None:
    def marks(wh: Warehouse) -> pl.DataFrame:
        return wh.watermarks().select("model", "logical_date").sort("model", "logical_date")

    assert marks(built.bq).equals(marks(built.duck))


def test_bigquery_holds_the_dimensions_as_of_log(built: Built) -> None:
    logged = built.bq.query("SELECT count(*) AS n FROM _starsmith.asof WHERE dimension = 'dim_customer'")
    assert logged["n"][0] > 0
