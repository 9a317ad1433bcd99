"""Start the local BigQuery emulator (local-bigquery 0.3.2) for tests, on 127.0.0.1.

The emulator needs CPython 3.13 and pinned DuckDB extensions, so `make emulator` installs it in
its own virtual environment (`.emulator/`); the project itself stays on 3.11. Its DuckDB
extensions are linked into a private HOME so that nothing is downloaded at start.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from starsmith.orchestration.server import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".emulator"
PROJECT = "test-proj"


@dataclass
class Emulator:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):  # type: ignore[no-untyped-def]
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=self.endpoint))

    def stop(self) -> None:
        stop_process(self.process)


def start(tmp: Path, timeout_s: float = 60) -> Emulator | None:
    """The running emulator, or None when `.emulator/` was not installed (`make emulator`)."""
    binary = VENV / "bin" / "local-bigquery"
    if not binary.exists():
        return None
    home = tmp / "home"
    ext_dir = home / ".duckdb" / "extensions" / "v1.5.5" / "linux_amd64"
    ext_dir.mkdir(parents=True, exist_ok=True)
    for found in VENV.glob("lib/python3.13/site-packages/duckdb_extension_*/extensions/v1.5.5/"
                           "*.duckdb_extension"):
        link = ext_dir / found.name
        if not link.exists():
            link.symlink_to(found)
    port = free_port()
    with open(tmp / "emulator.log", "ab") as log:
        process = subprocess.Popen(
            [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--grpc-port", str(free_port()), "--project", PROJECT, "--data-dir", str(tmp / "data")],
            env={**os.environ, "HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT)
    emulator = Emulator(process, port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited: {(tmp / 'emulator.log').read_text()[-2000:]}")
        try:
            url = f"{emulator.endpoint}/bigquery/v2/projects/{PROJECT}/datasets"
            with urllib.request.urlopen(url, timeout=2):
                return emulator
        except OSError:
            time.sleep(0.3)
    emulator.stop()
    raise RuntimeError("the BigQuery emulator did not start in time")
