"""A project is the user's own folder: found, loaded by path, checked, and kept apart from others."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from starsmith import Input, Window
from starsmith.config import ProjectConfig
from starsmith.discover import load_catalogue
from starsmith.errors import ConfigError, ModelError
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.landed import write_manifest
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.output import conform
from starsmith.orchestration.plan import make_plan, pending_dates
from starsmith.project import load_project
from starsmith.registry import build_catalogue
from starsmith.scaffold import demo_catalogue, init_project

CLI = str(Path(sys.executable).with_name("starsmith"))


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "STARSMITH_PROJECT"}
    full |= {"COLUMNS": "250", **env}
    return subprocess.run([CLI, *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=180)


def build_all(root: Path, select: list[str] | None = None) -> list[date]:
    proj = load_project(root)
    cfg = ProjectConfig.load(proj)
    cat = load_catalogue(proj)
    wh = DuckDBWarehouse(cfg.warehouse)
    models = cat.select(select)
    days = pending_dates(cat, models, cfg.landing, wh).days
    outcomes = run_plan(make_plan(cat, models, days), landing=str(cfg.landing),
                        warehouse=cfg.warehouse_ref, catalogue=cat, staging=str(cfg.staging))
    assert all(o.ok for o in outcomes), [(o.failed, o.skipped) for o in outcomes]
    return days


def test_a_project_is_found_from_a_subfolder_a_flag_or_the_environment(tmp_path: Path) -> None:
    init_project(tmp_path / "shop", sample=False)
    deep = tmp_path / "shop" / "models" / "marts"
    assert load_project(cwd=deep).name == "shop"
    assert load_project(tmp_path / "shop").root == (tmp_path / "shop").resolve()
    os.environ["STARSMITH_PROJECT"] = str(tmp_path / "shop")
    try:
        assert load_project(cwd=tmp_path).name == "shop"
    finally:
        del os.environ["STARSMITH_PROJECT"]
    with pytest.raises(ConfigError) as err:
        load_project(cwd=tmp_path)
    assert str(err.value).startswith(f"no starsmith project in {tmp_path.resolve()} or its "
                                     "parents (looked for starsmith.toml, or [tool.starsmith] "
                                     "in pyproject.toml)")


def test_a_pyproject_table_is_a_project_and_targets_resolve(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.starsmith]\nname = "warehouse"\nmodels = "src"\n'
        'target = "dev"\n\n[tool.starsmith.targets.dev]\ntype = "duckdb"\npath = "wh/dev.duckdb"\n'
        '\n[tool.starsmith.targets.prod]\ntype = "bigquery"\nproject = "p"\ndataset = "d"\n'
        'location = "EU"\n')
    proj = load_project(cwd=tmp_path)
    assert proj.name == "warehouse" and proj.models == (tmp_path / "src").resolve()
    assert ProjectConfig.load(proj).warehouse == (tmp_path / "wh" / "dev.duckdb").resolve()
    prod = ProjectConfig.load(proj, target="prod")
    assert prod.target == "bigquery" and prod.warehouse_ref == "bigquery://p/d?location=EU"
    with pytest.raises(ConfigError) as err:
        ProjectConfig.load(proj, target="staging")
    assert "project 'warehouse' has no target 'staging' (targets: dev, prod)" in str(err.value)


def test_models_in_subfolders_import_each_other_and_coexist_with_the_demo(tmp_path: Path
                                                                          ) -> None:
    shop = load_catalogue(init_project(tmp_path / "shop", sample=False))
    demo = demo_catalogue()
    assert set(shop.order) == {"stg_sales", "dim_customer", "fact_sales"}
    assert shop.files["fact_sales"] == "models/marts/fact_sales.py"
    # both define dim_customer: each project has its own, loaded side by side
    assert shop.models["dim_customer"] is not demo.models["dim_customer"]
    assert "address" in demo.models["dim_customer"].schema
    assert "address" not in shop.models["dim_customer"].schema
    assert shop.fingerprint != demo.fingerprint


def test_a_folder_named_models_on_the_path_shadows_nothing(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    decoy = tmp_path / "decoy" / "models"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise RuntimeError('the decoy models package ran')\n")
    done = cli("plan", cwd=tmp_path / "shop", PYTHONPATH=str(decoy.parent))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "project shop: 3 model(s) x 3 day(s)" in done.stdout


def test_a_broken_model_file_is_named_without_a_traceback(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root, sample=False)
    fact = root / "models" / "marts" / "fact_sales.py"
    fact.write_text(fact.read_text().replace('grain=("sale_id",)', 'grain=("sale_id",), oops=1'))
    done = cli("plan", cwd=root)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert ("cannot load model file models/marts/fact_sales.py: TypeError: "
            "FactSpec.__init__() got an unexpected keyword argument 'oops'") in done.stdout


def test_a_fact_must_say_how_its_inputs_join(tmp_path: Path) -> None:
    demo = demo_catalogue()
    sales = demo.models["fact_sales"]
    silent = sales.__class__(**{**sales.__dict__, "inputs": tuple(
        Input(i.name, i.window) for i in sales.inputs)})
    others = [m for n, m in demo.models.items() if n != "fact_sales"]
    with pytest.raises(ModelError) as err:
        build_catalogue([*others, silent], demo.sources.values())
    assert str(err.value) == (
        "fact fact_sales reads 'stg_orders' by day but does not say how it joins "
        "'stg_order_lines' (in model fact_sales). Declare Input('stg_orders', on=(...)) with the "
        "key columns, e.g. on=('order_id',)")
    wrong = sales.__class__(**{**sales.__dict__, "inputs": (
        Input("stg_orders", on=("order_id",)), *[i for i in sales.inputs
                                                 if i.name != "stg_orders"])})
    with pytest.raises(ModelError) as err:
        build_catalogue([*others, wrong], demo.sources.values())
    assert str(err.value).startswith(
        "fact fact_sales: its event input 'stg_orders' has no column 'sale_date' (the "
        "FactSpec's event_date)")


def test_output_conform_refuses_a_cast_that_would_round_money() -> None:
    model = demo_catalogue().models["fact_sales"]
    row = {c: None for c in model.schema.names()}
    frame = pl.DataFrame([row], schema=model.schema).with_columns(
        net_amount=pl.Series([Decimal("10.125")], dtype=pl.Decimal(18, 3)))
    with pytest.raises(ModelError) as err:
        conform(frame, model)
    assert str(err.value).startswith(
        "column 'net_amount' of fact_sales is Decimal(precision=18, scale=3) but declared "
        "Decimal(precision=14, scale=2): the cast would round 1 value(s), e.g. 10.125")
    exact = frame.with_columns(net_amount=pl.Series([Decimal("10.120")],
                                                    dtype=pl.Decimal(18, 3)))
    assert conform(exact, model)["net_amount"].to_list() == [Decimal("10.12")]


def test_a_source_read_whole_takes_every_landing_up_to_the_day(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root)
    stg = root / "models" / "staging" / "stg_sales.py"
    stg.write_text(stg.read_text().replace('Input("landing.sales")',
                                           'Input("landing.sales", Window.ALL)').replace(
        "from starsmith import ", "from starsmith import Window, "))
    cat = load_catalogue(load_project(root))
    assert cat.models["stg_sales"].inputs == (Input("landing.sales", Window.ALL),)
    build_all(root, ["stg_sales"])  # (the fact would rightly refuse the repeated sale ids)
    wh = DuckDBWarehouse(root / ".state" / "warehouse.duckdb")
    per_day = wh.query("SELECT load_date, count(*) AS n FROM stg_sales GROUP BY 1 ORDER BY 1")
    assert per_day["n"].to_list() == [10, 20, 30]  # everything landed up to each day


def test_a_model_change_is_planned_applied_or_refused(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root)
    build_all(root)
    folder = root / "landing" / "sales" / "date=2024-01-04"
    folder.mkdir()
    pl.read_parquet(root / "landing" / "sales" / "date=2024-01-03" / "part-0.parquet"
                    ).with_columns(sale_id=pl.col("sale_id") + 100, sold_at=pl.col("sold_at")
                                   + pl.duration(days=1)).write_parquet(folder / "part-0.parquet")
    write_manifest(folder, {"part-0.parquet": 10})  # the export's last file: the day is complete
    fact = root / "models" / "marts" / "fact_sales.py"
    original = fact.read_text()
    fact.write_text(original.replace(
        '        Column("sold_at", pl.Datetime("us"), "when the sale happened"),\n',
        '        Column("sold_at", pl.Datetime("us"), "when the sale happened"),\n'
        '        Column("sale_hour", pl.Int8(), "hour of the sale"),\n').replace(
        "amount=pl.col", 'sale_hour=pl.col("sold_at").dt.hour(), amount=pl.col'))
    done = cli("plan", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changed: fact_sales: column 'sale_hour' added (TINYINT)" in done.stdout
    assert "columns are added to the table on the next build" in done.stdout
    assert build_all(root) == [date(2024, 1, 4)]
    wh = DuckDBWarehouse(root / ".state" / "warehouse.duckdb")
    hours = wh.query("SELECT sale_date, count(sale_hour) AS n FROM fact_sales GROUP BY 1 ORDER BY 1")
    # the new column is filled for the partitions rebuilt from now on (the lookback's too)
    assert hours["n"].to_list()[-1] == 10
    assert "sale_hour" in wh.query("DESCRIBE fact_sales__quarantine")["column_name"].to_list()

    dropped = original.replace(
        '        Column("quantity", pl.Int32(), "units sold (additive)"),\n', "")
    fact.write_text(dropped)
    done = cli("plan", cwd=root)  # a rule on the dropped column is named before anything runs
    assert done.returncode == 2 and ("model fact_sales checks column 'quantity', which it does "
                                     "not declare") in " ".join(done.stdout.split())
    fact.write_text(dropped.replace('    expectations=(Expect("expect_column_values_to_be_between", '
                                    'column="quantity", min_value=0,\n                         '
                                    'max_value=1000),),\n', ""))
    done = cli("build", "--in-process", "--date", "2024-01-04", cwd=root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert ("model fact_sales no longer matches its table: column 'quantity' removed; column "
            "'sale_hour' removed") in " ".join(done.stderr.split())
    refreshed = cli("build", "--in-process", "-s", "fact_sales", "--full-refresh", cwd=root)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert "quantity" not in wh.query("DESCRIBE fact_sales")["column_name"].to_list()
