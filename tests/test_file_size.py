"""The warehouse file stays near its data's size, and its upkeep keeps every row.

Builds go through the installed command (``starsmith build --in-process``); the file is compared
with ``COPY FROM DATABASE`` into a fresh file, the smallest file those rows make.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.duckdb import upkeep as upkeep_module
from starsmith.loaders.duckdb.upkeep import REWRITE_SUFFIX, upkeep
from starsmith.orchestration.server import LocalServer
from tests.faults.harness import Demo, day
from tests.temporal_helpers import request, run_build

MAX_RATIO = 1.5


def fresh_copy_bytes(path: Path, folder: Path) -> int:
    fresh = folder / "fresh.duckdb"
    fresh.unlink(missing_ok=True)
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{fresh}' AS fresh")
        con.execute("COPY FROM DATABASE src TO fresh")
        con.execute("DETACH fresh")
    return fresh.stat().st_size


def assert_same_database(got: Path, want: Path) -> None:
    """Every table of both files (schemas, star and bookkeeping), with the same columns,
    constraints and rows (EXCEPT ALL both ways: duplicates count)."""
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{got}' AS got (READ_ONLY)")
        con.execute(f"ATTACH '{want}' AS want (READ_ONLY)")

        def tables(db: str) -> list[tuple[str, str, str]]:
            return con.execute(
                "SELECT schema_name, table_name, sql FROM duckdb_tables() WHERE database_name = ?"
                " ORDER BY 1, 2", [db]).fetchall()

        def constraints(db: str) -> list[tuple[str, ...]]:
            return con.execute(
                "SELECT schema_name, table_name, constraint_type, constraint_text FROM "
                "duckdb_constraints() WHERE database_name = ? ORDER BY ALL", [db]).fetchall()

        # file_upkeep records each rewrite: the rewritten file has one row more
        mine = tables("got")
        assert [t for t in mine if t[1] != "file_upkeep"] == [
            t for t in tables("want") if t[1] != "file_upkeep"]
        assert [c for c in constraints("got") if c[1] != "file_upkeep"] == [
            c for c in constraints("want") if c[1] != "file_upkeep"]
        for schema, table, _ in mine:
            ref = f'"{schema}"."{table}"'
            ways = [("want", "got")] if table == "file_upkeep" else [("got", "want"),
                                                                     ("want", "got")]
            if table == "file_upkeep" and not [t for t in tables("want") if t[1] == table]:
                continue
            for a, b in ways:
                extra = con.execute(f"SELECT count(*) FROM (FROM {a}.{ref} EXCEPT ALL "
                                    f"FROM {b}.{ref})").fetchall()[0][0]
                assert extra == 0, f"{schema}.{table}: {extra} row(s) of {a} not in {b}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Three nights (one build each), then one build of the next three days."""
    demo = Demo(tmp_path_factory.mktemp("file_size") / "shop", days=6)
    for n in (1, 2, 3):
        demo.build("--from", day(n).isoformat(), "--to", day(n).isoformat())
    demo.build()
    return demo


def test_nightly_builds_and_a_range_keep_the_file_near_its_data(built: Demo,
                                                                 tmp_path: Path) -> None:
    size, fresh = built.warehouse.stat().st_size, fresh_copy_bytes(built.warehouse, tmp_path)
    assert size <= MAX_RATIO * fresh, f"file {size:,} B, fresh copy {fresh:,} B"
    marks = built.query("SELECT count(DISTINCT logical_date) AS n FROM _starsmith.watermarks")
    assert marks["n"][0] == 6  # every day built, its bookkeeping kept
    rewrites = built.query("SELECT count(*) AS n FROM _starsmith.file_upkeep")
    assert rewrites["n"][0] >= 1
    assert not (built.warehouse.parent / (built.warehouse.name + REWRITE_SUFFIX)).exists()


def _bloated(built: Demo, folder: Path) -> Path:
    """A copy of the built warehouse grown by many small bookkeeping commits (each call opens,
    commits and closes: one checkpoint each), as a long run of builds grows it."""
    path = folder / "warehouse.duckdb"
    shutil.copyfile(built.warehouse, path)
    wh = DuckDBWarehouse(path)
    for i in range(60):
        wh.log_failure({"run_id": f"bloat-{i}", "model": "dim_customer", "status": "failed",
                        "logical_date": day(1), "message": f"attempt {i}"})
        wh.mark_restatements(pl.DataFrame({"model": [f"m{i % 7}"], "from_day": [day(1)],
                                           "reason": ["test"]}))
    return path


def test_upkeep_rewrites_a_grown_file_and_keeps_every_row(built: Demo, tmp_path: Path) -> None:
    path = _bloated(built, tmp_path)
    saved = tmp_path / "before.duckdb"
    shutil.copyfile(path, saved)
    before = path.stat().st_size
    assert before > MAX_RATIO * fresh_copy_bytes(path, tmp_path)  # it did grow
    done = upkeep(DuckDBWarehouse(path))
    assert done.rewritten and done.before == before
    assert path.stat().st_size <= MAX_RATIO * fresh_copy_bytes(path, tmp_path)
    assert_same_database(path, saved)
    wh = DuckDBWarehouse(path)  # the file works as the warehouse: keys and upserts hold
    marks = wh.watermarks()
    with wh.connect() as con:
        con.execute("INSERT OR REPLACE INTO _starsmith.watermarks VALUES (?, ?, 'again', "
                    "NULL, now())", [marks["model"][0], marks["logical_date"][0]])
    assert wh.watermarks().height == marks.height
    assert not upkeep(wh).rewritten  # near its data now: nothing to do


def test_a_connection_opened_during_the_rewrite_waits_and_its_commit_lands(
        built: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of another workflow in this worker opens the file while the upkeep is between its
    copy and its rename: it waits for the new file, and its row is in it (not in the old file
    the rename drops)."""
    path = _bloated(built, tmp_path)
    in_window, wrote = threading.Event(), threading.Event()
    real_swap = upkeep_module._swap

    def slow_swap(*args: object) -> None:
        in_window.set()
        wrote.wait(2)  # the other connection has as long as it needs to get in (it must not)
        real_swap(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(upkeep_module, "_swap", slow_swap)

    def step() -> None:
        in_window.wait(30)
        with DuckDBWarehouse(path).connect() as con:
            con.execute("CREATE TABLE main.written_meanwhile AS SELECT 42 AS answer")
        wrote.set()

    other = threading.Thread(target=step)
    other.start()
    done = upkeep(DuckDBWarehouse(path))
    other.join(30)
    assert done.rewritten and in_window.is_set() and wrote.is_set()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.sql("SELECT answer FROM main.written_meanwhile").fetchall() == [(42,)]


def test_upkeep_leaves_a_file_in_use_in_this_process(built: Demo, tmp_path: Path) -> None:
    path = _bloated(built, tmp_path)
    wh = DuckDBWarehouse(path)
    with wh.session():
        done = upkeep(DuckDBWarehouse(path))
    assert not done.rewritten and done.reason == "in use"
    assert path.stat().st_size == done.before


KILLED = """
import sys
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.duckdb.upkeep import upkeep
upkeep(DuckDBWarehouse(sys.argv[1]))
"""


def test_a_crash_during_the_rewrite_leaves_the_old_file(built: Demo, tmp_path: Path) -> None:
    path = _bloated(built, tmp_path)
    saved = tmp_path / "before.duckdb"
    shutil.copyfile(path, saved)
    tmp = path.with_name(path.name + REWRITE_SUFFIX)
    env = os.environ | {"STARSMITH_FAILPOINT": f"upkeep_copied:{tmp.name}"}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed after the copy, before the rename
    assert tmp.exists()  # the partial copy is left, beside the untouched file
    assert_same_database(path, saved)
    done = upkeep(DuckDBWarehouse(path))  # the next upkeep clears it and finishes the job
    assert done.rewritten and not tmp.exists()
    assert_same_database(path, saved)


@pytest.mark.temporal
@pytest.mark.slow
def test_the_workflow_ends_with_the_upkeep(temporal_server: LocalServer, landing: Path,
                                          tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    report, handle = asyncio.run(run_build(temporal_server.address,
                                           request(landing, wh, [date(2024, 1, 1)])))
    assert report.ok

    async def activities() -> list[str]:
        client = await Client.connect(temporal_server.address)
        history = await client.get_workflow_handle(handle.id).fetch_history()
        return [e.activity_task_scheduled_event_attributes.activity_type.name
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]

    assert asyncio.run(activities())[-1] == "upkeep"
    assert wh.stat().st_size <= MAX_RATIO * fresh_copy_bytes(wh, tmp_path)
    rewrites = DuckDBWarehouse(wh).query("SELECT count(*) AS n FROM _starsmith.file_upkeep")
    assert rewrites["n"][0] == 1


# -- the first upkeep of a file never rewritten: judged by an estimate of its copy ---------------


def _small_commits(wh: DuckDBWarehouse, n: int) -> None:
    """``n`` bookkeeping commits of a row or two, each its own open, commit and close (each
    checkpoint writes its own blocks), as the steps of builds leave them."""
    for i in range(n):
        wh.log_failure({"run_id": f"step-{i}", "model": "dim_customer", "status": "failed",
                        "logical_date": day(1), "message": f"attempt {i}"})


def test_a_fresh_full_refresh_is_not_copied_by_its_first_upkeep(tmp_path: Path) -> None:
    """A full refresh writes its tables in large row groups, beside one small commit a step:
    its file is near a copy already, and copying it would cost seconds for nothing."""
    path = tmp_path / "warehouse.duckdb"
    wh = DuckDBWarehouse(path)
    with wh.connect() as con:
        con.execute("CREATE TABLE main.fact AS SELECT range AS id, range % 997 AS k, "
                    "hash(range) AS h FROM range(1500000)")
    _small_commits(wh, 6)
    size, fresh = path.stat().st_size, fresh_copy_bytes(path, tmp_path)
    assert size > upkeep_module.MIN_BYTES
    with duckdb.connect(str(path), read_only=True) as con:
        assert upkeep_module._copy_estimate(con) <= fresh  # errs towards a rewrite
    done = upkeep(DuckDBWarehouse(path))
    assert not done.rewritten and done.reason == ""
    assert size <= upkeep_module.REWRITE_AT * fresh  # what a rewrite would have kept it under
    assert not DuckDBWarehouse(path).query(
        "SELECT * FROM duckdb_tables() WHERE table_name = 'file_upkeep'").height


def test_a_file_grown_by_small_commits_is_rewritten_by_its_first_upkeep(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    wh = DuckDBWarehouse(path)
    with wh.connect() as con:
        con.execute("CREATE TABLE main.fact AS SELECT range AS id FROM range(50000)")
    _small_commits(wh, 60)
    saved = tmp_path / "before.duckdb"
    shutil.copyfile(path, saved)
    size, fresh = path.stat().st_size, fresh_copy_bytes(path, tmp_path)
    assert size > upkeep_module.REWRITE_AT * fresh  # grown well past its data
    done = upkeep(DuckDBWarehouse(path))
    assert done.rewritten and "(first upkeep)" in done.reason
    assert path.stat().st_size <= MAX_RATIO * fresh_copy_bytes(path, tmp_path)
    assert_same_database(path, saved)
