"""Quality gates with great-expectations: severities, quarantine, results rows, schema drift."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Source, Strategy
from starsmith.errors import ConfigError, DataError
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.landing import check_drift
from starsmith.orchestration.local import run_day
from starsmith.orchestration.plan import make_plan
from starsmith.quality.checks import Freshness, References, Volume
from starsmith.quality.expect import Expect
from starsmith.registry import Catalogue, build_catalogue
from starsmith.scaffold import demo_catalogue

SOURCES = tuple(demo_catalogue().sources.values())

D1, D2 = date(2024, 1, 1), date(2024, 1, 2)
STORES = next(s for s in SOURCES if s.name == "stores")


def _stores(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.stores"].select("store_id", "store_name").with_columns(
        load_date=pl.lit(ctx.logical_date))


def _copy(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stores_stg"]


def catalogue(*expectations: Expect) -> Catalogue:
    cols = (Column("store_id", pl.Int64()), Column("store_name", pl.String()),
            Column("load_date", pl.Date()))
    stg = Model("stores_stg", Kind.STAGING, (Input("landing.stores"),), cols, _stores,
                Strategy.PARTITION, partition_by="load_date", expectations=expectations)
    copy = Model("stores_copy", Kind.STAGING, (Input("stores_stg"),), cols, _copy,
                 Strategy.PARTITION, partition_by="load_date")
    return build_catalogue([stg, copy], SOURCES)


def run(cat: Catalogue, landing: Path, wh: Path, day: date) -> object:
    plan = make_plan(cat, list(cat.order), [day])
    return run_day(plan, day.isoformat(), landing=str(landing), warehouse=str(wh),
                   memory_limit="1GB", catalogue=cat)


def test_an_error_failure_keeps_the_previous_table_and_skips_dependants(
        landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    ok = run(catalogue(Expect("expect_column_values_to_be_between", column="store_id",
                              min_value=1, max_value=1000)), landing, wh, D1)
    assert ok.ok  # type: ignore[attr-defined]
    before = DuckDBWarehouse(wh).read("stores_stg")
    strict = catalogue(Expect("expect_column_values_to_be_between", column="store_id",
                              min_value=1, max_value=2))
    out = run(strict, landing, wh, D2)
    assert out.skipped == {"stores_copy": "stores_stg"}  # type: ignore[attr-defined]
    reason = out.failed["stores_stg"]  # type: ignore[attr-defined]
    assert reason.startswith(
        "1 blocking expectation(s) failed on stores_stg: expect_column_values_to_be_between("
        "column='store_id', max_value=2, min_value=1): 3 unexpected (60.00%), e.g. 3, 4, 5")
    kept = re.search(r"kept at (\S+\.parquet)\)", reason)  # the refused rows, for a steward
    assert kept and pl.read_parquet(kept[1])["store_id"].to_list() == [1, 2, 3, 4, 5]
    warehouse = DuckDBWarehouse(wh)
    assert warehouse.read("stores_stg").equals(before)  # day 2 never published
    results = warehouse.query("SELECT logical_date, success, severity, unexpected_count, "
                              "unexpected_sample FROM _starsmith.quality_results "
                              "ORDER BY logical_date")
    assert results.rows() == [(D1, True, "error", 0, "[]"), (D2, False, "error", 3, "[3, 4, 5]")]


def test_a_warn_failure_is_recorded_and_the_build_goes_on(landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    out = run(catalogue(Expect("expect_table_row_count_to_be_between", min_value=100,
                               severity="warn")), landing, wh, D1)
    assert out.ok  # type: ignore[attr-defined]
    warehouse = DuckDBWarehouse(wh)
    assert warehouse.read("stores_copy").height == 5
    row = warehouse.query("SELECT expectation, severity, success, observed_value "
                          "FROM _starsmith.quality_results").row(0)
    assert row == ("expect_table_row_count_to_be_between", "warn", False, "5")


def test_rows_a_mostly_rule_lets_through_are_quarantined(landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    rule = Expect("expect_column_values_to_be_between", column="store_id", min_value=1,
                  max_value=3, mostly=0.5)
    out = run(catalogue(rule), landing, wh, D1)
    assert out.ok  # type: ignore[attr-defined]
    warehouse = DuckDBWarehouse(wh)
    assert sorted(warehouse.read("stores_stg")["store_id"].to_list()) == [1, 2, 3]
    held = warehouse.query("SELECT store_id, reason FROM stores_stg__quarantine ORDER BY 1")
    assert held["store_id"].to_list() == [4, 5]
    assert held["reason"][0] == f"failed {rule.describe()}"
    again = run(catalogue(rule), landing, wh, D1)  # a re-run replaces, never doubles
    assert again.ok and warehouse.query(  # type: ignore[attr-defined]
        "SELECT count(*) AS n FROM stores_stg__quarantine")["n"][0] == 2


def test_schema_drift_is_named_precisely() -> None:
    found = pl.Schema({"store_id": pl.String(), "store_name": pl.String(), "region": pl.String(),
                       "manager": pl.String()})
    parquet = Source("stores", "parquet", STORES.columns)
    with pytest.raises(DataError) as err:
        check_drift(parquet, found, "landing/stores/date=2024-01-01")
    assert str(err.value) == (
        "source 'stores' drifted from its contract: column 'store_id' changed type: declared "
        "Int64, found String (in landing/stores/date=2024-01-01). Fix the export, or change "
        "the source's contract in the project")
    missing = pl.Schema({"store_name": pl.String()})
    with pytest.raises(DataError, match="missing column 'store_id' \\(Int64\\)"):
        check_drift(parquet, missing, "x")


def test_expectations_are_validated_when_declared() -> None:
    with pytest.raises(ConfigError, match="severity 'fatal' is not one of"):
        Expect("expect_column_values_to_not_be_null", column="x", severity="fatal")
    e = Expect("expect_column_values_to_not_be_null", column="x", mostly=0.9)
    assert json.loads(e.kwargs_json) == {"column": "x", "mostly": 0.9} and e.column == "x"


def checked_catalogue(*checks: object) -> Catalogue:
    cols = (Column("store_id", pl.Int64()), Column("store_name", pl.String()),
            Column("load_date", pl.Date()))
    stg = Model("stores_stg", Kind.STAGING, (Input("landing.stores"),), cols, _stores,
                Strategy.PARTITION, partition_by="load_date", checks=checks)  # type: ignore[arg-type]
    return build_catalogue([stg], SOURCES)


def test_referential_integrity_blocks_orphans_and_volume_warns(landing: Path, tmp_path: Path
                                                               ) -> None:
    wh = tmp_path / "wh.duckdb"
    warehouse = DuckDBWarehouse(wh)
    with warehouse.connect() as con:
        con.execute("CREATE TABLE main.dim_x AS SELECT * FROM range(1, 4) t(store_id)")
    out = run(checked_catalogue(References("store_id", "dim_x"), Volume(max_ratio=0.5)),
              landing, wh, D1)
    reason = out.failed["stores_stg"]  # type: ignore[attr-defined]
    assert reason.startswith("1 blocking expectation(s) failed on stores_stg: references "
                             "dim_x.store_id (store_id): 2 unexpected (40.00%), e.g. 4, 5")
    assert not warehouse.exists("stores_stg")
    with warehouse.connect() as con:
        con.execute("INSERT INTO main.dim_x SELECT * FROM range(4, 10)")
    out = run(checked_catalogue(References("store_id", "dim_x"), Volume(max_ratio=0.5)),
              landing, wh, D1)
    assert out.ok  # type: ignore[attr-defined]
    out = run(checked_catalogue(References("store_id", "dim_x"), Volume(max_ratio=0.5)),
              landing, wh, D2)
    assert out.ok  # type: ignore[attr-defined]  # a warn check never blocks
    rows = warehouse.query("SELECT logical_date, expectation, success, observed_value FROM "
                           "_starsmith.quality_results WHERE expectation LIKE 'volume%' "
                           "ORDER BY logical_date")
    assert rows["success"].to_list() == [True, False]
    assert rows["observed_value"].to_list() == ["5 rows; no previous run",
                                                "5 rows, 1.00x the previous 5"]


def test_freshness_compares_the_newest_event_with_the_day_end(tmp_path: Path) -> None:
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    staged = warehouse.stage("f", "r", pl.DataFrame({"ts": [datetime(2024, 1, 1, 20)]}))
    fresh = Freshness("ts", max_hours=6).run(warehouse, staged, "f", D1, {})
    stale = Freshness("ts", max_hours=6).run(warehouse, staged, "f", D2, {})
    assert (fresh[0].success, stale[0].success) == (True, False)
    assert stale[0].observed == "newest 2024-01-01 20:00:00, 28.0h before day end"
