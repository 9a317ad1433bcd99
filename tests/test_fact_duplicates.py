"""Order lines sharing the fact grain: exact copies collapse, conflicting rows are quarantined.

End to end through the real step and DuckDB: a few demo days are landed, one day's order_lines
file gets a copy of a line with another quantity and an exact copy of another line, and the demo
is built in process.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from starsmith.demo_data import write_landing
from starsmith.facts.grain import split_grain_conflicts
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.landed import write_manifest
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.plan import make_plan
from starsmith.scaffold import demo_catalogue

DAYS = 3
GRAIN = ("order_id", "line_no")
FACT_COLUMNS = ("order_id", "line_no", "sale_date", "quantity", "unit_price", "discount",
                "net_amount", "customer_key", "product_key", "store_key")


def build(landing: Path, path: Path, dates: list[date]) -> DuckDBWarehouse:
    cat = demo_catalogue()
    plan = make_plan(cat, cat.select(None), dates, full_refresh=False)
    outcomes = run_plan(plan, landing=str(landing), warehouse=str(path), memory_limit="1GB",
                        catalogue=cat)
    assert all(o.ok for o in outcomes), [(o.failed, o.skipped) for o in outcomes]
    return DuckDBWarehouse(path)


def fact_rows(wh: DuckDBWarehouse) -> pl.DataFrame:
    return wh.query(f"SELECT {', '.join(FACT_COLUMNS)} FROM fact_sales").sort(GRAIN)


def same_grain(row: dict[str, object]) -> pl.Expr:
    return (pl.col("order_id") == row["order_id"]) & (pl.col("line_no") == row["line_no"])


@dataclass
class Built:
    clean: DuckDBWarehouse  # the landing as written
    dirty: DuckDBWarehouse  # the same with a conflicting and an exact duplicate appended
    day: date  # the day whose file got them
    conflict: dict[str, object]  # the original line; its copy has quantity + 7
    exact: dict[str, object]  # the line landed twice unchanged
    landing: Path  # the dirty landing zone


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("duplicates")
    clean = root / "clean"
    dates = write_landing(clean, days=DAYS, scale=0.1, seed=11)
    dirty = root / "dirty"
    shutil.copytree(clean, dirty)
    day = dates[1]
    folder = dirty / "order_lines" / f"date={day}"
    lines = pl.read_parquet(folder / "part-0.parquet")
    once = lines.filter(pl.struct(GRAIN).is_unique() & (pl.col("quantity") > 0)
                        & (pl.col("line_ts").dt.date() == day)
                        & pl.col("product_id").is_not_null())
    conflict, exact = once.row(0, named=True), once.row(once.height - 1, named=True)
    assert conflict["order_id"] != exact["order_id"]
    changed = lines.filter(same_grain(conflict)).with_columns(quantity=pl.col("quantity") + 7)
    again = lines.filter(same_grain(exact))
    pl.concat([lines, changed, again]).write_parquet(folder / "part-0.parquet")
    write_manifest(folder, {"part-0.parquet": lines.height + 2})
    return Built(build(clean, root / "clean.duckdb", dates),
                 build(dirty, root / "dirty.duckdb", dates), day, conflict, exact, dirty)


def test_conflicting_rows_are_all_quarantined_with_the_reason(built: Built) -> None:
    c = built.conflict
    held = built.dirty.query("SELECT order_id, line_no, quantity, reason "
                             "FROM fact_sales__quarantine WHERE order_id = ? AND line_no = ? "
                             "ORDER BY quantity", [c["order_id"], c["line_no"]])
    reason = (f"duplicate grain (order_id={c['order_id']}, line_no={c['line_no']}): "
              "2 rows with different values")
    assert held.rows() == [(c["order_id"], c["line_no"], c["quantity"], reason),
                           (c["order_id"], c["line_no"], c["quantity"] + 7, reason)]  # type: ignore[operator]
    assert built.dirty.query("SELECT count(*) AS n FROM fact_sales__quarantine "
                             "WHERE reason LIKE 'duplicate grain%'")["n"][0] == 2


def test_neither_conflicting_row_is_published(built: Built) -> None:
    c = built.conflict
    got = built.dirty.query("SELECT * FROM fact_sales WHERE order_id = ? AND line_no = ?",
                            [c["order_id"], c["line_no"]])
    assert got.height == 0
    # the clean build published it: the line is held back only because of the conflict
    assert built.clean.query("SELECT count(*) AS n FROM fact_sales WHERE order_id = ? "
                             "AND line_no = ?", [c["order_id"], c["line_no"]])["n"][0] == 1


def test_an_exact_duplicate_is_published_once(built: Built) -> None:
    e = built.exact
    got = built.dirty.query("SELECT quantity FROM fact_sales WHERE order_id = ? AND line_no = ?",
                            [e["order_id"], e["line_no"]])
    assert got["quantity"].to_list() == [e["quantity"]]
    assert built.dirty.query("SELECT count(*) AS n FROM fact_sales__quarantine "
                             "WHERE order_id = ? AND line_no = ?",
                             [e["order_id"], e["line_no"]])["n"][0] == 0


def test_every_other_line_is_unaffected(built: Built) -> None:
    expected = fact_rows(built.clean).filter(~same_grain(built.conflict))
    assert fact_rows(built.dirty).equals(expected)
    clean_held = built.clean.query("SELECT count(*) AS n FROM fact_sales__quarantine")["n"][0]
    dirty_held = built.dirty.query("SELECT count(*) AS n FROM fact_sales__quarantine")["n"][0]
    assert dirty_held == clean_held + 2


def test_the_day_builds_and_counts_the_rows_as_quarantined(built: Built) -> None:
    log = built.dirty.query(
        "SELECT logical_date, status, rows_quarantined, details->>'grain_conflicts' AS conflicts "
        "FROM _starsmith.run_log WHERE model = 'fact_sales' ORDER BY logical_date")
    assert log["status"].to_list() == ["success"] * DAYS
    clean = built.clean.query("SELECT logical_date, rows_quarantined FROM _starsmith.run_log "
                              "WHERE model = 'fact_sales' ORDER BY logical_date")
    on_day = log.filter(pl.col("logical_date") == built.day)
    assert on_day["conflicts"].to_list() == ["2"]
    base = clean.filter(pl.col("logical_date") == built.day)["rows_quarantined"][0]
    assert on_day["rows_quarantined"][0] == base + 2


def test_split_grain_conflicts_on_small_frames() -> None:
    rows = pl.DataFrame({
        "order_id": [1, 1, 2, 2, 3, 3, 3, 4],
        "line_no": [1, 1, 1, 1, 1, 1, 1, None],
        "quantity": [5, 5, 2, 3, 1, 1, 9, 4],
        "load_date": [date(2024, 1, d) for d in (1, 2, 1, 1, 1, 2, 3, 1)],
    })
    kept, held = split_grain_conflicts(rows, GRAIN, ["load_date"])
    # the line sent on two days unchanged is kept once: the copy landed last
    assert kept.rows() == [(1, 1, 5, date(2024, 1, 2)), (4, None, 4, date(2024, 1, 1))]
    assert held.columns == [*rows.columns, "reason"]
    assert held.sort("order_id", "quantity").select("order_id", "quantity", "reason").rows() == [
        (2, 2, "duplicate grain (order_id=2, line_no=1): 2 rows with different values"),
        (2, 3, "duplicate grain (order_id=2, line_no=1): 2 rows with different values"),
        (3, 1, "duplicate grain (order_id=3, line_no=1): 2 rows with different values"),
        (3, 9, "duplicate grain (order_id=3, line_no=1): 2 rows with different values"),
    ]
    # without an ignored column, a differing landing day is a difference
    _, strict = split_grain_conflicts(rows.head(2), GRAIN)
    assert strict.height == 2
    # nothing repeats: the rows come back as they are
    same, none = split_grain_conflicts(rows.tail(1), GRAIN, ["load_date"])
    assert same.equals(rows.tail(1)) and none.height == 0 and "reason" in none.columns


def test_rerunning_the_day_does_not_double_the_quarantine(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "again.duckdb"
    copy.write_bytes(built.dirty.path.read_bytes())
    wh = build(built.landing, copy, [built.day])
    assert wh.query("SELECT count(*) AS n FROM fact_sales__quarantine "
                    "WHERE reason LIKE 'duplicate grain%'")["n"][0] == 2
    assert fact_rows(wh).equals(fact_rows(built.dirty))
