"""A snapshot dimension built night by night on BigQuery ends as the same nights end on DuckDB.

Each night a snapshot dimension's step narrows the day's whole snapshot to the records that can
change something (orchestration/snapshot_diff.py). DuckDB compares stored hashes; BigQuery
compares the columns themselves in a FULL JOIN (``_by_columns``), picks records by their row
index, and sends every record of a key sent twice on (``maybe_twice``). Here the messy user
project of tests/test_snapshot_narrowing.py (type-2, type-1 and type-0 changes, values to and
from NULL, keys that go and come back, a record with a NULL key, a key sent twice with other
values) is built one landed day at a time on the BigQuery emulator, through the official client,
and into DuckDB: the dimension, and what it quarantined, must end the same on both, and both
must really have narrowed (most records counted unchanged on later nights).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from starsmith.discover import load_catalogue
from starsmith.loaders.bigquery.warehouse import MERGE_MODE_ENV, BigQueryWarehouse
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.plan import landed_days, make_plan
from starsmith.project import load_project
from starsmith.registry import Catalogue
from tests.bigquery_emulator import PROJECT, Emulator
from tests.test_snapshot_narrowing import DAYS, KEYS, project, snapshots

pytestmark = pytest.mark.bigquery
DIM = "dim_account"


def _nights(cat: Catalogue, landing: Path, days: list[date], warehouse: str) -> None:
    """Each landed day built on its own, as its night would have."""
    models = cat.select(None)
    for day in days:
        plan = make_plan(cat, models, [day])
        assert not plan.ranges  # one day is never a range
        outcomes = run_plan(plan, landing=str(landing), warehouse=warehouse, catalogue=cat)
        assert all(o.ok for o in outcomes), (warehouse, day, [o.failed for o in outcomes])


def _dimension(wh: Warehouse, cat: Catalogue) -> pl.DataFrame:
    """The dimension typed by its model, every column, sorted."""
    schema = cat.models[DIM].schema
    frame = conform_read(wh.read(DIM), schema).select(schema.names())
    return frame.sort(frame.columns, nulls_last=True)


def _quarantine(wh: Warehouse) -> pl.DataFrame:
    """What the dimension held back (the NULL-key record; under LATEST, the twice-sent key's
    superseded record): model, reason, night and natural key, not when it ran nor its run."""
    held = wh.read(f"{DIM}__quarantine").select("model", "reason", "logical_date", "account_id")
    held = held.cast({"logical_date": pl.Date(), "account_id": pl.Int64()})
    return held.sort(held.columns, nulls_last=True)


def _unchanged(wh: Warehouse) -> list[int]:
    """The records each night dropped as unchanged, night by night (0 when none counted)."""
    log = wh.run_log().filter((pl.col("model") == DIM) & (pl.col("status") == "success"))
    log = log.sort("logical_date")
    return [json.loads(d or "{}").get("unchanged", 0) for d in log["details"].to_list()]


def _diff(got: pl.DataFrame, want: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (got.join(want, on=got.columns, how="anti", nulls_equal=True),
            want.join(got, on=got.columns, how="anti", nulls_equal=True))


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "latest"), [("NEW_RECORD", True), ("INVALIDATE", False)])
def test_nightly_snapshots_on_bigquery_equal_duckdb(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        policy: str, latest: bool) -> None:
    # The emulator aborts a transaction that holds a MERGE (see test_bigquery_target.py): the
    # equivalent delete-and-insert form runs here.
    monkeypatch.setenv(MERGE_MODE_ENV, "delete_insert")
    frames = snapshots(7, twice=latest)
    root = project(tmp_path / "accounts", frames, policy=policy, latest=latest)
    proj = load_project(root)
    cat = load_catalogue(proj)
    landing = proj.landing
    assert isinstance(landing, Path)  # the project lands in a local folder
    days = landed_days(cat, cat.select(None), landing)
    assert len(days) == DAYS

    dataset = f"starsmith_snapshots_{policy.lower()}"  # the emulator is shared: a dataset a case
    ref = f"bigquery://{PROJECT}/{dataset}?endpoint={emulator.endpoint}"
    duck_path = tmp_path / "duck" / "warehouse.duckdb"
    duck_path.parent.mkdir()
    _nights(cat, landing, days, ref)
    _nights(cat, landing, days, str(duck_path))
    bq, duck = BigQueryWarehouse.from_ref(ref), DuckDBWarehouse(duck_path)

    got, want = _dimension(bq, cat), _dimension(duck, cat)
    assert want.height > KEYS + 20  # the nights made many versions: the days changed things
    assert want.filter(pl.col("is_current")).height > KEYS * 0.9
    assert want["account_id"].n_unique() < want.height
    assert got.height == want.height, _diff(got, want)
    assert got.equals(want), _diff(got, want)

    q_got, q_want = _quarantine(bq), _quarantine(duck)
    assert q_want.height >= 1 and q_want["account_id"].null_count() >= 1  # the NULL-key record
    assert q_got.equals(q_want), (q_got, q_want)

    # Both targets narrowed: after the first night (an empty dimension), most of each day's
    # records were found unchanged, by stored hashes on DuckDB and by columns on BigQuery.
    n_bq, n_duck = _unchanged(bq), _unchanged(duck)
    assert len(n_bq) == len(n_duck) == DAYS, (n_bq, n_duck)
    assert all(n > KEYS / 2 for n in n_bq[1:]), n_bq
    assert all(n > KEYS / 2 for n in n_duck[1:]), n_duck
    assert n_bq == n_duck  # the same records dropped: a hash and the columns agree
