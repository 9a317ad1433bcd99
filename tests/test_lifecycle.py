"""Process lifecycle: the local Temporal server dies with its parent, and one build at a time
holds a warehouse's lease. Parents and rival builds are real processes (Python snippets)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from starsmith.errors import ConfigError, RetryableError, WarehouseBusy
from starsmith.loaders.lease import lease_path, read_holder, warehouse_lease
from starsmith.orchestration.server import (
    LocalServer,
    process_alive,
    read_server_record,
    server_pids,
    start_local_server,
)

ROOT = Path(__file__).resolve().parent.parent

PARENT = """
import json, sys, time
from pathlib import Path
from starsmith.orchestration import server
if sys.argv[2] == "no-pdeathsig":  # as on a platform without a parent-death signal
    server._parent_death_hook = lambda: None
srv = server.start_local_server(Path(sys.argv[1]))
print(json.dumps({"pid": srv.process.pid, "port": srv.port}), flush=True)
time.sleep(600)
"""

HOLDER = """
import sys, time
from starsmith.loaders.lease import warehouse_lease
with warehouse_lease(sys.argv[1], holder="first build"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""

CONTENDER = """
import json, sys, time
from starsmith.errors import WarehouseBusy
from starsmith.loaders.lease import warehouse_lease
t0 = time.monotonic()
try:
    with warehouse_lease(sys.argv[1], wait=float(sys.argv[2]), holder="second build") as lease:
        print(json.dumps({"ok": True, "pid": lease.holder.pid, "s": time.monotonic() - t0}))
except WarehouseBusy as err:
    print(json.dumps({"ok": False, "error": str(err), "s": time.monotonic() - t0}))
"""


def _python(snippet: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(snippet), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the snippet exited {proc.returncode}: {err}")
    return line


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert out.strip(), f"the snippet exited {proc.returncode}: {err}"
    result: dict[str, Any] = json.loads(out)
    return result


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Parents:
    """Parent processes a test starts, each running a local server; at the end every parent
    and any server left behind is killed."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.servers: list[int] = []

    def start(self, state: Path, mode: str = "normal") -> tuple[subprocess.Popen[str], int, int]:
        proc = _python(PARENT, str(state), mode)
        self.procs.append(proc)
        started = json.loads(_first_line(proc))
        self.servers.append(int(started["pid"]))
        return proc, int(started["pid"]), int(started["port"])

    def close(self) -> None:
        for proc in self.procs:
            _kill(proc)
        for pid in self.servers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def parents() -> Iterator[Parents]:
    made = Parents()
    try:
        yield made
    finally:
        made.close()


# --- the local Temporal server ------------------------------------------------------------------

@pytest.mark.temporal
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_server_dies_with_its_parent(parents: Parents, tmp_path: Path,
                                         sig: signal.Signals) -> None:
    state = tmp_path / "temporal"
    proc, pid, _ = parents.start(state)
    record = read_server_record(state)
    assert record is not None and (record.pid, record.parent_pid) == (pid, proc.pid)
    assert record.started_at and record.db == str(state.resolve() / "temporal.sqlite")
    assert os.getpgid(pid) == pid  # its own process group: Ctrl-C reaches only the parent
    proc.send_signal(sig)
    proc.wait(timeout=10)
    assert _gone_within(pid, 8.0), f"the Temporal server {pid} outlived its parent"


@pytest.mark.temporal
def test_a_leftover_server_is_stopped_by_the_next_start(
        parents: Parents, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "temporal"
    proc, old, _ = parents.start(state, "no-pdeathsig")
    proc.kill()
    proc.wait(timeout=10)
    time.sleep(0.5)
    assert process_alive(old), "without the parent-death signal the server outlives its parent"
    caplog.set_level(logging.WARNING, logger="starsmith")
    project_log = logging.getLogger("starsmith")
    propagated, project_log.propagate = project_log.propagate, True  # configure() turns it off
    try:
        server = start_local_server(state, stop_grace_s=5.0)
    finally:
        project_log.propagate = propagated
    try:
        assert not process_alive(old)
        assert any(f"pid {old}" in r.getMessage() for r in caplog.records), caplog.text
        assert server_pids(state) == [server.process.pid]
        record = read_server_record(state)
        assert record is not None and record.pid == server.process.pid
    finally:
        server.stop()
    assert server_pids(state) == []


@pytest.mark.temporal
def test_a_pid_file_naming_a_dead_server_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "temporal"
    state.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "temporal-server.pid").write_text(json.dumps(
        {"pid": dead.pid, "port": 1, "started_at": "then", "parent_pid": dead.pid}))
    server = start_local_server(state)
    try:
        record = read_server_record(state)
        assert record is not None and record.pid == server.process.pid
        assert record.parent_pid == os.getpid()
        assert server_pids(state) == [server.process.pid]
    finally:
        server.stop()
    assert read_server_record(state) is None  # stop() removes the pid file


@pytest.mark.temporal
def test_a_server_in_use_by_a_live_parent_is_not_shared(parents: Parents,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "temporal"
    proc, pid, port = parents.start(state)
    with pytest.raises(RetryableError) as caught:
        start_local_server(state)
    message = str(caught.value)
    assert f"pid {proc.pid}" in message and f"server pid {pid}" in message
    assert f"127.0.0.1:{port}" in message and "TEMPORAL_ADDRESS" in message
    assert process_alive(pid) and server_pids(state) == [pid]  # untouched
    proc.kill()
    proc.wait(timeout=10)
    assert _gone_within(pid, 8.0)
    server = start_local_server(state)  # free again the moment its owner died
    server.stop()


@pytest.mark.temporal
def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    """The parent-death signal follows the forking thread: the server must not die with an
    ``asyncio.to_thread`` worker."""
    got: list[LocalServer] = []
    thread = threading.Thread(target=lambda: got.append(start_local_server(tmp_path / "t")))
    thread.start()
    thread.join(timeout=60)
    assert got, "the server did not start"
    try:
        time.sleep(1.0)
        assert got[0].process.poll() is None
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", got[0].port)) == 0
    finally:
        got[0].stop()


@pytest.mark.temporal
def test_stop_frees_the_state_folder(tmp_path: Path) -> None:
    first = start_local_server(tmp_path)
    first.stop()
    first.stop()  # idempotent
    assert read_server_record(tmp_path) is None and server_pids(tmp_path) == []
    second = start_local_server(tmp_path)
    second.stop()


# --- the warehouse lease ------------------------------------------------------------------------

def test_a_second_build_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    wh = str(tmp_path / "wh.duckdb")
    holder = _python(HOLDER, wh, "60")
    try:
        assert _first_line(holder).strip() == "held"
        rival = _python(CONTENDER, wh, "0")
        result = _result(rival)
        assert result["ok"] is False, result
        assert f"another build (pid {holder.pid} on host {socket.gethostname()}, since " \
               in result["error"]
        assert "holds this warehouse [first build]" in result["error"]
        assert f"kill {holder.pid}" in result["error"]
        assert result["s"] < 2.0
        assert read_holder(lease_path(wh)) is not None
    finally:
        _kill(holder)


def test_with_wait_the_second_build_gets_the_lease_once_the_first_releases(
        tmp_path: Path) -> None:
    wh = str(tmp_path / "wh.duckdb")
    holder = _python(HOLDER, wh, "1.5")
    try:
        assert _first_line(holder).strip() == "held"
        rival = _python(CONTENDER, wh, "30")
        result = _result(rival)
        assert result["ok"] is True and result["pid"] == rival.pid, result
        assert 0.5 < result["s"] < 20
        assert holder.wait(timeout=10) == 0
    finally:
        _kill(holder)
    assert read_holder(lease_path(wh), tries=1) is None  # released: the note names nobody


def test_a_killed_holders_lease_is_free_at_once(tmp_path: Path) -> None:
    wh = str(tmp_path / "wh.duckdb")
    holder = _python(HOLDER, wh, "60")
    assert _first_line(holder).strip() == "held"
    with pytest.raises(WarehouseBusy), warehouse_lease(wh):
        pass
    holder.kill()
    _kill(holder)
    start = time.monotonic()
    with warehouse_lease(wh, holder="after the crash") as lease:
        assert lease.holder.pid == os.getpid()
        assert read_holder(lease.path) == lease.holder  # the crashed build's note is replaced
    assert time.monotonic() - start < 1.0


def test_the_lease_file_sits_beside_the_duckdb_file(tmp_path: Path) -> None:
    wh = tmp_path / "data" / "wh.duckdb"
    with warehouse_lease(str(wh)) as lease:
        assert lease.path == wh.parent.resolve() / "wh.duckdb.lease"
        with pytest.raises(WarehouseBusy, match="this process already holds"), \
                warehouse_lease(str(wh)):
            pass
    with warehouse_lease(str(wh)):  # released on exit
        pass


def test_a_bigquery_lease_lives_in_the_lock_folder(tmp_path: Path) -> None:
    ref = "bigquery://proj/sales?location=EU"
    with pytest.raises(ConfigError, match="lease needs a folder"), warehouse_lease(ref):
        pass
    with warehouse_lease(ref, lock_dir=tmp_path / "state") as lease:
        assert lease.path.parent == tmp_path / "state" and lease.path.name.endswith(".lease")
        assert "proj_sales" in lease.path.name
        with warehouse_lease("bigquery://proj/other", lock_dir=tmp_path / "state"):
            pass  # another dataset: another lease
        rival = _python(CONTENDER.replace("wait=float(sys.argv[2])",
                                          "wait=float(sys.argv[2]), lock_dir=Path(sys.argv[3])")
                        .replace("import json, sys, time", "import json, sys, time\n"
                                 "from pathlib import Path"), ref, "0", str(tmp_path / "state"))
        result = _result(rival)
        assert result["ok"] is False and f"pid {os.getpid()}" in result["error"]
