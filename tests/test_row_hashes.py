"""A snapshot dimension's stored hashes (orchestration/row_hashes.py) are what each night's diff
compares the snapshot with, so they must always be the hashes of the live versions as stored.

Nights of messy snapshots (type-2, type-1 and type-0 changes, keys that go and come back, a
record with a NULL key), a fact that infers members the snapshot delivers later, and what a
user's environment does to them (another Polars, so another scheme) are built through the
installed command; after each, the stored hashes are held to the table hashed afresh, and the
dimension to a twin project's built the same way."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from starsmith.dimensions import dimension_schema
from starsmith.discover import load_catalogue
from starsmith.loaders.connect import open_warehouse
from starsmith.loaders.landed import write_manifest
from starsmith.orchestration import row_hashes
from starsmith.project import load_project
from tests.test_snapshot_narrowing import DAYS, FIRST, build, project, snapshots, table

FACT = '''\
"""Logins keyed to the account as it was; an account not delivered yet is inferred."""

from __future__ import annotations

import polars as pl

from starsmith import (Additivity, Cadence, Column, FactSpec, FactType, Guard, Input, KeyLookup,
                       Kind, MissingKey, Model, Source, Strategy)

from . import accounts

LOGINS = Source("logins", "parquet", (
    Column("login_id", pl.Int64(), "login"),
    Column("account_id", pl.Int64(), "who"),
    Column("login_ts", pl.Datetime("us"), "when"),
), cadence=Cadence.DAILY, guard=Guard(allow_empty=True))

STG = Model(
    name="stg_logins", kind=Kind.STAGING, inputs=(Input("landing.logins"),),
    columns=(*LOGINS.columns, Column("load_date", pl.Date(), "landing day", nullable=False),
             Column("login_day", pl.Date(), "the day of the login", nullable=False)),
    transform=lambda i, ctx: i["landing.logins"].with_columns(
        load_date=pl.lit(ctx.logical_date), login_day=pl.col("login_ts").dt.date()),
    strategy=Strategy.PARTITION, partition_by="load_date", description="logins as landed")

FACT = FactSpec(
    name="fact_logins", fact_type=FactType.TRANSACTION, grain=("login_id",),
    event_date="login_day", lookback_days=0,
    lookups=(KeyLookup(accounts.SPEC, ("account_id",), "login_ts", MissingKey.INFERRED),),
    measures=(("seconds", Additivity.ADDITIVE),))

MODEL = Model(
    name="fact_logins", kind=Kind.FACT, inputs=(Input("stg_logins"), Input("dim_account")),
    columns=(Column("login_id", pl.Int64(), "login", nullable=False),
             Column("login_day", pl.Date(), "the partition", nullable=False),
             Column("account_key", pl.Int64(), "the account then", nullable=False),
             Column("seconds", pl.Int64(), "session length")),
    transform=lambda i, ctx: i["stg_logins"].with_columns(seconds=pl.lit(60, pl.Int64)),
    strategy=Strategy.PARTITION, partition_by="login_day", unique_key=("login_id",),
    fact=FACT, description="Logins.")
'''


def _catalogue(root: Path) -> tuple[object, pl.Schema, object]:
    cat = load_catalogue(load_project(root))
    model = cat.model("dim_account")
    assert model.dimension is not None
    return model.dimension, dimension_schema(model.dimension, model.schema), cat


def stored_and_afresh(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, str | None, str]:
    """(the stored hashes, the live versions hashed now, the stored scheme, today's scheme)."""
    spec, schema, _ = _catalogue(root)
    wh = open_warehouse(str(root / ".state" / "warehouse.duckdb"))
    with wh.session():
        stored = wh.query('SELECT * FROM _starsmith."dim_account__hashes"')
        afresh = row_hashes.from_table(wh, "dim_account", spec, schema)  # type: ignore[arg-type]
        found = wh.query("SELECT scheme FROM _starsmith.row_hashes WHERE dimension = ?",
                         ["dim_account"])
    now = row_hashes.scheme(spec, schema)  # type: ignore[arg-type]
    return (stored.sort(pl.all()), afresh.sort(pl.all()),
            found["scheme"][0] if found.height else None, now)


def details(root: Path) -> list[dict[str, int]]:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.sql("SELECT details FROM _starsmith.run_log WHERE model = 'dim_account' AND "
                       "status = 'success' ORDER BY finished_at").fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) if r[0] else {} for r in rows]


def night(root: Path, n: int) -> None:
    done = build(root, "--date", (FIRST + timedelta(n)).isoformat())
    assert done.returncode == 0, done.stdout + done.stderr


def tamper(root: Path, statement: str) -> None:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"))
    try:
        con.execute(statement)
    finally:
        con.close()


@pytest.mark.parametrize("policy", ["INVALIDATE", "NEW_RECORD"])
def test_stored_hashes_are_the_live_versions_after_every_night(tmp_path: Path, policy: str
                                                                ) -> None:
    frames = snapshots(3, twice=False)
    root = project(tmp_path / "p", frames, policy=policy, latest=False)
    for n in range(DAYS):
        night(root, n)
        stored, afresh, scheme, now = stored_and_afresh(root)
        assert scheme == now, n
        assert stored.height > 300 and stored.equals(afresh), (
            n, stored.join(afresh, on=stored.columns, how="anti"),
            afresh.join(stored, on=stored.columns, how="anti"))
    # the first night wrote them with the table, every later one used and kept them
    assert [d.get("live_hashed") for d in details(root)] == [None] * DAYS
    assert all(d["unchanged"] > 300 for d in details(root)[1:])
    # and a full refresh writes them whole again
    done = build(root, "--full-refresh", "--date", (FIRST + timedelta(DAYS - 1)).isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    stored, afresh, scheme, now = stored_and_afresh(root)
    assert scheme == now and stored.equals(afresh)


def test_hashes_made_otherwise_are_made_again_from_the_table(tmp_path: Path) -> None:
    """Another Polars (another scheme) makes the stored hashes unusable: the next night hashes
    the table instead, builds what a twin builds, and stores them again."""
    frames = snapshots(7, twice=False)
    root = project(tmp_path / "p", frames, policy="INVALIDATE", latest=False)
    twin = project(tmp_path / "twin", frames, policy="INVALIDATE", latest=False)
    for n in range(3):
        night(root, n)
        night(twin, n)
    tamper(root, "UPDATE _starsmith.row_hashes SET scheme = 'polars 0.1'")
    # and stale rows under that scheme: they must not be read
    tamper(root, 'UPDATE _starsmith."dim_account__hashes" SET _h = 0')
    night(root, 3)
    night(twin, 3)
    assert details(root)[-1]["live_hashed"] > 300
    assert details(twin)[-1].get("live_hashed") is None
    assert table(root).equals(table(twin))
    stored, afresh, scheme, now = stored_and_afresh(root)
    assert scheme == now and stored.equals(afresh)
    night(root, 4)  # and the night after uses them again
    assert details(root)[-1].get("live_hashed") is None


def test_the_stored_hashes_are_what_a_night_compares(tmp_path: Path) -> None:
    """A stored hash that does not match its version sends that key's record to the builder,
    which finds it unchanged: the night counts one unchanged record fewer, builds the same."""
    frames = snapshots(7, twice=False)
    again = [frames[0], frames[0], frames[0]]
    root = project(tmp_path / "p", again, policy="INVALIDATE", latest=False)
    night(root, 0)
    night(root, 1)
    assert details(root)[-1]["unchanged"] == frames[0].height
    before = table(root)
    key = int(frames[0]["account_id"][0])
    tamper(root, f'UPDATE _starsmith."dim_account__hashes" SET _h = _h + 1 WHERE account_id = {key}')
    night(root, 2)
    assert details(root)[-1]["unchanged"] == frames[0].height - 1
    assert table(root).drop("run_id").equals(before.drop("run_id"))


def test_members_a_fact_inferred_are_compared_from_the_table(tmp_path: Path) -> None:
    """A login names an account the snapshot has not delivered: the fact infers it (a member the
    stored hashes never hold). When the snapshot delivers it, the placeholder is completed in
    place and its hash stored; the night after, nothing is left to change."""
    frames = snapshots(3, twice=False)
    day = frames[0]
    newcomer = day.head(1).with_columns(account_id=pl.lit(900_001, pl.Int64))
    root = project(tmp_path / "p", [day, pl.concat([day, newcomer]), pl.concat([day, newcomer])],
                   policy="INVALIDATE", latest=False)
    (root / "models" / "logins.py").write_text(FACT)
    # 900_002 is never delivered: its placeholder is a live key the snapshot lacks, every night
    logins = pl.DataFrame({"login_id": [1, 2, 3],
                           "account_id": [900_001, int(day["account_id"][0]), 900_002],
                           "login_ts": [datetime(2024, 5, 1, 9), datetime(2024, 5, 1, 10),
                                        datetime(2024, 5, 1, 11)]})
    for n in range(3):
        frame = logins if n == 0 else logins.clear()
        folder = root / "landing" / "logins" / f"date={(FIRST + timedelta(n)).isoformat()}"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "part-0.parquet")
        write_manifest(folder, {"part-0.parquet": frame.height})
    night(root, 0)
    inferred = table(root).filter(pl.col("account_id") == 900_001)
    assert inferred.height == 1 and inferred["is_inferred"][0]
    stored, afresh, _, _ = stored_and_afresh(root)
    assert 900_001 not in stored["account_id"].to_list() and stored.equals(afresh)
    night(root, 1)
    done = table(root).filter(pl.col("account_id") == 900_001)
    assert done.height == 1 and not done["is_inferred"][0]
    assert done["account_key"][0] == inferred["account_key"][0]  # completed in place
    assert done["tier"][0] == newcomer["tier"][0]
    stored, afresh, _, _ = stored_and_afresh(root)
    assert 900_001 in stored["account_id"].to_list() and stored.equals(afresh)
    night(root, 2)
    assert details(root)[-1]["unchanged"] == day.height + 1
    # as the builder judges a placeholder the snapshot lacks when it sees every record
    refreshed = tmp_path / "refreshed"
    shutil.copytree(root, refreshed)
    done = build(refreshed, "--full-refresh", "--date", (FIRST + timedelta(2)).isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    assert table(root).drop("run_id").equals(table(refreshed).drop("run_id"))


def test_the_publish_keeps_them_and_compacts_them(tmp_path: Path) -> None:
    """Through the warehouse's publish: a whole set replaces them and names its scheme; a night's
    changed keys replace theirs, and the deleted rows are counted and compacted like a table's;
    a publish of the dimension bringing none makes them unusable."""
    from datetime import date

    from starsmith.loaders.duckdb.warehouse import DuckDBWarehouse
    from starsmith.loaders.target import Publish, RowHashes

    root = project(tmp_path / "p", snapshots(3, twice=False)[:1], policy="INVALIDATE",
                   latest=False)
    spec, schema, cat = _catalogue(root)
    model = cat.model("dim_account")  # type: ignore[attr-defined]
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", compact_min_rows=1)
    keys = pl.DataFrame({"account_id": range(10)}, schema={"account_id": pl.Int64()})

    def publish(hashes: RowHashes | None) -> None:
        with wh.session():
            staged = wh.stage("dim_account", "r", pl.DataFrame({"x": [1]}), in_memory=True)
            wh.publish(Publish(target="dim_account", staged=staged, statements=[],
                               run_log={"run_id": "r", "model": "dim_account",
                                        "logical_date": date(2024, 5, 1), "status": "success"},
                               model=model, hashes=hashes))

    def stored() -> tuple[list[tuple[int, int]], list[str], list[int]]:
        with wh.session():
            rows = wh.query('SELECT * FROM _starsmith."dim_account__hashes" ORDER BY 1')
            scheme = wh.query("SELECT scheme FROM _starsmith.row_hashes")["scheme"].to_list()
            dead = wh.query("SELECT deleted_rows FROM _starsmith.table_upkeep WHERE model = "
                            "'_starsmith.dim_account__hashes'")["deleted_rows"].to_list()
        return [tuple(r) for r in rows.rows()], scheme, dead  # type: ignore[misc]

    now = row_hashes.scheme(spec, schema)  # type: ignore[arg-type]
    publish(RowHashes(now, keys.with_columns(_h=pl.lit(1, pl.UInt64)), None))
    assert stored() == ([(k, 1) for k in range(10)], [now], [])
    night = keys.head(2)  # two keys changed; one of them closed (no live version after)
    publish(RowHashes(now, night.head(1).with_columns(_h=pl.lit(2, pl.UInt64)), night))
    assert stored() == ([(0, 2)] + [(k, 1) for k in range(2, 10)], [now], [2])
    three = keys.slice(2, 3)  # 5 deleted of 9 stored: past a quarter, rewritten after commit
    publish(RowHashes(now, three.with_columns(_h=pl.lit(3, pl.UInt64)), three))
    assert stored() == ([(0, 2), (2, 3), (3, 3), (4, 3)] + [(k, 1) for k in range(5, 10)],
                        [now], [])
    with wh.session():
        assert wh.query("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = "
                        "'dim_account__hashes' AND estimated_size = 9")["n"][0] == 1
    publish(None)  # a publish of the dimension without them (another strategy, say)
    assert stored()[1] == []


@pytest.mark.parametrize("latest", [True, False], ids=["sequence", "fail_on_twice"])
def test_sparse_keys_are_joined_and_end_as_a_full_refresh(tmp_path: Path, latest: bool) -> None:
    """Keys spread far apart are not addressed in an array: the night joins (key, hash) in the
    engine instead, and still ends as a full refresh that gives the builder every record (a key
    sent twice, a NULL key, keys gone and back)."""
    frames = [f.with_columns(account_id=pl.col("account_id") * 100_003)
              for f in snapshots(7, twice=latest)]
    root = project(tmp_path / "nightly", frames, policy="NEW_RECORD" if latest else "INVALIDATE",
                   latest=latest)
    built = FIRST
    for n in range(DAYS):
        done = build(root, "--date", (FIRST + timedelta(n)).isoformat())
        assert done.returncode in (0, 1), done.stdout + done.stderr
        if done.returncode:  # refused: a key sent twice under FAIL
            break
        built = FIRST + timedelta(n)
    assert built >= FIRST + timedelta(3)
    assert all(d["unchanged"] > 300 for d in details(root)[1:])
    refreshed = tmp_path / "refreshed"
    shutil.copytree(root, refreshed)
    done = build(refreshed, "--full-refresh", "--date", built.isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    got, want = table(root), table(refreshed)
    assert got.height > 420 and got.equals(want), (got.join(want, on=got.columns, how="anti"),
                                                  want.join(got, on=got.columns, how="anti"))
