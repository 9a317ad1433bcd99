"""A full refresh over many landed days is one rebuild from history per model, as of the last
day (not one rebuild per day, whose cost grew with the square of the days), and afterwards
every day counts as built: the next build has nothing to do. Its tables equal a day-by-day build.
Through the installed command, on ``starsmith init``'s project."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl

from tests.user_projects import STARSMITH


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STARSMITH), *args], cwd=root, capture_output=True, text=True, timeout=300)


def tables(root: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        names = [r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() WHERE schema_name"
                                       " = 'main' ORDER BY 1").fetchall()]
        return {n: con.sql(f'SELECT * EXCLUDE (run_id) FROM "{n}" ORDER BY ALL').pl()
                if "run_id" in con.sql(f'SELECT * FROM "{n}" LIMIT 0').columns
                else con.sql(f'SELECT * FROM "{n}" ORDER BY ALL').pl() for n in names}
    finally:
        con.close()


def test_a_full_refresh_of_many_days_is_one_rebuild_and_leaves_nothing_pending(
        tmp_path: Path) -> None:
    nightly = tmp_path / "nightly"
    assert run(tmp_path, "init", str(nightly)).returncode == 0
    refreshed = tmp_path / "refreshed"
    shutil.copytree(nightly, refreshed)

    done = run(nightly, "build", "--in-process")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run(refreshed, "build", "--in-process", "--full-refresh")
    assert done.returncode == 0, done.stdout + done.stderr

    con = duckdb.connect(str(refreshed / ".state" / "warehouse.duckdb"), read_only=True)
    steps = con.sql("SELECT model, count(*) FROM _starsmith.run_log GROUP BY 1").fetchall()
    days = con.sql("SELECT count(DISTINCT logical_date) FROM _starsmith.watermarks").fetchall()
    con.close()
    assert steps and all(n == 1 for _, n in steps), steps  # one step per model, not per day
    assert days[0][0] == 3  # yet the init project's three days all count as built

    plan = run(refreshed, "plan")
    assert "nothing pending" in plan.stdout, plan.stdout
    again = run(refreshed, "build", "--in-process")
    assert again.returncode == 0 and "nothing to build" in again.stdout, again.stdout

    got, want = tables(refreshed), tables(nightly)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equals(want[name]), name
