"""Two builds of one warehouse never interleave: the second stops at once naming the first, or
waits for it with --lease-wait; either way the warehouse equals a single build's."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.faults.harness import Demo, assert_same_tables, clean_build
from tests.test_projects import STARSMITH, cli_env, out


def _start(demo: Demo, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(STARSMITH), "build", "--in-process", *args], cwd=demo.root,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _holding(demo: Demo, timeout: float = 60) -> dict[str, object]:
    lease = demo.warehouse.parent / "warehouse.duckdb.lease"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lease.exists() and lease.read_text().strip():
            return dict(json.loads(lease.read_text()))
        time.sleep(0.05)
    raise AssertionError("the first build never took its lease")


def test_a_second_build_stops_naming_the_first_or_waits_for_it(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "shop", days=5)
    first = _start(demo)
    holder = _holding(demo)
    second = subprocess.run([str(STARSMITH), "build", "--in-process"], cwd=demo.root,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode != 0, out(second)
    assert f"another build (pid {holder['pid']}" in second.stdout + second.stderr, out(second)
    third = _start(demo, "--lease-wait", "300")  # waits its turn, then finds nothing to do
    done = first.communicate(timeout=300)
    assert first.returncode == 0, done
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stdout + stderr
    assert "nothing to build" in stdout
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))


def test_a_crashed_builds_workflow_is_ended_not_run_beside_the_next(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "shop", days=3)
    crashed = subprocess.run([str(STARSMITH), "build"], cwd=demo.root,
                             env=cli_env(STARSMITH_FAILPOINT="after_stage:dim_customer"),
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, out(crashed)  # killed mid-step with its worker and server
    proc = subprocess.run([str(STARSMITH), "build", "--full-refresh"], cwd=demo.root,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, out(proc)
    assert "ending starsmith-" in proc.stdout and "still running" in proc.stdout, out(proc)
    assert_same_tables(demo, clean_build(demo.landing, tmp_path / "clean"))
