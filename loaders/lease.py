"""An exclusive lease on a warehouse for the length of one build.

Two builds writing one warehouse at once interleave their steps (each reads a dimension the
other is rewriting), so a build takes a lease first. The lease is an OS file lock (``flock``)
on a lock file: ``<warehouse>.lease`` beside a DuckDB file, or for ``bigquery://...`` a file
under a given lock folder (the project's state folder; such a lease only keeps out builds that
use the same folder, i.e. the same machine or a shared disk). The OS drops the lock when the
holding process exits, however it exits, so a crashed build never leaves a stale lease and
there is never a lock file to delete by hand. The file's body is a small JSON note (pid, host,
since, holder) so that a build that finds the lease taken can say who holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from starsmith.errors import ConfigError, WarehouseBusy
from starsmith.loaders.target import BIGQUERY_SCHEME, is_bigquery
from starsmith.log import get_logger

log = get_logger(__name__)

LEASE_SUFFIX = ".lease"
POLL_S = 0.1


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as its lock file says."""

    pid: int
    host: str
    since: str
    holder: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, since {self.since}"


@dataclass(frozen=True)
class Lease:
    """A lease this process holds: its lock file and what it wrote there."""

    path: Path
    ref: str
    holder: LeaseHolder


def lease_path(ref: str, lock_dir: Path | None = None) -> Path:
    """The lock file of a warehouse: ``<file>.lease`` for DuckDB, a file in ``lock_dir`` for
    BigQuery."""
    if is_bigquery(ref):
        if lock_dir is None:
            raise ConfigError("a BigQuery warehouse's lease needs a folder for its lock file",
                              where=ref, fix="Pass lock_dir (the project's state folder)")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref[len(BIGQUERY_SCHEME):].split("?")[0])
        digest = hashlib.sha256(ref.encode()).hexdigest()[:12]
        return Path(lock_dir) / f"bigquery-{name.strip('_.')}-{digest}{LEASE_SUFFIX}"
    path = Path(ref).expanduser().resolve()  # one lease however the file is named
    return path.with_name(path.name + LEASE_SUFFIX)


def read_holder(path: Path, *, tries: int = 5) -> LeaseHolder | None:
    """The holder a lock file names; None if it names none (free, or being written)."""
    for attempt in range(tries):
        try:
            raw = json.loads(path.read_text())
            return LeaseHolder(int(raw["pid"]), str(raw["host"]), str(raw["since"]),
                               str(raw.get("holder", "")))
        except (OSError, ValueError, KeyError, TypeError):
            if attempt < tries - 1:  # the holder may be between truncating and writing
                time.sleep(0.02)
    return None


def _busy(ref: str, other: LeaseHolder | None, waited: float) -> WarehouseBusy:
    after = f" after waiting {waited:g}s" if waited > 0 else ""
    if other is None:
        return WarehouseBusy(f"another build holds this warehouse{after}", where=ref,
                             fix="Wait for it to finish and run again (a build's lease ends "
                                 "when its process exits: there is no lock file to delete)")
    if other.pid == os.getpid() and other.host == socket.gethostname():
        return WarehouseBusy("this process already holds this warehouse's lease", where=ref,
                             fix="Take one lease per build; a nested lease on the same "
                                 "warehouse cannot be granted")
    what = f"another build ({other.describe()}) holds this warehouse"
    if other.holder:
        what += f" [{other.holder}]"
    stop = (f"stop it (`kill {other.pid}`" + ("" if other.host == socket.gethostname()
                                               else f" on {other.host}") + ")")
    return WarehouseBusy(
        what + after, where=ref,
        fix=f"Wait for that build to finish, or {stop}, then run again (its lease ends when its "
            "process exits: there is no lock file to delete)")


def _acquire(fd: int, path: Path, ref: str, wait: float) -> None:
    start = time.monotonic()
    deadline = start + max(wait, 0.0)
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        other = read_holder(path)
        now = time.monotonic()
        if now >= deadline:
            raise _busy(ref, other, wait)
        if not said:
            log.info("waiting up to %gs for %s to release %s", wait,
                     f"another build ({other.describe()})" if other else "another build", ref)
            said = True
        time.sleep(min(POLL_S, deadline - now))


@contextmanager
def warehouse_lease(ref: str, *, wait: float = 0.0, holder: str = "",
                    lock_dir: Path | None = None) -> Iterator[Lease]:
    """Hold the exclusive lease on the warehouse ``ref`` inside the block.

    If another process holds it, poll for up to ``wait`` seconds, then raise ``WarehouseBusy``
    naming that process (pid, host, since when, and its ``holder`` note). ``lock_dir`` is
    where a ``bigquery://`` reference's lock file lives (required for those)."""
    path = lease_path(ref, lock_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, ref, wait)
        me = LeaseHolder(os.getpid(), socket.gethostname(),
                         datetime.now(UTC).isoformat(timespec="seconds"), holder)
        body = (json.dumps(asdict(me)) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        try:
            yield Lease(path, ref, me)
        finally:
            with suppress(OSError):
                os.ftruncate(fd, 0)  # free: the note names nobody
    finally:
        os.close(fd)  # closing drops the lock
