"""End to end on the embedded warehouse: demo sources, several days, real DuckDB."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from loaders.duckdb import DuckDBWarehouse
from models.registry import load_catalogue
from orchestration.local import run_plan
from orchestration.messages import DayOutcome
from orchestration.plan import make_plan, pending_dates
from quality.contract import audit_staged
from starsmith.errors import DataError
from tests.conftest import DEMO_DAYS

pytestmark = pytest.mark.slow
DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(DEMO_DAYS)]
DIMS = {"dim_customer": ("customer_key", "customer_id"), "dim_product": ("product_key", "product_id"),
        "dim_store": ("store_key", "store_id")}


def build(landing: Path, wh: Path, dates: list[date], *, full_refresh: bool = False,
          select: list[str] | None = None) -> list[DayOutcome]:
    cat = load_catalogue()
    plan = make_plan(cat, cat.select(select), dates, full_refresh=full_refresh)
    outcomes = run_plan(plan, landing=str(landing), warehouse=str(wh), memory_limit="1GB")
    assert all(o.ok for o in outcomes), [(o.failed, o.skipped) for o in outcomes]
    return outcomes


def tables(wh: DuckDBWarehouse) -> dict[str, pl.DataFrame]:
    names = wh.query("SELECT table_name FROM information_schema.tables "
                     "WHERE table_schema = 'main' ORDER BY 1")["table_name"].to_list()
    return {n: wh.read(n).sort(pl.all()) for n in names}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_landing: Path) -> DuckDBWarehouse:
    path = tmp_path_factory.mktemp("wh") / "warehouse.duckdb"
    build(demo_landing, path, DAYS)
    return DuckDBWarehouse(path)


def test_every_landed_day_is_built_once(built: DuckDBWarehouse, demo_landing: Path) -> None:
    cat = load_catalogue()
    assert pending_dates(cat, list(cat.order), demo_landing, built) == []
    log = built.run_log().filter(pl.col("status") == "success")
    assert log.group_by("model").len()["len"].unique().to_list() == [DEMO_DAYS]
    parts = built.query("SELECT DISTINCT load_date FROM stg_customers ORDER BY 1")
    assert parts["load_date"].to_list() == DAYS


@pytest.mark.parametrize("dim", sorted(DIMS))
def test_dimensions_hold_the_scd2_invariants_in_the_warehouse(built: DuckDBWarehouse, dim: str
                                                              ) -> None:
    sk, nk = DIMS[dim]
    checks = built.query(f"""
        WITH ordered AS (
            SELECT *, lag(valid_to) OVER (PARTITION BY {nk} ORDER BY valid_from) AS prev_to
            FROM {dim} WHERE {sk} > 0)
        SELECT
            (SELECT count(*) FROM (SELECT {nk} FROM ordered GROUP BY {nk}
                                   HAVING sum(is_current::INT) > 1)) AS two_current,
            (SELECT count(*) FROM ordered WHERE valid_from < prev_to) AS overlaps,
            (SELECT count(*) FROM ordered WHERE valid_from >= valid_to) AS inverted,
            (SELECT count(*) - count(DISTINCT {sk}) FROM {dim}) AS duplicate_keys,
            (SELECT count(*) FROM ordered WHERE is_current <> (valid_to = '9999-12-31'))
                AS current_mismatch
    """).row(0, named=True)
    assert checks == {"two_current": 0, "overlaps": 0, "inverted": 0, "duplicate_keys": 0,
                      "current_mismatch": 0}
    reserved = built.query(f"SELECT {sk} AS k FROM {dim} WHERE {sk} < 0 AND is_current "
                           "ORDER BY 1")
    assert reserved["k"].to_list() == [-2, -1]


def test_demo_dirt_is_quarantined_with_reasons_and_history_is_kept(built: DuckDBWarehouse) -> None:
    reasons = built.query("SELECT reason, count(*) AS n FROM stg_customers__quarantine "
                          "GROUP BY 1 ORDER BY 1")
    found = set(reasons["reason"].to_list())
    assert "customer_id is NULL" in found
    assert "unknown segment code 'XX'" in found
    multi = built.query("""SELECT customer_id FROM dim_customer
                           GROUP BY customer_id, CAST(valid_from AS DATE) HAVING count(*) > 1""")
    assert multi.height > 0  # several changes in one day gave several versions
    closed = built.query("SELECT count(*) AS n FROM dim_product WHERE NOT is_current")
    assert closed["n"][0] > 0


def test_rerunning_days_changes_nothing(built: DuckDBWarehouse, demo_landing: Path,
                                        tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(built.path.read_bytes())
    wh = DuckDBWarehouse(copy)
    before = tables(wh)
    build(demo_landing, copy, [DAYS[1]])  # an older day, after newer ones were built
    build(demo_landing, copy, [DAYS[-1]])
    after = tables(wh)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].equals(after[name]), name


def test_full_refresh_equals_the_incremental_build(built: DuckDBWarehouse, demo_landing: Path,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "full.duckdb"
    build(demo_landing, path, DAYS[:1])  # staging must exist to replay from
    build(demo_landing, path, [DAYS[-1]], full_refresh=True)
    full = tables(DuckDBWarehouse(path))
    incremental = tables(built)
    for dim in DIMS:
        keep = [c for c in incremental[dim].columns if c != "run_id"]
        assert full[dim].select(keep).sort(pl.all()).equals(
            incremental[dim].select(keep).sort(pl.all())), dim


def test_a_crash_between_staging_and_publish_leaves_the_previous_table(
        landing: Path, tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    build(landing, path, DAYS[:2])
    wh = DuckDBWarehouse(path)
    before = wh.read("dim_customer").sort("customer_key")
    script = ("from orchestration.messages import StepRequest; "
              "from orchestration.step import run_step; "
              f"run_step(StepRequest('dim_customer', '{DAYS[2]}', 'build-{DAYS[2]}', "
              f"'{landing}', '{path}'))")
    build(landing, path, [DAYS[2]], select=["stg_customers"])
    env = {**os.environ, "STARSMITH_FAILPOINT": "after_stage:dim_customer"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert wh.read("dim_customer").sort("customer_key").equals(before)
    staged = [p.name for p in wh.staged_files()]
    assert staged == [f"dim_customer__build_{DAYS[2].isoformat().replace('-', '_')}.parquet"]

    build(landing, path, [DAYS[2]], select=["dim_customer"])  # the retry finishes the step
    clean = tmp_path / "clean.duckdb"
    build(landing, clean, DAYS[:3])
    assert wh.read("dim_customer").sort("customer_key").equals(
        DuckDBWarehouse(clean).read("dim_customer").sort("customer_key"))
    assert wh.staged_files() == []  # published, then the staged file was removed


def test_the_contract_audit_blocks_a_bad_staged_table(built: DuckDBWarehouse, tmp_path: Path
                                                      ) -> None:
    copy = tmp_path / "audit.duckdb"
    copy.write_bytes(built.path.read_bytes())
    wh = DuckDBWarehouse(copy)
    model = load_catalogue().model("dim_date")
    bad = wh.read("dim_date").head(3)
    bad = pl.concat([bad, bad.head(1)]).with_columns(
        date_key=pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise("date_key"))
    staged = wh.stage("dim_date", "bad-run", bad)
    with pytest.raises(DataError) as err:
        audit_staged(wh, staged, model)
    assert str(err.value) == (
        "staged rows of dim_date break the model contract: 1 row(s) with null date_key; "
        f"1 row(s) with duplicate date_key (in {staged}). The published table "
        "was left as it was; fix the transform or the source, then build again")
    assert wh.read("dim_date").height == built.read("dim_date").height
