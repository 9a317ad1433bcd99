"""Bad input never rewrites history: each broken landing is refused with a clear message (or
quarantined with its reason), nothing is published from it, and once the landing is fixed a
plain `starsmith build` leaves every table equal to a clean build of the fixed landing zone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from starsmith.loaders.landed import MANIFEST
from tests.faults.harness import Demo, assert_same_tables, clean_build, day

SOURCES = ("customers", "products", "stores", "orders", "order_lines", "shipments", "inventory")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Seven days landed and built; day 8 landed (and kept aside), not built. Built once."""
    shop = Demo(tmp_path_factory.mktemp("faults") / "shop", days=8)
    saved = {s: shop.backup(s, 8) for s in SOURCES}
    for source in saved:
        shutil.rmtree(shop.folder(source, 8))
    shop.build()
    for source, folder in saved.items():
        shop.restore(source, 8, folder)
    return shop


@pytest.fixture(scope="module")
def clean(built: Demo, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """A clean build of the eight days as landed: what every fixed case converges to."""
    return clean_build(built.landing, tmp_path_factory.mktemp("clean") / "shop")


@pytest.fixture
def demo(built: Demo, tmp_path: Path) -> Demo:
    return built.copy(tmp_path / "shop")


def _fix_and_converge(demo: Demo, source: str, clean: Demo) -> None:
    demo.restore(source, 8, demo.root / "saved" / source / "8")
    demo.build()
    assert_same_tables(demo, clean)


def _refused(demo: Demo, *words: str) -> str:
    proc = demo.build(ok=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    for word in words:
        assert word in text, text
    return text


def test_an_empty_snapshot_is_refused_then_the_fixed_day_converges(demo: Demo,
                                                                   clean: Demo) -> None:
    before = demo.tables()["dim_product"]
    demo.reland("products", 8, demo.read("products", 8).clear())
    _refused(demo, "products", "has no rows")
    assert demo.tables()["dim_product"].equals(before)  # nothing closed
    _fix_and_converge(demo, "products", clean)


def test_a_snapshot_closing_most_keys_is_refused_unless_accepted(demo: Demo,
                                                                clean: Demo) -> None:
    before = demo.tables()["dim_product"]
    demo.reland("products", 8, demo.read("products", 8).head(3))  # an export cut short
    _refused(demo, "would close", "dim_product", "--accept-changes")
    assert demo.tables()["dim_product"].equals(before)
    _fix_and_converge(demo, "products", clean)


def test_accepting_a_mass_close_applies_it(demo: Demo) -> None:
    demo.reland("products", 8, demo.read("products", 8).head(3))
    demo.build("--accept-changes")
    live = demo.query("SELECT count(*) AS n FROM dim_product WHERE is_current AND product_id "
                      "IS NOT NULL")["n"][0]
    assert live == 3


def test_a_snapshot_missing_a_column_is_drift_not_nulls(demo: Demo, clean: Demo) -> None:
    before = demo.tables()["dim_product"]
    demo.reland("products", 8, demo.read("products", 8).drop("category"))
    _refused(demo, "drifted from its contract", "category")
    assert demo.tables()["dim_product"].equals(before)
    _fix_and_converge(demo, "products", clean)


def test_null_keys_in_a_snapshot_close_nothing(demo: Demo, clean: Demo) -> None:
    products = demo.read("products", 8)
    demo.reland("products", 8, products.with_columns(
        pl.when(pl.int_range(pl.len()) < 4).then(None).otherwise(pl.col("product_id"))
        .alias("product_id")))
    demo.build()
    held = demo.query("SELECT count(*) AS n FROM stg_products__quarantine WHERE reason = "
                      "'product_id is NULL'")["n"][0]
    assert held == 4
    closed = demo.query("SELECT count(*) AS n FROM dim_product WHERE valid_to = "
                        f"TIMESTAMP '{day(8)}'")["n"][0]
    assert closed == 0
    _fix_and_converge(demo, "products", clean)


def test_a_csv_cut_at_a_line_boundary_waits_then_converges(demo: Demo, clean: Demo) -> None:
    path = demo.file("inventory", 8)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))  # the manifest still says the whole
    proc = demo.build()
    assert "2024-01-08 waits" in proc.stdout and "inventory" in proc.stdout, proc.stdout
    assert "bytes, the manifest says" in proc.stdout
    assert "2024-01-08" not in demo.query("SELECT DISTINCT logical_date::VARCHAR AS d FROM "
                                          "_starsmith.watermarks")["d"].to_list()
    _fix_and_converge(demo, "inventory", clean)


def test_a_header_only_csv_without_a_manifest_is_refused(demo: Demo, clean: Demo) -> None:
    path = demo.file("inventory", 8)
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    (path.parent / MANIFEST).unlink()  # an exporter that writes no manifest for this day
    (path.parent / "_SUCCESS").touch()
    _refused(demo, "inventory", "has no rows")
    _fix_and_converge(demo, "inventory", clean)


def test_files_still_being_written_are_not_read(demo: Demo, clean: Demo) -> None:
    folder = demo.folder("shipments", 8)
    (folder / MANIFEST).unlink()  # the exporter writes it last: not yet
    proc = demo.build()
    assert "2024-01-08 waits" in proc.stdout and "still being written" in proc.stdout, proc.stdout
    _fix_and_converge(demo, "shipments", clean)


def test_an_empty_change_feed_file_mid_copy_waits(demo: Demo, clean: Demo) -> None:
    path = demo.file("shipments", 8)
    path.write_text("")  # truncated by a copy in progress
    proc = demo.build()
    assert "2024-01-08 waits" in proc.stdout and "shipments" in proc.stdout, proc.stdout
    _fix_and_converge(demo, "shipments", clean)


def test_badly_named_and_future_folders_are_reported_and_skipped(demo: Demo,
                                                                 clean: Demo) -> None:
    for name in ("date=2024-01-05 (copy)", "date=2024-1-7"):
        shutil.copytree(demo.folder("orders", 5), demo.landing / "orders" / name)
    future = demo.landing / "stores" / "date=2099-01-06"
    shutil.copytree(demo.folder("stores", 5), future)
    proc = demo.build()
    text = proc.stdout + proc.stderr
    assert "date=2024-01-05 (copy)" in text and "date=2024-1-7" in text, text
    assert "2099-01-06" in text and "after today" in text
    assert "Traceback" not in text
    assert "2099-01-06" not in demo.query("SELECT DISTINCT logical_date::VARCHAR AS d FROM "
                                          "_starsmith.watermarks")["d"].to_list()
    demo.build("--full-refresh")
    shutil.rmtree(future)
    for name in ("date=2024-01-05 (copy)", "date=2024-1-7"):
        shutil.rmtree(demo.landing / "orders" / name)
    assert_same_tables(demo, clean)


def test_a_steward_finds_what_was_refused_in_the_run_log(demo: Demo) -> None:
    demo.reland("products", 8, demo.read("products", 8).head(3))
    demo.build(ok=False)
    failed = demo.query("SELECT model, message FROM _starsmith.run_log WHERE status = 'failed'")
    assert "dim_product" in failed["model"].to_list()
    assert any("would close" in m for m in failed["message"].to_list())
    assert os.path.exists(demo.warehouse)


def test_tied_change_records_are_quarantined_not_picked(demo: Demo, clean: Demo) -> None:
    customers = demo.read("customers", 8)
    base = demo.read("customers", 1).filter(pl.col("customer_id") == 3).head(1)
    at = pl.lit(f"{day(8)} 10:00:00").str.to_datetime(time_unit="us")
    tie = pl.concat([base.with_columns(address=pl.lit(a), op=pl.lit("U"), updated_at=at,
                                       change_seq=pl.lit(10**9, dtype=pl.Int64))
                     for a in ("1 One St", "2 Two St")])
    demo.reland("customers", 8, pl.concat([customers, tie.select(customers.columns)]))
    demo.build()
    held = demo.query("SELECT address, reason FROM dim_customer__quarantine WHERE customer_id = 3")
    assert sorted(held["address"].to_list()) == ["1 One St", "2 Two St"], held
    assert held["reason"].str.starts_with("tie").all(), held
    current = demo.query("SELECT address FROM dim_customer WHERE customer_id = 3 AND is_current")
    assert current["address"].to_list()[0] not in ("1 One St", "2 Two St")
    _fix_and_converge(demo, "customers", clean)


def test_two_different_levels_for_one_pair_are_quarantined(demo: Demo, clean: Demo) -> None:
    levels = demo.read("inventory", 8)
    twice = levels.head(1).with_columns(on_hand=pl.lit("99999"))
    demo.reland("inventory", 8, pl.concat([levels, twice, levels.slice(1, 1)]))  # + an exact copy
    demo.build()
    pair = levels.head(1).row(0, named=True)
    where = (f"snapshot_date = DATE '{pair['snapshot_date']}' AND product_id = "
             f"{pair['product_id']} AND store_id = {pair['store_id']}")
    held = demo.query(f"SELECT on_hand, reason FROM fact_inventory_daily__quarantine WHERE {where}")
    assert held.height == 2 and held["reason"].str.starts_with("duplicate grain").all(), held
    assert demo.query(f"SELECT count(*) AS n FROM fact_inventory_daily f JOIN dim_product p ON "
                      f"f.product_key = p.product_key JOIN dim_store s ON f.store_key = "
                      f"s.store_key WHERE f.snapshot_date = DATE '{pair['snapshot_date']}' AND "
                      f"p.product_id = {pair['product_id']} AND s.store_id = "
                      f"{pair['store_id']}")["n"][0] == 0
    _fix_and_converge(demo, "inventory", clean)


def test_a_full_refresh_holds_the_same_closes_as_the_nightly(demo: Demo) -> None:
    products = demo.read("products", 8)
    demo.reland("products", 8, products.with_columns(  # two NULL keys, and one product gone
        pl.when(pl.int_range(pl.len()) < 2).then(None).otherwise(pl.col("product_id"))
        .alias("product_id")).slice(0, products.height - 1))
    demo.build()
    nightly = demo.tables()
    demo.build("--full-refresh")
    refreshed = demo.tables()
    for name, frame in nightly.items():
        assert refreshed[name].equals(frame), name
