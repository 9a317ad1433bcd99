"""A private PostgreSQL cluster for tests and benchmarks, on 127.0.0.1 and a free port.

The cluster is initialised with ``initdb`` from the machine's PostgreSQL (``pg_config --bindir``,
or Debian's ``/usr/lib/postgresql/*/bin``) in a temporary folder under /tmp. ``initdb`` refuses
to run as root, so as root the cluster belongs to the ``postgres`` user (``runuser``); the folder
must be one that user can enter, hence /tmp with mode 0755 rather than a pytest tmp_path under
/root. The superuser connects through the Unix socket without a password; TCP connections to
127.0.0.1 need a password (scram-sha-256), so a wrong password really fails in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "starsmith"
PASSWORD = "s3cret-pw"  # the tests' role; never a real secret
DATABASE = "shop"


def pg_bindir() -> Path | None:
    """The folder with initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").is_file():
            return bindir
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running cluster: its folder, port, and how to reach it."""

    folder: Path
    port: int
    bindir: Path
    as_postgres: bool

    def uri(self, *, password: str = PASSWORD, user: str = USER, database: str = DATABASE) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)

    def psql(self, sql: str, *, database: str = DATABASE) -> str:
        """Run SQL as the superuser through the socket (setup, changes between days)."""
        out = subprocess.run(
            self._cmd(str(self.bindir / "psql"), "-h", str(self.folder), "-p", str(self.port),
                      "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt",
                      "-c", sql),
            capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def start(self) -> None:
        self._ctl("start", "-l", str(self.folder / "server.log"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c synchronous_commit=off -c full_page_writes=off")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def _ctl(self, action: str, *args: str) -> None:
        out = subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D",
                                       str(self.folder / "data"), "-w", *args, action),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"pg_ctl {action} failed: {out.stderr.strip()}\n{tail}")


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """Start a fresh cluster with a password role and database, stop and remove it after."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no pg_config, no "
                           "/usr/lib/postgresql/*/bin/initdb)")
    as_postgres = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="starsmith-pg-", dir="/tmp"))
    folder.chmod(0o755)
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    server = PgServer(folder, free_port(), bindir, as_postgres)
    try:
        out = subprocess.run(
            server._cmd(str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                        "-E", "UTF8", "--no-sync", "--no-instructions", "--auth-local=trust",
                        "--auth-host=scram-sha-256"),
            capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr.strip()}")
        server.start()
        server.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", database="postgres")
        server.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}", database="postgres")
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped by a test
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
