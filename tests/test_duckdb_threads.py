"""DuckDB steps on activity threads while Temporal's workflow sandbox swaps ``sys.modules``.

While a workflow task runs, the sandbox puts its own mapping in the global ``sys.modules``
(``_ThreadLocalSysModules``, not a dict) and duckdb-python 2 fails to read it: ``register`` and
any statement scanning a registered Arrow table raise ``std::bad_cast`` (loaders/duckdb/session.py).
These tests put the sandbox's real mapping in place from another thread, as a workflow task does,
and run the warehouse's real calls against a real DuckDB file.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from temporalio.worker.workflow_sandbox._importer import _thread_local_sys_modules

from starsmith.errors import RetryableError
from starsmith.loaders import sql
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.duckdb.session import is_bad_cast, modules_swapped
from starsmith.loaders.target import Publish
from starsmith.orchestration.failures import typed
from starsmith.scaffold import demo_catalogue

HOLD_S = 0.3  # one swap, longer than any workflow activation: every call below meets it


@contextmanager
def sandbox_swap(hold: float) -> Iterator[threading.Thread]:
    """Another thread holds Temporal's sandbox ``sys.modules`` for ``hold`` seconds; the body
    runs once it is in place."""
    swapped = threading.Event()

    def workflow_task() -> None:
        with _thread_local_sys_modules.applied(sys, "modules", dict(sys.modules)):
            swapped.set()
            time.sleep(hold)

    task = threading.Thread(target=workflow_task, name="workflow-task")
    task.start()
    assert swapped.wait(10)
    try:
        yield task
    finally:
        task.join()
    assert not modules_swapped()


def publish_job(held: str, day: date, run: str, target: str = "t") -> Publish:
    """A publish that registers Python rows in its transaction: quarantine, landings, quality."""
    return Publish(
        target=target, staged=held, statements=sql.replace_all(f"main.{target}", held),
        run_log={"run_id": run, "model": target, "logical_date": day},
        quarantine=pl.DataFrame({"k": [1], "reason": ["bad"], "logical_date": [day]}),
        quarantine_scope=("logical_date", [day]), landings=[("src", day, f"fp-{run}")],
        quality=pl.DataFrame({"run_id": [run], "model": [target], "success": [True]}))


def test_the_sandbox_swap_fails_duckdb_itself() -> None:
    """The cause, pinned: if a duckdb upgrade reads the mapping again, session.py can go."""
    con = duckdb.connect()
    con.register("_x", pa.table({"a": [1, 2]}))
    with sandbox_swap(HOLD_S):
        with pytest.raises(RuntimeError, match="std::bad_cast") as registering:
            con.register("_y", pa.table({"a": [3]}))
        with pytest.raises(duckdb.Error, match="std::bad_cast") as scanning:
            con.execute("SELECT count(*) FROM _x").fetchall()
    assert is_bad_cast(registering.value) and is_bad_cast(scanning.value)
    assert con.execute("SELECT count(*) FROM _x").fetchall() == [(2,)]


def test_a_step_during_a_workflow_task_waits_for_it_and_publishes(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", memory_limit="256MB", job_key="j1")
    rows = pl.DataFrame({"k": range(1000), "s": [f"v{n}" for n in range(1000)]})
    day = date(2024, 1, 1)
    with sandbox_swap(HOLD_S):
        clock = time.monotonic()
        with wh.session():
            held = wh.stage("t", "r1", rows, in_memory=True)
            assert time.monotonic() - clock > HOLD_S / 2  # its register waited for the swap
            assert wh.query(f"SELECT count(*) AS n FROM {held}")["n"][0] == 1000
            wh.publish(publish_job(held, day, "r1"))
    with sandbox_swap(HOLD_S):
        found = wh.read_keys("t", pl.DataFrame({"k": [3, 5]}))
    assert sorted(found["k"].to_list()) == [3, 5]
    assert wh.read("t").sort("k").equals(rows)
    assert wh.query("SELECT count(*) AS n FROM main.t__quarantine")["n"][0] == 1
    assert wh.landings()["fingerprint"].to_list() == ["fp-r1"]
    with sandbox_swap(HOLD_S):
        wh.record_quality(pl.DataFrame({"run_id": ["r2"], "model": ["t"], "success": [False]}))
        wh.mark_restatements(pl.DataFrame({"model": ["t"], "from_day": [day],
                                           "reason": ["late rows"]}))
    assert wh.restatements()["model"].to_list() == ["t"]
    assert wh.query("SELECT count(*) AS n FROM _starsmith.quality_results")["n"][0] == 2


def test_steps_on_threads_survive_repeated_workflow_tasks(tmp_path: Path) -> None:
    """The demo's failure, compressed: 3 activity threads publish while a workflow thread swaps
    ``sys.modules`` 1 ms in every 50 (without session.py a quarter to a half of the steps fail)."""
    path = tmp_path / "w.duckdb"
    stop, swaps = threading.Event(), [0]
    failures: list[BaseException] = []

    def workflow_tasks() -> None:
        while not stop.is_set():
            with _thread_local_sys_modules.applied(sys, "modules", dict(sys.modules)):
                swaps[0] += 1
                time.sleep(0.001)
            time.sleep(0.05)

    def activity(t: int) -> None:
        wh = DuckDBWarehouse(path, memory_limit="256MB", job_key=f"j{t}")
        rows = pl.DataFrame({"k": range(300), "s": [f"v{n}" for n in range(300)]})
        for i in range(15):
            try:
                with wh.session():
                    held = wh.stage(f"t{t}", f"r{i}", rows, in_memory=True)
                    wh.query(f"SELECT count(*) AS n FROM {held}")
                    wh.publish(publish_job(held, date(2024, 1, 1 + i), f"r{i}", f"t{t}"))
            except Exception as err:  # every failure is the finding
                failures.append(err)

    workflow = threading.Thread(target=workflow_tasks, name="workflow-tasks")
    workflow.start()
    threads = [threading.Thread(target=activity, args=(t,)) for t in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        workflow.join()
    assert swaps[0] > 10
    assert not failures, f"{len(failures)} of 45 steps failed: {failures[:3]}"
    wh = DuckDBWarehouse(path, memory_limit="256MB")
    assert [wh.read(f"t{t}").height for t in range(3)] == [300, 300, 300]
    assert wh.query("SELECT count(*) AS n FROM _starsmith.run_log")["n"][0] == 45


def test_a_bad_cast_left_after_retries_is_retried_by_temporal() -> None:
    con = duckdb.connect()
    with sandbox_swap(HOLD_S), pytest.raises(RuntimeError) as raised:
        con.register("_y", pa.table({"a": [3]}))
    model = demo_catalogue().model("stg_orders")
    err = typed(raised.value, model)
    assert isinstance(err, RetryableError) and err.retryable
    assert "stg_orders" in str(err) and "std::bad_cast" in str(err)
