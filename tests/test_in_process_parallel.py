"""The in-process runner starts every step whose dependencies are built, up to ``--max-parallel``
at once, as the workflow does: the SSB-like star's dimensions build beside its staging model.
Through the installed command, a star built that way must equal one built a step at a time, and
its steps must have overlapped; under a memory budget (the process's peak, which each step
measures as its own) steps go one at a time.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from starsmith.config import ProjectConfig
from starsmith.discover import load_catalogue
from starsmith.loaders.connect import open_warehouse
from starsmith.orchestration import local
from starsmith.orchestration.messages import StepRequest
from starsmith.project import load_project
from tests.ssb_project import MODELS, Scale, land_all, landing_days, write_project
from tests.user_projects import STARSMITH

SCALE = Scale(customers=3000, parts=2000, suppliers=200, days=6, lines_per_day=3000)


def build(root: Path, *args: str) -> None:
    done = subprocess.run([str(STARSMITH), "build", "--in-process", "--full-refresh", *args],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def tables(root: Path) -> dict[str, list[tuple[object, ...]]]:
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        return {m: con.sql(f"SELECT * EXCLUDE (run_id) FROM {m} ORDER BY ALL").fetchall()
                if m.startswith("dim_") and m != "dim_date"
                else con.sql(f"SELECT * FROM {m} ORDER BY ALL").fetchall() for m in MODELS}


def overlaps(root: Path) -> int:
    """How many pairs of steps ran at the same time (by the run log's start and end)."""
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        found = con.sql("""
            SELECT count(*) FROM _starsmith.run_log a JOIN _starsmith.run_log b
              ON a.model < b.model AND a.started_at < b.finished_at
             AND b.started_at < a.finished_at
            WHERE a.status = 'success' AND b.status = 'success'""").fetchall()
    return int(found[0][0])


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_project(tmp_path_factory.mktemp("parallel") / "ssb")
    land_all(root / "landing", SCALE)
    return root


def test_steps_in_flight_together_build_the_star_one_at_a_time_builds(
        star: Path, tmp_path: Path) -> None:
    together, alone, budget = (tmp_path / n for n in ("together", "alone", "budget"))
    for folder in (together, alone, budget):
        shutil.copytree(star, folder)
    build(together, "--max-parallel", "4")
    build(alone, "--max-parallel", "1")
    build(budget, "--max-parallel", "4", "--memory-budget", "4GB")
    assert overlaps(together) > 0  # the dimensions and the staging model ran side by side
    assert overlaps(alone) == 0 and overlaps(budget) == 0
    got = tables(together)
    assert got == tables(alone) == tables(budget)
    assert all(got[m] for m in MODELS)


def test_a_step_whose_publish_meets_another_writer_is_run_again(
        star: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another transaction holds the watermark this step's publish replaces: DuckDB refuses the
    publish (a write-write conflict), the step says WriteConflict, and the runner runs it again
    until the other has committed, as Temporal's retry would; the step then publishes."""
    monkeypatch.setattr(logging.getLogger("starsmith"), "propagate", True)
    caplog.set_level(logging.INFO, logger="starsmith")
    root = tmp_path / "ssb"
    shutil.copytree(star, root)
    build(root)
    project = load_project(root)
    cfg, cat = ProjectConfig.load(project), load_catalogue(project)
    day = landing_days(SCALE)[-1].isoformat()
    request = StepRequest("stg_lineorder", day, f"build-{day}", str(cfg.landing),
                          cfg.warehouse_ref, staging=str(cfg.staging))
    wh = open_warehouse(cfg.warehouse_ref, memory_limit=request.memory_limit)
    with wh.connect() as con, ThreadPoolExecutor(1) as pool:
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT OR REPLACE INTO _starsmith.watermarks VALUES "
                    "('stg_lineorder', ?, 'another writer', NULL, now())", [day])
        step = pool.submit(local._step, request, cat)
        while not any("run again" in r.getMessage() for r in caplog.records):
            assert not step.done(), step.result()  # it must not end while the other holds on
            time.sleep(0.02)
        con.execute("COMMIT")
        result = step.result(timeout=120)
    assert result.status == "success" and result.rows_written > 0
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        marked = con.sql("SELECT run_id FROM _starsmith.watermarks WHERE model = 'stg_lineorder' "
                         "AND logical_date = ?", params=[day]).fetchall()
    assert marked == [(f"build-{day}",)]  # the step's own mark, written after the other's
