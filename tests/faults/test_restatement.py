"""Days, re-runs and corrections converge: a re-landed day, an older --date, a full refresh and a
late landing all end with the tables a clean build of the same landing zone gives."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.faults.harness import Demo, assert_same_tables, clean_build, day
from tests.test_projects import STARSMITH, cli_env, out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Six days landed and built by one `starsmith build` (each day its own nightly run)."""
    shop = Demo(tmp_path_factory.mktemp("restate") / "shop", days=6)
    shop.build()
    return shop


def test_full_refresh_equals_the_nightly_builds_and_never_doubles_the_quarantine(
        built: Demo, tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    nightly = demo.tables()
    assert sum(f.height for n, f in nightly.items() if n.endswith("__quarantine")) > 0
    demo.build("--full-refresh")
    demo.build("--full-refresh")  # twice: the quarantine is replaced, not appended
    refreshed = demo.tables()
    for name, frame in nightly.items():
        assert refreshed[name].equals(frame), name


def test_a_relanded_day_is_noticed_and_every_table_converges(built: Demo, tmp_path: Path
                                                              ) -> None:
    demo = built.copy(tmp_path / "shop")
    customers = demo.read("customers", 3)
    changed = customers.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(pl.lit("1 Corrected Road"))
        .otherwise(pl.col("address")).alias("address"))
    demo.reland("customers", 3, changed)  # a corrected export of a day already built
    plan = demo.build()
    assert "restating from 2024-01-03" in plan.stdout, plan.stdout
    assert "changed after it was built" in plan.stdout
    corrected = demo.query("SELECT count(*) AS n FROM dim_customer WHERE address = "
                           "'1 Corrected Road'")["n"][0]
    assert corrected > 0
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))
    again = demo.build()  # nothing changed since: nothing to restate
    assert "restating" not in again.stdout and "nothing to build" in again.stdout


def test_building_an_older_date_rederives_the_later_days(built: Demo, tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    before = demo.tables()
    proc = demo.build("--date", str(day(2)))
    assert "restating from 2024-01-02" in proc.stdout, proc.stdout
    after = demo.tables()
    for name, frame in before.items():  # no stale values republished: same as before
        assert after[name].equals(frame), name
    assert "nothing to build" in demo.build().stdout


def test_a_day_that_lands_late_is_built_in_order(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "shop", days=6)
    saved = demo.backup("inventory", 4)
    shutil.rmtree(demo.folder("inventory", 4))
    first = demo.build()
    assert "2024-01-04 waits: source 'inventory'" in first.stdout, first.stdout
    assert "2024-01-05 waits" in first.stdout  # a gap holds back every later day
    # forced past the gap by hand, for the inventory's staging table (the rest waits for day 4)
    demo.build("--date", str(day(5)), "-s", "stg_inventory")
    demo.restore("inventory", 4, saved)
    late = demo.build()
    assert "restating from 2024-01-04" in late.stdout, late.stdout
    assert "became ready after later days were built" in late.stdout
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))


def test_a_selection_that_rebuilds_only_staging_leaves_its_dependants_marked(
        built: Demo, tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    customers = demo.read("customers", 3)
    demo.reland("customers", 3, customers.with_columns(address=pl.lit("9 Fixed Lane")))
    demo.build("-s", "stg_customers")  # only the staging table is re-run
    marked = demo.query("SELECT model FROM _starsmith.restatements ORDER BY 1")["model"].to_list()
    assert "dim_customer" in marked and "fact_sales" in marked, marked
    later = demo.build()  # a plain build finishes the restatement: nothing is lost
    assert "restating" in later.stdout and "dim_customer" in later.stdout, later.stdout
    assert demo.query("SELECT count(*) AS n FROM _starsmith.restatements")["n"][0] == 0
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))


def test_a_restatement_runs_inside_the_temporal_workflow(built: Demo, tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    stores = demo.read("stores", 2)
    demo.reland("stores", 2, stores.with_columns(store_name=pl.lit("Renamed")))
    proc = subprocess.run([str(STARSMITH), "build"], cwd=demo.root, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, out(proc)
    assert "restating from 2024-01-02" in proc.stdout, proc.stdout
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))


def test_a_range_run_again_builds_only_the_days_it_has_not(built: Demo, tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    before = demo.tables()
    proc = demo.build("--from", str(day(1)), "--to", str(day(6)))
    assert "nothing to build" in proc.stdout and "restating" not in proc.stdout, proc.stdout
    after = demo.tables()
    for name, frame in before.items():
        assert after[name].equals(frame), name


def test_a_copied_landing_with_the_same_bytes_is_not_a_change(built: Demo, tmp_path: Path
                                                              ) -> None:
    demo = built.copy(tmp_path / "shop")
    for path in demo.landing.rglob("part-*"):  # a restore or rsync: new mtimes, same bytes
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    folder = demo.folder("stores", 2)  # an exporter without manifests for one day
    (folder / "_manifest.json").unlink()
    (folder / "_SUCCESS").touch()
    proc = demo.build()
    assert "restating" not in proc.stdout and "nothing to build" in proc.stdout, proc.stdout


def test_plan_says_what_a_build_would_restate_and_changes_nothing(built: Demo,
                                                                   tmp_path: Path) -> None:
    demo = built.copy(tmp_path / "shop")
    demo.reland("customers", 3, demo.read("customers", 3).with_columns(address=pl.lit("1 Plan St")))
    plan = subprocess.run([str(STARSMITH), "plan"], cwd=demo.root, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, out(plan)
    assert "restating from 2024-01-03" in plan.stdout, out(plan)
    assert demo.query("SELECT count(*) AS n FROM _starsmith.restatements")["n"][0] == 0
