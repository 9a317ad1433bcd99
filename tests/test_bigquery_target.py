"""The nightly build published to BigQuery (the local emulator, the official client) end to end.

The demo is built for two days into BigQuery and, from the same landing zone, into DuckDB: both
targets run the same steps and strategies, so every star table must hold the same rows. Then a
re-run of a day must leave BigQuery unchanged, the run log must carry every job's cost, and the
analysts' queries in the README must run.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from starsmith.loaders.bigquery.warehouse import MERGE_MODE_ENV, BigQueryWarehouse
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.target import conform_read
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.plan import landed_days, make_plan
from starsmith.registry import Catalogue
from starsmith.scaffold import DEMO
from starsmith.scaffold import demo_catalogue as load_catalogue
from tests.bigquery_emulator import PROJECT, Emulator

pytestmark = pytest.mark.bigquery
DATASET = "starsmith"  # the README's queries name it
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Built:
    bq: BigQueryWarehouse
    duck: DuckDBWarehouse
    cat: Catalogue
    landing: Path
    ref: str
    days: list[str]


@pytest.fixture(scope="module")
def built(emulator: Emulator, demo_landing: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Built]:
    # The emulator aborts a transaction that holds a MERGE, so the accumulating
    # snapshot's upsert runs in its equivalent delete-and-insert form here; real BigQuery runs
    # the MERGE (its SQL is checked in test_loader_contract.py).
    os.environ[MERGE_MODE_ENV] = "delete_insert"
    cat = load_catalogue()
    models = cat.select(None)
    days = landed_days(cat, models, demo_landing)[:2]
    plan = make_plan(cat, models, days)
    ref = f"bigquery://{PROJECT}/{DATASET}?endpoint={emulator.endpoint}"
    outcomes = run_plan(plan, landing=str(demo_landing), warehouse=ref, catalogue=cat)
    assert all(o.ok for o in outcomes), [o.failed for o in outcomes]
    duck_path = tmp_path_factory.mktemp("duck") / "warehouse.duckdb"
    assert all(o.ok for o in run_plan(plan, landing=str(demo_landing), warehouse=str(duck_path),
                                      catalogue=cat))
    try:
        yield Built(BigQueryWarehouse.from_ref(ref), DuckDBWarehouse(duck_path), cat,
                    demo_landing, ref, list(plan.dates))
    finally:
        os.environ.pop(MERGE_MODE_ENV, None)


def _star(wh: Any, cat: Catalogue) -> dict[str, pl.DataFrame]:
    """Every star table (and quarantine), typed by its model and sorted, for comparison."""
    out = {}
    for name in cat.order:
        model = cat.models[name]
        frame = conform_read(wh.read(name), model.schema).select(model.schema.names())
        out[name] = frame.sort(frame.columns, nulls_last=True)
        if wh.exists(f"{name}__quarantine"):
            q = wh.read(f"{name}__quarantine").select("model", "reason", "logical_date")
            out[f"{name}__quarantine"] = q.sort(q.columns, nulls_last=True)
    return out


def test_bigquery_holds_what_duckdb_holds(built: Built) -> None:
    bq, duck = _star(built.bq, built.cat), _star(built.duck, built.cat)
    assert bq.keys() == duck.keys()
    for name in duck:
        assert bq[name].height == duck[name].height, name
        assert bq[name].equals(duck[name]), name
    assert bq["fact_sales"].height > 0 and bq["dim_customer"]["is_current"].sum() > 0


def test_rerunning_a_day_leaves_bigquery_unchanged(built: Built) -> None:
    before = _star(built.bq, built.cat)
    runs = built.bq.run_log().height
    cat = built.cat
    plan = make_plan(cat, cat.select(None), [pl.Series([built.days[-1]]).str.to_date()[0]])
    assert all(o.ok for o in run_plan(plan, landing=str(built.landing), warehouse=built.ref,
                                      catalogue=cat))
    after = _star(built.bq, built.cat)
    for name in before:
        assert after[name].equals(before[name]), name
    assert built.bq.run_log().height == runs + len(cat.order)  # the re-run is on record


def test_tables_follow_the_model_specs(built: Built, emulator: Emulator) -> None:
    client = emulator.client()
    sales = client.get_table(f"{PROJECT}.{DATASET}.fact_sales")
    assert sales.time_partitioning.field == "sale_date"
    assert sales.clustering_fields == ["customer_key", "product_key", "store_key"]
    assert sales.labels["model"] == "fact_sales" and sales.labels["managed_by"] == "starsmith"
    assert sales.labels["run_id"] == f"build-{built.days[-1]}"
    assert sales.description == built.cat.models["fact_sales"].description
    current = built.bq.query('SELECT * FROM main."dim_customer_current"')
    dim = built.bq.read("dim_customer")
    assert current.height == dim.filter(pl.col("is_current")).height > 0
    staging = client.get_dataset(f"{PROJECT}.{DATASET}_staging")
    assert staging.default_table_expiration_ms == 24 * 3600 * 1000  # staged tables expire


def test_run_log_records_every_job_and_its_cost(built: Built) -> None:
    log = built.bq.run_log()
    assert set(log.filter(pl.col("status") == "success")["model"]) == set(built.cat.order)
    jobs = built.bq.job_log()
    assert set(jobs["model"]) == set(built.cat.order)
    publishes = jobs.filter(pl.col("kind") == "publish")
    assert publishes.height >= len(built.cat.order) * len(built.days)
    assert publishes["job_id"].str.starts_with("starsmith_publish_").all()
    for col in ("bytes_processed", "bytes_billed", "slot_ms"):  # the emulator reports zeros
        assert jobs[col].null_count() == 0
    assert jobs.filter(pl.col("kind") == "load").height > 0


def _readme_queries() -> list[tuple[str, str]]:
    """The analysts' example queries: each ```sql block under "Example queries" in the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Example queries", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"\*\*(.+?)\*\*.*?```sql\n(.+?)```", section, flags=re.S)
    assert len(found) == 5, "the README shows five analyst queries"
    return found


@pytest.mark.parametrize("index", range(5))
def test_the_readme_analyst_queries_run(built: Built, emulator: Emulator, index: int) -> None:
    title, query = _readme_queries()[index]
    rows = list(emulator.client().query(query).result())
    assert rows, f"{title}: no rows"
    if index == 0:  # revenue by month and region: the same total as the fact in DuckDB
        total = built.duck.query("SELECT sum(net_amount) AS s FROM main.fact_sales")["s"][0]
        assert sum(r["net_revenue"] for r in rows) == total


def _cli(built: Built, emulator: Emulator, *args: str, cwd: Path) -> str:
    env = {**os.environ, "STARSMITH_TARGET": "bigquery", "STARSMITH_BQ_PROJECT": PROJECT,
           "STARSMITH_BQ_DATASET": DATASET, "STARSMITH_BQ_ENDPOINT": emulator.endpoint,
           "COLUMNS": "200", "STARSMITH_PROJECT": str(DEMO)}
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "starsmith"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_plan_estimates_bytes_with_dry_runs(built: Built, emulator: Emulator,
                                            tmp_path: Path) -> None:
    out = _cli(built, emulator, "plan", "--landing", str(built.landing), "--date",
               built.days[-1], cwd=tmp_path)
    assert "est. bytes" in out and "estimated scan:" in out and "fact_sales" in out


def test_the_stewards_report_reads_bigquery(built: Built, emulator: Emulator,
                                            tmp_path: Path) -> None:
    _cli(built, emulator, "report", "--out", str(tmp_path / "site"), cwd=tmp_path)
    index = (tmp_path / "site" / "index.html").read_text()
    assert f"bigquery://{PROJECT}/{DATASET}" in index and "fact_sales" in index
    quarantined = built.bq.query('SELECT count(*) AS n FROM main."fact_sales__quarantine"')
    row = index.split("fact_sales</a>", 1)[1].split("</tr>", 1)[0]
    assert f"#quarantine'>{quarantined['n'][0]}</a></td>" in row, row


@pytest.mark.temporal
def test_a_temporal_build_publishes_to_bigquery(built: Built, temporal_server: Any) -> None:
    """The workflow path (plan activity, build activities on a worker) with the BigQuery target:
    the dimensions re-run for the last day through Temporal, and the star stays as it was."""
    import asyncio

    from starsmith.orchestration.messages import BuildRequest, Paths
    from tests.temporal_helpers import run_build

    before = _star(built.bq, built.cat)
    select = ("stg_stores", "dim_store", "stg_products", "dim_product")
    req = BuildRequest(Paths(str(built.landing), built.ref), select=select,
                       dates=(built.days[-1],))
    report, _ = asyncio.run(run_build(temporal_server.address, req))
    assert report.ok and {m.model for m in report.days[0].built} == set(select)
    after = _star(built.bq, built.cat)
    assert all(after[name].equals(before[name]) for name in before)
    jobs = built.bq.job_log().filter(pl.col("kind") == "publish")
    assert jobs.filter(pl.col("model") == "dim_store").height >= 3  # 2 days + this re-run
