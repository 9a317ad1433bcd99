"""BigQuery publishes: schema evolution, a retried publish that must not run twice, and errors.

Tables live in the local emulator and are driven through the official client; the error tests
build the client library's own exception types, as the client raises them.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pytest
from google.api_core import exceptions as api

from starsmith.contract import Column, Kind, Model, Strategy
from starsmith.errors import ConfigError, DataError, RetryableError
from starsmith.loaders import sql
from starsmith.loaders.bigquery.connection import BigQueryRef, classify, is_transient, retrying
from starsmith.loaders.bigquery.warehouse import BigQueryWarehouse
from starsmith.loaders.target import Publish
from tests.bigquery_emulator import PROJECT, Emulator


def _identity(inputs: Any, ctx: Any) -> Any:
    return next(iter(inputs.values()))


def model(*columns: Column) -> Model:
    return Model("orders", Kind.STAGING, (), columns, _identity, Strategy.MERGE,
                 unique_key=("k",), description="orders, one row each")


K = Column("k", pl.Int64(), "order id", nullable=False)
V = Column("v", pl.String(), "status")
W = Column("w", pl.Float64(), "amount, added later")


def publish(wh: BigQueryWarehouse, m: Model, rows: pl.DataFrame, run_id: str,
            full_refresh: bool = False) -> None:
    staged = wh.stage(m.name, run_id, rows)
    stmts = (sql.replace_all("main.orders", staged) if full_refresh else
             [sql.create_like("main.orders", staged),
              *sql.merge("main.orders", staged, ["k"], m.schema.names())])
    wh.publish(Publish("orders", staged, stmts, {
        "run_id": run_id, "model": "orders", "logical_date": date(2024, 1, 1),
        "status": "success", "fingerprint": m.fingerprint()}, model=m, full_refresh=full_refresh))


def warehouse(emulator: Emulator, dataset: str, job_key: str = "") -> BigQueryWarehouse:
    return BigQueryWarehouse(BigQueryRef(PROJECT, dataset, endpoint=emulator.endpoint),
                             job_key=job_key, merge_mode="delete_insert")


@pytest.mark.bigquery
def test_a_new_nullable_column_is_added_with_its_description(emulator: Emulator) -> None:
    wh = warehouse(emulator, "evolve_add")
    with wh.session():
        publish(wh, model(K, V), pl.DataFrame({"k": [1, 2], "v": ["a", "b"]}), "r1")
        publish(wh, model(K, V, W), pl.DataFrame({"k": [2, 3], "v": ["B", "c"],
                                                  "w": [2.5, 3.5]}), "r2")
        table = emulator.client().get_table(f"{PROJECT}.evolve_add.orders")
        fields = {f.name: f for f in table.schema}
        assert fields["w"].description == "amount, added later" and fields["w"].mode == "NULLABLE"
        rows = wh.read("orders").sort("k").rows()
        assert rows == [(1, "a", None), (2, "B", 2.5), (3, "c", 3.5)]


@pytest.mark.bigquery
@pytest.mark.parametrize(("new", "says"), [
    ((K,), "column v is no longer in the model"),
    ((K, Column("v", pl.Int64(), "status code")), "column v changes type STRING -> INT64"),
    ((K, V, Column("x", pl.Int64(), "required", nullable=False)), "new column x is required"),
])
def test_an_incompatible_change_stops_before_any_data_moves(emulator: Emulator, new: tuple[
        Column, ...], says: str) -> None:
    dataset = f"evolve_bad_{len(new)}_{new[-1].name}"
    wh = warehouse(emulator, dataset)
    with wh.session():
        publish(wh, model(K, V), pl.DataFrame({"k": [1], "v": ["a"]}), "r1")
        changed = model(*new)
        with pytest.raises(ConfigError) as err:
            wh.check_schema(changed, full_refresh=False)
        message = str(err.value)
        assert says in message and f"{PROJECT}.{dataset}.orders" in message
        assert "--full-refresh" in message and not err.value.retryable
        assert wh.read("orders").rows() == [(1, "a")]  # untouched
        # the way out the error names: a full refresh rebuilds the table from the spec
        rows = pl.DataFrame({c.name: [7] if c.dtype == pl.Int64() else ["z"] for c in new},
                            schema=changed.schema)
        wh.check_schema(changed, full_refresh=True)
        publish(wh, changed, rows, "r2", full_refresh=True)
        assert wh.read("orders").rows() == rows.rows()


@pytest.mark.bigquery
def test_a_retried_publish_finds_its_job_and_does_not_publish_twice(emulator: Emulator) -> None:
    rows = pl.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    first = warehouse(emulator, "retry_once", job_key="workflow-run-1")
    with first.session():
        publish(first, model(K, V), rows, "r1")
    # the same step again in the same build run (a worker died before reporting success)
    retry = warehouse(emulator, "retry_once", job_key="workflow-run-1")
    publish(retry, model(K, V), rows, "r1")
    published = [s for s in retry.jobs.stats if s.kind == "publish"]
    assert published and published[0].reused
    assert published[0].job_id == next(s for s in first.jobs.stats if s.kind == "publish").job_id
    assert retry.run_log().height == 1  # one publish, one run-log row
    # another build run of the same day publishes again (and changes nothing)
    again = warehouse(emulator, "retry_once", job_key="workflow-run-2")
    publish(again, model(K, V), rows, "r1")
    assert not next(s for s in again.jobs.stats if s.kind == "publish").reused
    assert again.run_log().height == 2 and again.read("orders").sort("k").rows() == rows.rows()


def test_transient_errors_are_retryable_and_bad_requests_are_not() -> None:
    for err in (api.TooManyRequests("slow down"), api.ServiceUnavailable("try later"),
                api.InternalServerError("boom"), ConnectionResetError("reset"),
                api.Forbidden("quota", errors=[{"reason": "rateLimitExceeded"}]),
                api.BadRequest("Transaction is aborted due to concurrent update against table "
                               "p.d_starsmith.watermarks", errors=[{"reason": "invalidQuery"}])):
        assert is_transient(err)
        assert isinstance(classify(err, "t"), RetryableError) and classify(err, "t").retryable
    bad = classify(api.BadRequest("Syntax error", errors=[{"reason": "invalidQuery"}]), "t")
    assert isinstance(bad, DataError) and not bad.retryable
    denied = classify(api.Forbidden("Access Denied: bigquery.tables.create"), "p.d")
    assert isinstance(denied, ConfigError) and "README" in str(denied) and not denied.retryable
    assert isinstance(classify(api.NotFound("Dataset p:d"), "p.d"), ConfigError)


def test_retrying_backs_off_on_transient_errors_only() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise api.ServiceUnavailable("backend")
        return "done"

    assert retrying(flaky, "t", delay=0.01) == "done" and len(calls) == 3
    calls.clear()

    def broken() -> str:
        calls.append(1)
        raise api.BadRequest("no such column")

    with pytest.raises(DataError):
        retrying(broken, "t", delay=0.01)
    assert len(calls) == 1  # a bad request is not retried


@pytest.mark.bigquery
def test_batches_staged_apart_read_back_as_one_table_in_order(emulator: Emulator) -> None:
    wh = warehouse(emulator, "union_parts")
    with wh.session():
        parts = [wh.stage(f"orders__part{i}", "r1", pl.DataFrame({"k": [3 * i + 2, 3 * i + 1],
                                                                  "v": [f"p{i}", f"q{i}"]}))
                 for i in range(3)]
        staged = wh.union(parts)
        assert wh.read_staged(staged).rows() == [(2, "p0"), (1, "q0"), (5, "p1"), (4, "q1"),
                                                 (8, "p2"), (7, "q2")]
        row = wh.query(f"SELECT count(*) AS n FROM {staged}").row(0)
        assert row == (6,)


@pytest.mark.bigquery
def test_a_refused_audit_leaves_the_published_table_and_records_why(emulator: Emulator) -> None:
    """Write, audit, publish on BigQuery: bad staged rows never reach the table."""
    from starsmith.quality.contract import audit_staged
    from starsmith.quality.expect import Expect
    from starsmith.quality.gate import judge, refuse

    wh = warehouse(emulator, "refused")
    m = model(K, V)
    with wh.session():
        publish(wh, m, pl.DataFrame({"k": [1, 2], "v": ["a", "b"]}), "r1")
        bad = wh.stage("orders", "r2", pl.DataFrame({"k": [1, 1, None], "v": ["x", "y", "z"]},
                                                    schema={"k": pl.Int64(), "v": pl.String()}))
        with pytest.raises(DataError, match=r"1 row\(s\) with null k; 1 row\(s\) with duplicate k"):
            audit_staged(wh, bad, m)
        gated = Model(m.name, m.kind, m.inputs, m.columns, m.transform, m.strategy,
                      unique_key=m.unique_key, expectations=(
                          Expect("expect_column_values_to_be_in_set", column="v",
                                 value_set=["a", "b"]),))
        verdict = judge(pl.DataFrame(), gated, "r2", date(2024, 1, 2), wh, bad)
        assert verdict.failed
        wh.record_quality(verdict.results)
        with pytest.raises(DataError):
            refuse(verdict, gated)
        assert wh.read("orders").sort("k").rows() == [(1, "a"), (2, "b")]
        results = wh.query("SELECT * FROM _starsmith.quality_results WHERE run_id = 'r2'")
        assert results["success"].to_list() == [False]
        wh.log_failure({"run_id": "r2", "model": "orders", "logical_date": date(2024, 1, 2),
                        "status": "failed", "message": "refused by the gate"})
        log = wh.run_log()
        assert log.filter(pl.col("run_id") == "r2")["status"].to_list() == ["failed"]
