"""A fact's full rebuild reads each looked-up dimension whole, once, and keys every batch against
it; a dimension too large for the memory budget's share is read batch by batch, the versions of
the batch's keys only. Both must publish the same star: the SSB-like project of
tests/ssb_project.py, through the installed command, with customers whose history changes
(point in time), a customer that lands after its first orders (nearest version), one that never
lands (an inferred member, made by one batch and reused by a later one) and a supplier that does
not exist (the row is quarantined).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.ssb_project import Scale, land, land_all, write_project
from tests.user_projects import STARSMITH

# 2,000 customers need ~250 kB of packed versions: more than a 1MB budget's share (1/8)
SCALE = Scale(customers=2000, parts=50, suppliers=10, days=10, lines_per_day=40)
LATE, NEVER, NO_SUPPLIER = 5001, 7001, 999  # custkeys, suppkey
MOVED = range(1, 401)  # customers who move on the second list's day


def build(root: Path, *args: str) -> str:
    done = subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh", *args],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def project(root: Path) -> Path:
    """The SSB project: batches of two partitions, inferred customers, quarantined suppliers; a
    second customer list on the sixth day, late and missing customers, an unknown supplier."""
    write_project(root)
    fact = root / "models" / "marts" / "fact_lineorder.py"
    text = fact.read_text()
    for old, new in (
            ('("custkey",), "orderdate", MissingKey.UNKNOWN', '("custkey",), "orderdate", '
                                                              "MissingKey.INFERRED"),
            ('("suppkey",), "orderdate", MissingKey.UNKNOWN', '("suppkey",), "orderdate", '
                                                              "MissingKey.QUARANTINE"),
            ("    measures=(", "    batch_days=2,\n    measures=(")):
        assert old in text
        text = text.replace(old, new)
    fact.write_text(text)
    days = land_all(root / "landing", SCALE)
    first = pl.read_parquet(root / "landing" / "customer" / f"date={days[0]}" / "part-0.parquet")
    moved = first.with_columns(city=pl.when(pl.col("custkey").is_in(list(MOVED)))
                               .then(pl.lit("ATLANTIS 1")).otherwise(pl.col("city")))
    late = first.head(1).with_columns(custkey=pl.lit(LATE, dtype=pl.Int64),
                                      name=pl.lit("Customer#late"))
    land(root / "landing", "customer", days[5], pl.concat([moved, late]))
    for at, custkey, suppkey in ((1, LATE, 1), (2, LATE, 1), (1, NEVER, 1), (7, NEVER, 1),
                                 (3, 1, NO_SUPPLIER)):
        path = root / "landing" / "lineorder" / f"date={days[at]}" / "part-0.parquet"
        lines = pl.read_parquet(path)
        extra = lines.head(1).with_columns(
            orderkey=pl.lit(9_000_000 + at * 10 + custkey % 7, dtype=pl.Int64),
            custkey=pl.lit(custkey, dtype=pl.Int64), suppkey=pl.lit(suppkey, dtype=pl.Int64),
            orderdate=pl.lit(days[at]))
        pl.concat([lines, extra]).write_parquet(path)
    return root


def star(root: Path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        got = {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").pl()
               for t in ("fact_lineorder", "dim_customer", "dim_supplier")}
        got["quarantine"] = con.sql(
            "SELECT orderkey, custkey, suppkey, reason FROM fact_lineorder__quarantine "
            "ORDER BY ALL").pl()
        got["counts"] = con.sql(
            "SELECT details FROM _starsmith.run_log WHERE model = 'fact_lineorder'").pl()
        got["keyed"] = con.sql("""
            SELECT s.custkey, s.orderdate, d.custkey AS version_of, d.valid_from, d.valid_to,
                   d.city, d.is_inferred,
                   d.valid_from = min(d.valid_from) OVER (PARTITION BY d.custkey) AS first
            FROM fact_lineorder f JOIN stg_lineorder s USING (orderkey, linenumber)
            JOIN dim_customer d USING (customer_key) ORDER BY ALL""").pl()
    return got


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, pl.DataFrame], ...]:
    """(the star read whole, the star read batch by batch), each a full rebuild."""
    root = tmp_path_factory.mktemp("rebuild")
    whole = project(root / "whole")
    batched = root / "batched"
    shutil.copytree(whole, batched)
    said = build(whole)
    assert "read batch by batch" not in said, said
    said = build(batched, "--memory-budget", "1MB")
    assert "dim_customer's" in said and "read batch by batch" in said, said
    return star(whole), star(batched)


def test_reading_dimensions_whole_or_batch_by_batch_publishes_the_same_star(
        rebuilt: tuple[dict[str, pl.DataFrame], ...]) -> None:
    whole, batched = rebuilt
    assert whole["fact_lineorder"].height > SCALE.days * SCALE.lines_per_day // 2
    for name in ("fact_lineorder", "dim_customer", "dim_supplier", "quarantine", "keyed"):
        assert whole[name].equals(batched[name]), name
    counts = [json.loads(d) for d in (whole["counts"]["details"][0],
                                      batched["counts"]["details"][0])]
    assert counts[0]["batches"] > 1 and counts[1]["batches"] > counts[0]["batches"]
    for name in ("dim_customer:exact", "dim_customer:nearest", "dim_customer:inferred",
                 "dim_supplier:quarantined"):
        assert counts[0][name] == counts[1][name], name


def test_each_fact_keys_to_the_customer_version_of_its_order_date(
        rebuilt: tuple[dict[str, pl.DataFrame], ...]) -> None:
    keyed = rebuilt[0]["keyed"]
    assert (keyed["custkey"] == keyed["version_of"]).all()
    covered = ((pl.col("valid_from").dt.date() <= pl.col("orderdate"))
               & (pl.col("orderdate") < pl.col("valid_to").dt.date()))
    # not covered: orders older than the customer's first version take that first version
    early = keyed.filter(~covered)
    assert early.height and early["first"].all()
    assert (early["orderdate"] < early["valid_from"].dt.date()).all()
    counts = json.loads(rebuilt[0]["counts"]["details"][0])
    assert counts["dim_customer:nearest"] == early.height
    held = counts["dim_supplier:quarantined"]  # keyed to its customer, then held back
    assert counts["dim_customer:exact"] + counts["dim_customer:inferred"] == \
        keyed.height + held - early.height
    moved = keyed.filter(pl.col("custkey").is_in(list(MOVED)))
    before, after = moved["city"] != "ATLANTIS 1", moved["city"] == "ATLANTIS 1"
    assert before.any() and after.any()
    moved_on = moved.filter(after)["valid_from"].min()
    assert (moved.filter(before)["orderdate"] < moved_on.date()).all()  # type: ignore[union-attr]
    assert (moved.filter(after)["orderdate"] >= moved_on.date()).all()  # type: ignore[union-attr]
    late = keyed.filter(pl.col("custkey") == LATE)  # ordered before the customer landed
    assert late.height == 2 and not late["is_inferred"].any()
    assert (late["orderdate"] < late["valid_from"].dt.date()).all()


def test_a_customer_that_never_lands_is_one_inferred_member_across_batches(
        rebuilt: tuple[dict[str, pl.DataFrame], ...]) -> None:
    whole = rebuilt[0]
    members = whole["dim_customer"].filter(pl.col("custkey") == NEVER)
    assert members.height == 1 and members["is_inferred"].all()
    facts = whole["keyed"].filter(pl.col("custkey") == NEVER)
    days = sorted(facts["orderdate"].to_list())
    assert len(days) == 2 and days[1] - days[0] >= timedelta(days=4)  # two batches apart
    # the first batch infers it; the later one finds it among the versions, like any other
    assert json.loads(whole["counts"]["details"][0])["dim_customer:inferred"] == 1


def test_a_row_with_an_unknown_supplier_is_quarantined_with_the_reason(
        rebuilt: tuple[dict[str, pl.DataFrame], ...]) -> None:
    held = rebuilt[0]["quarantine"]
    assert held["suppkey"].to_list() == [NO_SUPPLIER]
    assert held["reason"].to_list() == [f"suppkey {NO_SUPPLIER} not found in dim_supplier"]
    assert json.loads(rebuilt[0]["counts"]["details"][0])["dim_supplier:quarantined"] == 1
