"""A fact built batch by batch holds its rows in memory while they fit and stages them past that
(orchestration/batches.py); it proves its unique key unique by hashing it, so the audit skips
the GROUP BY that counted repeats. What must hold whichever way the rows went:

- a key repeated across batches (one order line landed again days later with another order
  date: another partition, another batch, where no batch's own grain check sees it) is refused
  by the contract, held or staged, and the fact stays unpublished;
- rows held, rows staged past the allowance, and rows staged from the first batch publish the
  same table; only a key that cannot repeat is called unique;
- keys the lookups set on rows held in memory are proven to exist in their dimensions, and
  their References checks report what the query reports; a reserved key the dimension lacks is
  not proven, and is found orphaned.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pytest

from starsmith.loaders.connect import open_warehouse
from starsmith.orchestration.batches import BatchOutput
from tests.ssb_project import Scale, land_all, landing_days, write_project
from tests.user_projects import STARSMITH

SCALE = Scale(customers=50, parts=20, suppliers=5, days=10, lines_per_day=30)


def project(root: Path) -> tuple[Path, dict[str, object]]:
    """The SSB project in batches of two partitions; day 8's landing repeats an order line of
    day 1 with day 8 as its order date. Returns the project and the repeated line's key."""
    write_project(root)
    fact = root / "models" / "marts" / "fact_lineorder.py"
    text = fact.read_text()
    assert "    measures=(" in text
    fact.write_text(text.replace("    measures=(", "    batch_days=2,\n    measures=("))
    days = land_all(root / "landing", SCALE)
    first = pl.read_parquet(root / "landing" / "lineorder" / f"date={days[1]}" / "part-0.parquet")
    path = root / "landing" / "lineorder" / f"date={days[8]}" / "part-0.parquet"
    lines = pl.read_parquet(path)
    again = first.filter(pl.col("orderdate") == days[1]).head(1)
    pl.concat([lines, again.with_columns(orderdate=pl.lit(days[8]))]).write_parquet(path)
    return root, again.select("orderkey", "linenumber").row(0, named=True)


@pytest.mark.parametrize("budget", [[], ["--memory-budget", "1MB"]], ids=["held", "staged"])
def test_a_key_repeated_in_another_batch_is_refused(tmp_path: Path, budget: list[str]) -> None:
    root, key = project(tmp_path / "ssb")
    done = subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh", *budget],
                          cwd=root, capture_output=True, text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, said
    assert "fact_lineorder" in said and "1 row(s) with duplicate orderkey,linenumber" in said
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.sql("SELECT table_name FROM information_schema.tables "
                                        "WHERE table_schema = 'main'").fetchall()}
        assert "stg_lineorder" in tables and "fact_lineorder" not in tables
        landed = con.sql("SELECT count(*) FROM stg_lineorder WHERE orderkey = ? AND "
                         "linenumber = ?", params=[key["orderkey"], key["linenumber"]]).fetchall()
    assert landed == [(2,)]  # both lines were staged: the refusal is the contract's


def test_batches_built_side_by_side_publish_what_one_at_a_time_publishes(tmp_path: Path) -> None:
    """Without a budget the batches (two partitions each) are built two at a time; under a budget
    one at a time. Lines late by two days, a customer never landed (the unknown member) and a
    line landed twice cross the batches, and two lines share a key with different values (both
    held back); both builds must publish the same star and quarantine, and count the same."""
    root, _ = project(tmp_path / "side")
    fact = root / "models" / "marts" / "fact_lineorder.py"
    check = 'References("customer_key", "dim_customer", max_unknown_rate=0.0)'
    assert check in fact.read_text()
    fact.write_text(fact.read_text().replace(check, check.replace("0.0", "0.01")))
    path = root / "landing" / "lineorder" / f"date={landing_days(SCALE)[4]}" / "part-0.parquet"
    lines = pl.read_parquet(path)
    stranger = lines.head(1).with_columns(orderkey=pl.lit(8_000_001, dtype=pl.Int64),
                                          custkey=pl.lit(777_777, dtype=pl.Int64))
    again = pl.read_parquet(path.parent.parent / f"date={landing_days(SCALE)[3]}" /
                            "part-0.parquet").head(2)
    conflict = lines.tail(1).with_columns(quantity=pl.col("quantity") + 1)  # both held back
    pl.concat([lines.filter(pl.col("orderdate") != landing_days(SCALE)[8]), stranger, again,
               conflict]).write_parquet(path)
    repeated = path.parent.parent / f"date={landing_days(SCALE)[8]}" / "part-0.parquet"
    pl.read_parquet(repeated).head(-1).write_parquet(repeated)  # the repeated key: gone again
    alone = tmp_path / "alone"
    shutil.copytree(root, alone)
    got = {}
    for folder, budget in ((root, []), (alone, ["--memory-budget", "1GB"])):
        done = subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh",
                               *budget], cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        side = "fact_lineorder: 6 batches built two at a time" in done.stdout + done.stderr
        assert side is (folder == root)  # a budget measures one batch at a time
        with duckdb.connect(str(folder / ".state" / "warehouse.duckdb"), read_only=True) as con:
            fact = con.sql("SELECT f.* EXCLUDE (customer_key, part_key, supplier_key), "
                           "c.custkey, p.partkey, s.suppkey FROM fact_lineorder f "
                           "JOIN dim_customer c USING (customer_key) JOIN dim_part p "
                           "USING (part_key) JOIN dim_supplier s USING (supplier_key) "
                           "ORDER BY ALL").fetchall()
            held = con.sql("SELECT orderkey, linenumber, quantity, reason FROM "
                           "fact_lineorder__quarantine ORDER BY ALL").fetchall()
            details = con.sql("SELECT details FROM _starsmith.run_log WHERE model = "
                              "'fact_lineorder'").fetchall()
            checked = con.sql("SELECT expectation, column_name, success, observed_value, "
                              "unexpected_count, unexpected_percent, unexpected_sample FROM "
                              "_starsmith.quality_results WHERE model = 'fact_lineorder' "
                              "ORDER BY ALL").fetchall()
        counts = {k: v for k, v in json.loads(details[0][0]).items()
                  if k not in ("job_key", "batches")}
        got[folder.name] = fact, counts, checked, json.loads(details[0][0])["batches"], held
        # held rows prove their looked-up keys; staged batches (the budget's) are checked in SQL
        proven = ("customer_key, part_key, supplier_key reference their dimensions by "
                  "construction") in done.stdout + done.stderr
        assert proven is (folder == root)
    (fact, counts, checked, batches, held), (*alone_built, _, held_alone) = (got["side"],
                                                                            got["alone"])
    assert [fact, counts, checked] == alone_built and held == held_alone and len(held) == 2
    # the proof reports what the query reports: no orphan, the one unknown customer's rate
    references = {(r[0], r[1]): r[2:5] for r in checked if r[1].endswith("_key")}
    assert references[("references dim_customer.customer_key", "customer_key")] == (
        True, "0 orphan key(s)", 0)
    unknown = references[("unknown member rate <= 1.00%", "customer_key")]
    assert unknown[0] is True and unknown[2] == 1
    assert batches == 6 and counts["dim_customer:missing"] == 1  # 12 order dates
    assert len(fact) == sum(pl.read_parquet(p).height for p in
                            (root / "landing" / "lineorder").glob("*/*.parquet")) - 2 - 2


def test_a_catch_up_holds_back_a_key_published_outside_its_partitions_as_its_nights_did(
        tmp_path: Path) -> None:
    """Day 8 re-sends a line of day 1 with day 8 as its order date. Built night by night, night 8
    holds it back: its key is published in partition day 1, which that night does not rebuild
    (a one-day lookback). A catch-up of days 4 to 9 builds its batches two at a time and must
    hold it back too, with the same reason, and publish what the nights published."""
    root, key = project(tmp_path / "nights")
    fact = root / "models" / "marts" / "fact_lineorder.py"
    fact.write_text(fact.read_text().replace("    batch_days=2,", "    batch_days=2, lookback_days=1,"))
    catch_up = tmp_path / "catch_up"
    shutil.copytree(root, catch_up)
    days = landing_days(SCALE)

    def build(folder: Path, *args: str) -> str:
        done = subprocess.run([str(STARSMITH), "build", "--in-process", *args], cwd=folder,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    for day in days:
        build(root, "--date", day.isoformat())
    for day in days[:4]:
        build(catch_up, "--date", day.isoformat())
    said = build(catch_up)
    assert "range" in said and "batches built two at a time" in said, said
    got = []
    for folder in (root, catch_up):
        with duckdb.connect(str(folder / ".state" / "warehouse.duckdb"), read_only=True) as con:
            got.append((
                con.sql("SELECT f.* EXCLUDE (customer_key, part_key, supplier_key), c.custkey, "
                        "p.partkey, s.suppkey FROM fact_lineorder f JOIN dim_customer c "
                        "USING (customer_key) JOIN dim_part p USING (part_key) JOIN "
                        "dim_supplier s USING (supplier_key) ORDER BY ALL").fetchall(),
                con.sql("SELECT orderkey, linenumber, orderdate, reason FROM "
                        "fact_lineorder__quarantine ORDER BY ALL").fetchall()))
    assert got[0] == got[1]
    assert got[1][1] == [(key["orderkey"], key["linenumber"], days[8],
                          f"key (orderkey, linenumber) already published in partition {days[1]}")]


def test_a_transform_that_repeats_a_grain_is_refused_naming_it(tmp_path: Path) -> None:
    """The batch's hashes only spare the grouping: a grain the transform repeats is still named."""
    root = write_project(tmp_path / "ssb")
    fact = root / "models" / "marts" / "fact_lineorder.py"
    text = fact.read_text()
    old = "    return lines.with_columns("
    assert old in text
    fact.write_text(text.replace(old, "    lines = pl.concat([lines, lines.head(1)])\n" + old))
    days = land_all(root / "landing", SCALE)
    first = pl.read_parquet(root / "landing" / "lineorder" / f"date={days[0]}" / "part-0.parquet")
    done = subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh",
                           "--date", days[0].isoformat()],
                          cwd=root, capture_output=True, text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, said
    line = first.sort("orderkey", "linenumber", maintain_order=True).row(0, named=True)
    assert (f"the grain (orderkey, linenumber) is not unique: orderkey={line['orderkey']}, "
            f"linenumber={line['linenumber']} (2 rows)") in said


def batches() -> list[pl.DataFrame]:
    """Five batches of 30,000 rows (more than a row group together), keys unique throughout."""
    return [pl.DataFrame({"k": range(i * 30_000, (i + 1) * 30_000), "v": [f"v{i}"] * 30_000})
            for i in range(5)]


@pytest.mark.parametrize("batches_held", [100, 3.5, 0], ids=["held", "spilled", "staged"])
def test_held_or_staged_rows_publish_the_same_table(tmp_path: Path, batches_held: float) -> None:
    wh = open_warehouse(str(tmp_path / "w.duckdb"), memory_limit="256MB")
    given = batches()
    size = int(given[0].estimated_size())
    allowance = int(batches_held * size)
    with wh.session():
        out = BatchOutput(wh, "fact_x", "run-1", allowance, ("k",))
        for i, frame in enumerate(given):
            out.add(frame, last=i == len(given) - 1)
        rows = out.rows(given[0].schema)
        if batches_held > len(given):  # all held: merged into frames of a row group or more
            assert not out.parts and rows.height == 150_000
            assert [len(c) for c in rows.get_column("k").get_chunks()] == [150_000]
        else:  # staged from the first batch, or held until one did not fit: then all staged
            assert len(out.parts) == 5 and rows.height == 0
        assert out.known_unique
        staged = wh.union(out.parts) if out.parts else wh.stage("fact_x", "run-1", rows,
                                                                 in_memory=True)
        got = wh.query(f"SELECT * FROM {staged} ORDER BY k")
    assert got.equals(pl.concat(given))


def test_only_a_key_that_cannot_repeat_is_called_unique(tmp_path: Path) -> None:
    wh = open_warehouse(str(tmp_path / "w.duckdb"), memory_limit="256MB")
    cases = {  # batches of (k, day) -> unique?
        "apart": ([[(1, 1), (2, 1)], [(3, 2)]], True),
        "across batches": ([[(1, 1), (2, 1)], [(2, 2)]], False),
        "within a batch": ([[(1, 1), (1, 1)]], False),
        "a NULL key twice": ([[(None, 1)], [(None, 2)]], False),
        "NULL and a value": ([[(None, 1)], [(0, 2)]], True),
    }
    with wh.session():
        for name, (given, unique) in cases.items():
            out = BatchOutput(wh, "fact_x", "run-1", 10**9, ("k",))
            for i, rows in enumerate(given):
                out.add(pl.DataFrame(rows, schema={"k": pl.Int64, "day": pl.Int64},
                                     orient="row"), last=i == len(given) - 1)
            assert out.known_unique is unique, name
        none = BatchOutput(wh, "fact_x", "run-1", 10**9)  # no key: nothing proven
        none.add(pl.DataFrame({"k": [1]}), last=True)
        assert not none.known_unique


def test_a_key_the_dimension_lacks_is_still_found_orphaned(tmp_path: Path) -> None:
    """A line without a customer is keyed -2 (not applicable). When the dimension has lost its
    -2 member, the looked-up keys are not proven (the proof asks the dimension for the reserved
    keys it uses): the References check queries, finds the orphan and refuses the fact."""
    root = write_project(tmp_path / "ssb")
    days = land_all(root / "landing", SCALE)
    path = root / "landing" / "lineorder" / f"date={days[2]}" / "part-0.parquet"
    lines = pl.read_parquet(path)
    pl.concat([lines, lines.head(1).with_columns(
        orderkey=pl.lit(9_000_001, dtype=pl.Int64), custkey=pl.lit(None, dtype=pl.Int64))]
              ).write_parquet(path)

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh", *args],
                              cwd=root, capture_output=True, text=True, timeout=300)

    first = build()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "customer_key, part_key, supplier_key reference their dimensions by construction" \
        in first.stdout + first.stderr
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb")) as con:
        assert con.sql("SELECT count(*) FROM fact_lineorder WHERE customer_key = -2"
                       ).fetchall() == [(1,)]
        con.execute("DELETE FROM dim_customer WHERE customer_key = -2")
    again = build("-s", "fact_lineorder")
    said = " ".join((again.stdout + again.stderr).split())
    assert again.returncode != 0, said
    assert "fact_lineorder: part_key, supplier_key reference their dimensions" in said
    assert "references dim_customer.customer_key (customer_key)" in said and "-2" in said
