"""End to end on the embedded warehouse: demo sources, several days, real DuckDB."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from starsmith.errors import DataError
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.landed import write_manifest
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import DayOutcome
from starsmith.orchestration.plan import make_plan, pending_dates
from starsmith.quality.contract import audit_staged
from starsmith.registry import Catalogue
from starsmith.scaffold import demo_catalogue as load_catalogue
from tests.conftest import DEMO_DAYS

pytestmark = pytest.mark.slow
DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(DEMO_DAYS)]
DIMS = {"dim_customer": ("customer_key", "customer_id"), "dim_product": ("product_key", "product_id"),
        "dim_store": ("store_key", "store_id")}


def build(landing: Path, wh: Path, dates: list[date], *, full_refresh: bool = False,
          select: list[str] | None = None, catalogue: Catalogue | None = None,
          memory_budget: str = "") -> list[DayOutcome]:
    cat = catalogue or load_catalogue()
    plan = make_plan(cat, cat.select(select), dates, full_refresh=full_refresh)
    outcomes = run_plan(plan, landing=str(landing), warehouse=str(wh), memory_limit="1GB",
                        catalogue=cat, memory_budget=memory_budget)
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
    assert pending_dates(cat, list(cat.order), demo_landing, built).days == []
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


def test_full_refresh_of_dimensions_equals_their_incremental_build(demo_landing: Path,
                                                                   tmp_path: Path) -> None:
    # Without facts: facts add inferred members, which are not source history (see README).
    dims = ["+dim_customer", "+dim_product", "+dim_store"]
    inc, path = tmp_path / "inc.duckdb", tmp_path / "full.duckdb"
    build(demo_landing, inc, DAYS, select=dims)
    build(demo_landing, path, DAYS[:1], select=dims)  # staging must exist to replay from
    build(demo_landing, path, [DAYS[-1]], full_refresh=True, select=dims)
    full = tables(DuckDBWarehouse(path))
    incremental = tables(DuckDBWarehouse(inc))
    for dim in DIMS:
        keep = [c for c in incremental[dim].columns if c != "run_id"]
        assert full[dim].select(keep).sort(pl.all()).equals(
            incremental[dim].select(keep).sort(pl.all())), dim


def test_a_crash_between_staging_and_publish_leaves_the_previous_table(
        landing: Path, tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    dims = ["+dim_customer"]
    build(landing, path, DAYS[:2], select=dims)
    wh = DuckDBWarehouse(path)
    before = wh.read("dim_customer").sort("customer_key")
    script = ("from starsmith.orchestration.messages import StepRequest; "
              "from starsmith.orchestration.step import run_step; "
              "from starsmith.scaffold import demo_catalogue; "
              f"run_step(StepRequest('dim_customer', '{DAYS[2]}', 'build-{DAYS[2]}', "
              f"'{landing}', '{path}'), demo_catalogue())")
    build(landing, path, [DAYS[2]], select=["stg_customers"])
    env = {**os.environ, "STARSMITH_FAILPOINT": "after_stage:dim_customer"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert wh.read("dim_customer").sort("customer_key").equals(before)
    assert wh.staged_files() == []  # the step's rows were staged in its session, nothing half-kept

    build(landing, path, [DAYS[2]], select=["dim_customer"])  # the retry finishes the step
    clean = tmp_path / "clean.duckdb"
    build(landing, clean, DAYS[:3], select=dims)
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


def test_rows_staged_from_memory_are_audited_there_with_the_same_verdict(
        built: DuckDBWarehouse, tmp_path: Path) -> None:
    """The contract on rows a step holds: NULLs counted from the arrays, the same refusal as the
    query over the staged table; a unique key the step did not prove is left to the query."""
    wh = DuckDBWarehouse(tmp_path / "held.duckdb")
    model = load_catalogue().model("dim_date")
    good = built.read("dim_date").head(3)
    bad = good.with_columns(date_key=pl.when(pl.int_range(pl.len()) == 1).then(None)
                            .otherwise("date_key"))
    with wh.session():
        staged = wh.stage("dim_date", "held-run", bad, in_memory=True)
        with pytest.raises(DataError) as queried:
            audit_staged(wh, staged, model, known_unique=True)
        with pytest.raises(DataError) as held:
            audit_staged(wh, staged, model, known_unique=True, held=bad)
        assert str(held.value) == str(queried.value) and "1 row(s) with null date_key" in str(
            held.value)
        # counted from the rows given, not the staged table: these are the step's own rows
        audit_staged(wh, staged, model, known_unique=True, held=good)
        twice = pl.concat([good, good.head(1)])
        staged = wh.stage("dim_date", "held-run-2", twice, in_memory=True)
        with pytest.raises(DataError, match="1 row\\(s\\) with duplicate date_key"):
            audit_staged(wh, staged, model, held=twice)  # the key unproven: the query counts


FACTS = ["fact_sales", "fact_inventory_daily", "fact_order_fulfilment"]


@pytest.mark.parametrize("batch_days", [31, 1])
def test_nightly_incremental_facts_equal_one_full_rebuild(built: DuckDBWarehouse,
                                                         demo_landing: Path, tmp_path: Path,
                                                         batch_days: int) -> None:
    """One rebuild in one batch, and one day at a time (the memory-bounded path)."""
    copy = tmp_path / "facts.duckdb"
    copy.write_bytes(built.path.read_bytes())
    cat = load_catalogue()
    models = {name: replace(m, fact=replace(m.fact, batch_days=batch_days)) if m.fact else m
              for name, m in cat.models.items()}
    batched = Catalogue(models, cat.sources, cat.order)
    build(demo_landing, copy, [DAYS[-1]], full_refresh=True, select=FACTS, catalogue=batched)
    rebuilt, nightly = tables(DuckDBWarehouse(copy)), tables(built)
    for fact in FACTS:
        assert nightly[fact].height > 0
        assert rebuilt[fact].equals(nightly[fact]), fact
    assert rebuilt["dim_customer"].equals(nightly["dim_customer"])  # no new inferred members


def test_a_memory_budget_batches_a_rebuild_and_changes_no_row(built: DuckDBWarehouse,
                                                              demo_landing: Path,
                                                              tmp_path: Path) -> None:
    """A budget below what the process already holds: every partition is built on its own."""
    copy = tmp_path / "budget.duckdb"
    copy.write_bytes(built.path.read_bytes())
    outcomes = build(demo_landing, copy, [DAYS[-1]], full_refresh=True, select=FACTS[:2],
                     memory_budget="1MB")
    steps = {r.model: r for o in outcomes for r in o.built}
    rebuilt, nightly = tables(DuckDBWarehouse(copy)), tables(built)
    for fact, column in (("fact_sales", "sale_date"), ("fact_inventory_daily", "snapshot_date")):
        assert rebuilt[fact].equals(nightly[fact]), fact
        assert steps[fact].details["batches"] == nightly[fact][column].n_unique() > 1


def test_fact_keys_point_at_existing_dimension_rows(built: DuckDBWarehouse) -> None:
    orphans = built.query("""
        SELECT
          (SELECT count(*) FROM fact_sales f ANTI JOIN dim_customer d USING (customer_key)) AS c,
          (SELECT count(*) FROM fact_sales f ANTI JOIN dim_product d USING (product_key)) AS p,
          (SELECT count(*) FROM fact_sales f ANTI JOIN dim_store d USING (store_key)) AS s,
          (SELECT count(*) FROM fact_sales f ANTI JOIN dim_date d USING (date_key)) AS d,
          (SELECT count(*) FROM fact_inventory_daily f ANTI JOIN dim_product d USING (product_key))
            AS ip""").row(0)
    assert orphans == (0, 0, 0, 0, 0)
    # NULL natural keys land on -2 "Not applicable", exactly as many as the staged rows have
    members = built.query("""
        SELECT (SELECT count(*) FROM fact_sales WHERE customer_key = -2),
               (SELECT count(*) FROM fact_sales f JOIN (SELECT DISTINCT order_id, customer_id
                FROM stg_orders) o USING (order_id) WHERE o.customer_id IS NULL),
               (SELECT count(*) FROM fact_sales WHERE product_key = -2),
               (SELECT count(*) FROM (SELECT DISTINCT order_id, line_no FROM stg_order_lines
                WHERE product_id IS NULL))""").row(0)
    assert members[0] == members[1] and members[2] == members[3] and members[3] > 0, members
    unknown = built.query("""
        SELECT (SELECT count(*) FROM fact_sales WHERE store_key = -1) AS got,
               (SELECT count(*) FROM fact_sales f JOIN stg_orders o USING (order_id)
                WHERE o.store_id NOT IN (SELECT store_id FROM dim_store WHERE store_id IS NOT NULL))
               AS want""").row(0)
    assert unknown[0] == unknown[1]
    inferred = built.query("SELECT count(*) AS n FROM dim_customer WHERE run_id LIKE 'build-%' "
                           "AND valid_from = TIMESTAMP '1900-01-01'")["n"][0]
    assert inferred > 0  # customers first seen in orders became inferred members


def test_a_row_later_than_the_lookback_still_lands_in_its_partition(landing: Path,
                                                                   tmp_path: Path) -> None:
    day = DAYS[-1]
    folder = landing / "order_lines" / f"date={day}"
    lines = pl.read_parquet(folder / "part-0.parquet")
    orders = pl.read_parquet(landing / "orders" / f"date={day}" / "part-0.parquet")
    old = orders.head(1).with_columns(order_id=pl.lit(10**9, dtype=pl.Int64),
                                      order_ts=pl.lit(datetime(2023, 11, 1, 9)))
    line = lines.head(1).with_columns(order_id=pl.lit(10**9, dtype=pl.Int64),
                                      line_ts=pl.lit(datetime(2023, 11, 1, 9)))
    pl.concat([orders, old]).write_parquet(landing / "orders" / f"date={day}" / "part-0.parquet")
    pl.concat([lines, line]).write_parquet(folder / "part-0.parquet")
    write_manifest(landing / "orders" / f"date={day}", {"part-0.parquet": orders.height + 1})
    write_manifest(folder, {"part-0.parquet": lines.height + 1})  # a corrected export
    path = tmp_path / "late.duckdb"
    build(landing, path, DAYS)
    wh = DuckDBWarehouse(path)
    got = wh.query("SELECT sale_date, order_id FROM fact_sales WHERE order_id = 1000000000")
    assert got.rows() == [(date(2023, 11, 1), 10**9)]
    details = wh.query("SELECT details->>'late_beyond_lookback' AS n FROM _starsmith.run_log "
                       "WHERE model = 'fact_sales' AND logical_date = ?", [day])
    assert details["n"].to_list() == ["1"]


def test_staged_rows_come_in_duckdbs_row_groups_and_load_in_the_order_staged(tmp_path: Path) -> None:
    # A staged file cut into DuckDB's own row groups lets the publish insert them in parallel;
    # loaded into a table, the rows keep the order they were staged in.
    import pyarrow.parquet as pq

    from starsmith.loaders.duckdb.warehouse import DUCKDB_ROW_GROUP

    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    rows = pl.DataFrame({"k": pl.int_range(300_000, eager=True),
                         "v": pl.int_range(300_000, eager=True).cast(pl.String)})
    staged = wh.stage("t", "r1", rows)
    meta = pq.ParquetFile(wh.staged_path("t", "r1")).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [DUCKDB_ROW_GROUP, DUCKDB_ROW_GROUP, 300_000 - 2 * DUCKDB_ROW_GROUP]
    with wh.connect() as con:
        con.execute(f"CREATE TABLE t AS SELECT * FROM {staged}")
    assert wh.read("t").equals(rows)


def test_a_steps_rows_staged_in_its_session_read_and_load_like_a_staged_file(tmp_path: Path
                                                                           ) -> None:
    # In a session the step's output is registered as Arrow (no file): in several batches, in
    # the order staged, with the column types a staged file gives; the publish lets it go.
    from starsmith.loaders import sql
    from starsmith.loaders.target import Publish

    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    n = 300_000
    rows = pl.select(k=pl.int_range(n),
                     v=pl.int_range(n).cast(pl.String) + " a longer string",
                     d=pl.date(2024, 1, 1) + pl.duration(days=pl.int_range(n) % 10),
                     ts=pl.lit(datetime(2024, 1, 2, 3)),
                     amount=pl.int_range(n).cast(pl.Decimal(14, 2)),
                     flag=pl.int_range(n) % 3 == 0)
    on_disk = wh.stage("t", "file", rows)
    with wh.session():
        held = wh.stage("t", "r1", rows, in_memory=True)
        assert wh.staged_files() == [wh.staged_path("t", "file")]
        assert wh.query(f"DESCRIBE SELECT * FROM {held}").equals(
            wh.query(f"DESCRIBE SELECT * FROM {on_disk}"))
        numbered = wh.query(f"SELECT {wh.row_index} AS i, k FROM {held}")
        assert (numbered["i"] == numbered["k"]).all() and numbered.height == n
        wh.publish(Publish(target="t", staged=held, statements=sql.replace_all("main.t", held),
                           run_log={"run_id": "r1", "model": "t", "logical_date": date(2024, 1, 1)}))
        with pytest.raises(Exception, match="_staged__t__r1"):
            wh.query(f"SELECT count(*) FROM {held}")
    assert wh.read("t").equals(rows)


@pytest.mark.parametrize("dtype", [
    pl.Int8(), pl.UInt64(), pl.Float32(), pl.Boolean(), pl.String(), pl.Binary(), pl.Date(),
    pl.Time(), pl.Null(), pl.Decimal(10, 2), pl.Categorical(), pl.Datetime("us"),
    pl.Datetime("ns", "UTC"), pl.List(pl.String()), pl.Struct({"a": pl.Int64(), "b": pl.String()}),
    pl.Datetime("ms"), pl.Duration("us"), pl.Array(pl.Int64(), 2), pl.Int128(),
    pl.List(pl.Duration("us")),
], ids=str)
def test_a_table_gets_the_same_column_types_whichever_way_its_rows_were_staged(
        dtype: pl.DataType, tmp_path: Path) -> None:
    # Types DuckDB would read differently from Arrow (Duration as INTERVAL, ...) are staged as
    # a file, so tables keep the types they were created with.
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    rows = pl.DataFrame([pl.Series("c", [None, None]).cast(dtype)])
    on_disk = wh.stage("t", "file", rows)
    with wh.session():
        held = wh.stage("t", "held", rows, in_memory=True)
        assert wh.query(f"DESCRIBE SELECT * FROM {held}").equals(
            wh.query(f"DESCRIBE SELECT * FROM {on_disk}"))
