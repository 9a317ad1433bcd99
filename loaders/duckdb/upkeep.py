"""End-of-build file upkeep: rewrite a DuckDB warehouse file that has grown past its data.

Why the file grows: each step opens the file, publishes in one transaction, and closes it, and
the close checkpoints. A checkpoint writes a table's newly committed rows as a new row group in
blocks of its own (256 KiB), and with DuckDB's vacuum off (``max_vacuum_tasks=0``, see
``warehouse.py``) nothing merges them later. A step commits a handful of rows to each
bookkeeping table (run log, watermark, quality results, landings) and a small day to each
staging table, so a demo day wrote ~50 blocks (13 MiB) for a few hundred KiB of rows: after 30
nights the file was 26x a fresh copy of its data. Rewriting tables in place (``CREATE OR
REPLACE``) frees those blocks but never shrinks the file (DuckDB reuses free blocks, it does not
give them back), and the churn of one night alone is most of a small warehouse.

So once a day's or a build's steps are done (the in-process runner after each day, the
workflow as its last activity), once the file passes ``REWRITE_AT`` times the size of its last
rewrite (a file never rewritten: an estimate of its copy, see :func:`_copy_estimate`; a fresh
full refresh is near its copy already), or a third of its blocks are free, the whole database
is copied into a fresh file (``COPY FROM DATABASE``: every schema, table, constraint and row,
in one pass) beside it, which is then renamed over the old one. The publishes themselves are
unchanged: each step's bookkeeping rows still commit with its data, in its one transaction.
What keeps it safe:

- exclusive: it runs only when the build's steps are done (and a CLI build holds the warehouse
  lease). Its own DuckDB instance has a setting no step uses, so a connection still open in this
  process makes the open fail and nothing is rewritten; DuckDB's file lock keeps other processes
  out during the copy. Between closing the old file and the rename, a POSIX lock of our own keeps
  them out (their open fails, is retried, and reopens the path: the new file), and a file that
  changed since the copy (size, time, a write-ahead log) is not replaced;
- crash safe: the copy is written to ``<file>.rewrite`` in the same folder, fsynced, then
  ``os.replace``d (atomic) and the folder fsynced. A kill -9 before the rename leaves the old file
  untouched (the partial copy is removed by the next upkeep); after it, the new one is complete;
- consistent: the old file is checkpointed first (no write-ahead log left to belong to the wrong
  file) and the copy is checked table by table (row counts) before the swap.

Its cost is a copy of the data; as the data grows, the builds between rewrites grow with it, so
it amortises (README, "Storage upkeep", has the numbers).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from starsmith.errors import RetryableError
from starsmith.loaders.duckdb.filegate import file_gate
from starsmith.loaders.duckdb.records import META
from starsmith.log import get_logger

if TYPE_CHECKING:
    from starsmith.loaders.duckdb.warehouse import DuckDBWarehouse

log = get_logger(__name__)

REWRITE_AT = 1.4  # the file's size against its last rewrite's: kept under 1.5x a fresh copy
MIDWAY_AT = 4.0  # the same between the days of one long build: bounds the file, not each day
FREE_AT = 1 / 3  # or this share of its blocks free (after a full refresh shrank the data)
MIN_BYTES = 2 << 20  # a smaller file is never worth a rewrite
REWRITE_SUFFIX = ".rewrite"
# A setting no step's connection uses: DuckDB refuses to open a second instance of a file with a
# different configuration in one process, which tells the upkeep a connection is still open.
OWN_SETTING = ("checkpoint_threshold", "17MiB")
FAILPOINT = "STARSMITH_FAILPOINT"  # as orchestration/step.py's: kill here, for the tests
UPKEEP_DDL = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{META}.file_upkeep (
    rewritten_at TIMESTAMP, file_bytes BIGINT, copy_bytes BIGINT, seconds DOUBLE
)"""


@dataclass(frozen=True)
class Upkeep:
    """What an upkeep did: the file's size before and after, and whether (and why) it
    rewrote it."""

    before: int
    after: int
    rewritten: bool
    reason: str
    seconds: float


def upkeep(wh: DuckDBWarehouse, *, rewrite_at: float = REWRITE_AT,
           min_bytes: int = MIN_BYTES) -> Upkeep:
    """Rewrite the warehouse file if it has grown past its data (see the module's doc)."""
    clock = time.perf_counter()
    path = wh.path
    tmp = path.with_name(path.name + REWRITE_SUFFIX)
    if not path.exists():
        return Upkeep(0, 0, False, "no file yet", 0.0)
    with wh.connect():  # the warehouse's own open: the lock is waited for, the schemas exist
        pass
    before = path.stat().st_size
    with file_gate(path).alone() as alone:  # no connection of this process opens it meanwhile
        if not alone:
            log.warning("upkeep of %s skipped: a connection of this process has it open", path)
            return Upkeep(before, before, False, "in use", time.perf_counter() - clock)
        return _rewrite(wh, path, tmp, before, clock, rewrite_at, min_bytes)


def _rewrite(wh: DuckDBWarehouse, path: Path, tmp: Path, before: int, clock: float,
             rewrite_at: float, min_bytes: int) -> Upkeep:
    """The upkeep itself, with the file's gate held (no other connection of this process)."""
    try:
        con = _open_alone(wh)
    except duckdb.ConnectionException as err:  # an open connection in this process
        log.warning("upkeep of %s skipped: the file is in use in this process (%s)", path, err)
        return Upkeep(before, before, False, "in use", time.perf_counter() - clock)
    try:  # the file's lock is ours: no other upkeep is writing a copy
        tmp.unlink(missing_ok=True)  # a copy a crash left behind
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
        reason = _why(con, before, rewrite_at, min_bytes)
        if not reason:
            return Upkeep(before, before, False, "", time.perf_counter() - clock)
        con.execute("CHECKPOINT")  # the old file's log is empty: nothing of it is left behind
        _copy(con, tmp, before, clock)
        copied = os.stat(path)  # as it is while our instance keeps every other process out
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()  # nothing to checkpoint: the file stays as it was copied
    _swap(path, tmp, copied)
    after = path.stat().st_size
    seconds = time.perf_counter() - clock
    log.info("rewrote %s (%s): %.1f MiB -> %.1f MiB in %.2f s", path, reason, before / 2**20,
             after / 2**20, seconds)
    return Upkeep(before, after, True, reason, seconds)


def _open_alone(wh: DuckDBWarehouse) -> duckdb.DuckDBPyConnection:
    """A connection on an instance of the file that no step shares (see OWN_SETTING)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": wh.memory_limit, "temp_directory": str(wh.temp_dir),
        "max_vacuum_tasks": 0, OWN_SETTING[0]: OWN_SETTING[1]}
    if wh.threads:
        config["threads"] = wh.threads
    try:
        return duckdb.connect(str(wh.path), config=config)
    except duckdb.IOException as err:
        raise RetryableError(f"cannot open the warehouse for its upkeep: {err}",
                             where=str(wh.path), fix="Another process holds it; run the "
                             "build again when it is done") from err


def _why(con: duckdb.DuckDBPyConnection, size: int, rewrite_at: float, min_bytes: int) -> str:
    """Why the file needs a rewrite ("" if it does not)."""
    if size < min_bytes:
        return ""
    total, free = con.execute("SELECT total_blocks, free_blocks FROM pragma_database_size() "
                              "WHERE database_name = current_database()").fetchall()[0]
    if total and free >= FREE_AT * total:
        return f"{free} of {total} blocks free"
    last = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        f"AND schema_name = '{META}' AND table_name = 'file_upkeep'").fetchall()[0][0]
    found = con.execute(f"SELECT copy_bytes FROM {META}.file_upkeep ORDER BY rewritten_at DESC "
                        "LIMIT 1").fetchall() if last else []
    if not found:  # never rewritten: judged by an estimate of its copy
        estimate = _copy_estimate(con)
        if size > rewrite_at * estimate:
            return (f"{size / 2**20:.1f} MiB against an estimated copy of "
                    f"{estimate / 2**20:.1f} MiB (first upkeep)")
        return ""
    if size > rewrite_at * found[0][0]:
        return f"{size / 2**20:.1f} MiB against {found[0][0] / 2**20:.1f} MiB at the last rewrite"
    return ""


SMALL_ROW_GROUP = 122_880 // 4  # rows: a quarter of DuckDB's row group, a small commit's


def _copy_estimate(con: duckdb.DuckDBPyConnection) -> int:
    """The bytes a rewrite would leave, for a file never rewritten (no size of a last rewrite to
    compare with): its used blocks, less every block that holds only small row groups (what the
    small commits of the steps wrote, which a copy packs together). Those are counted as
    nothing, so the estimate is low rather than high: it errs towards a rewrite.

    A full refresh writes its tables in large row groups: the file it leaves is within a few
    percent of a copy (a 6M-row star: 776 blocks, of which 21 hold only small row groups), and
    copying it would cost seconds for nothing. A file grown by daily commits is mostly small
    row groups, and is rewritten as before."""
    tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                         "WHERE database_name = current_database()").fetchall()
    block_size, used = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()").fetchall()[0]
    if not tables:
        return int(used * block_size)
    segments = " UNION ALL ".join(
        f"SELECT {i} AS t, row_group_id, count, block_id, additional_block_ids FROM "
        f"pragma_storage_info('{_quoted_name(s)}.{_quoted_name(n)}')"
        for i, (s, n) in enumerate(tables))
    small = con.execute(f"""
        WITH segments AS ({segments}),
        groups AS (SELECT t, row_group_id, max(count) AS n FROM segments GROUP BY ALL),
        blocks AS (
            SELECT unnest(list_prepend(block_id, additional_block_ids)) AS block,
                   groups.n < {SMALL_ROW_GROUP} AS small
            FROM segments JOIN groups USING (t, row_group_id) WHERE block_id >= 0)
        SELECT count(DISTINCT block) FILTER (WHERE block NOT IN (
            SELECT block FROM blocks WHERE NOT small)) FROM blocks""").fetchall()[0][0]
    return int(max(used - small, 1) * block_size)


def _copy(con: duckdb.DuckDBPyConnection, tmp: Path, before: int, clock: float) -> None:
    """Copy the database into ``tmp``, check every table's rows, record the rewrite in it."""
    name = con.execute("SELECT current_database()").fetchall()[0][0].replace('"', '""')
    con.execute(f"ATTACH '{_quoted(tmp)}' AS _fresh")
    try:
        con.execute(f'COPY FROM DATABASE "{name}" TO _fresh')
        if os.environ.get(FAILPOINT) == f"upkeep_copied:{tmp.name}":  # crash-safety tests
            os.kill(os.getpid(), signal.SIGKILL)
        for schema, table in con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() "
                "WHERE database_name = current_database()").fetchall():
            ref = f'"{schema}"."{table}"'
            old = con.execute(f"SELECT count(*) FROM {ref}").fetchall()[0][0]
            new = con.execute(f"SELECT count(*) FROM _fresh.{ref}").fetchall()[0][0]
            if old != new:
                raise RetryableError(f"the rewrite's copy of {schema}.{table} has {new} rows, "
                                     f"the table {old}", where=str(tmp),
                                     fix="Nothing was replaced; the next build tries again")
        con.execute(UPKEEP_DDL.format(db="_fresh"))
        con.execute("CHECKPOINT _fresh")
        copied = tmp.stat().st_size
        con.execute(f"INSERT INTO _fresh.{META}.file_upkeep VALUES (now(), ?, ?, ?)",
                    [before, copied, time.perf_counter() - clock])
    finally:
        con.execute("DETACH _fresh")  # checkpoints it: no log file is left beside the copy
    if Path(str(tmp) + ".wal").exists():
        raise RetryableError("the rewrite's copy kept a write-ahead log", where=str(tmp),
                             fix="Nothing was replaced; the next build tries again")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def _swap(path: Path, tmp: Path, copied: os.stat_result) -> None:
    """Rename the copy over the file while holding the file's lock (no other process opens the
    old one in between), then make the rename durable. A process that wrote the file between
    our close and the lock changed it (its size or time) or left its log: nothing is replaced."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            now = os.fstat(fd)
            if (now.st_mtime_ns, now.st_size) != (copied.st_mtime_ns, copied.st_size) or Path(
                    str(path) + ".wal").exists():
                raise OSError("the file changed after it was copied")
            os.chmod(tmp, stat.S_IMODE(now.st_mode))  # the file keeps its permissions
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RetryableError(f"another process wrote the warehouse during its upkeep: {err}",
                                 where=str(path),
                                 fix="Nothing was replaced; the next build tries again") from err
        os.replace(tmp, path)
    finally:
        os.close(fd)  # drops the lock: a waiting open retries and finds the new file
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # not every file system syncs a folder
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _quoted_name(name: str) -> str:
    """A schema or table name inside pragma_storage_info's quoted argument."""
    return '"' + name.replace('"', '""').replace("'", "''") + '"'
