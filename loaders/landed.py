"""When a day has landed: folder names read strictly, completeness by a declared convention, and
a fingerprint per landed day so that a re-landed (corrected) day is noticed.

An exporter writes a day's data files first and a marker last: ``_SUCCESS`` (Spark, Hadoop, most
exporters) or ``_manifest.json`` (every file with its bytes, rows and sha256, as BigQuery
transfers and many exporters write). Until the marker is there the day is still being written,
and a build waits for it instead of reading half a day. A source that never writes markers
(``Completion.AUTO``, on days before its first marked one) counts a day as landed when its data
files are there and none is empty or still named as in progress. A marked day with no data files
(a ``_SUCCESS`` alone, or a manifest listing none) is a landed empty day: a change feed's quiet
day, refused when read for a source that does not allow empty days.

Only folders named ``date=YYYY-MM-DD`` are days; any other name is reported once and skipped,
and a day dated beyond the source's tolerance after today is refused, not built.

The landing zone is a local folder or an object store prefix (``s3://``, ``gs://``): the same
rules hold in both, read through the part of :class:`Path` that ``loaders/store.py`` provides.

A build asks about the same days many times (its plan, each publish of a full refresh, each
read): a local source's list of day folders, and each complete day's verdict, are remembered
with the state of what they were read from, and reused only while that state is unchanged
(:func:`inspect_day`); a changed day is inspected again, so a day re-landed is noticed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from starsmith.contract import Completion, Source
from starsmith.errors import DataError
from starsmith.loaders.landing_look import looked
from starsmith.loaders.store import Landing, landing_root, sha256
from starsmith.log import get_logger

log = get_logger(__name__)

MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"
DAY_FOLDER = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
IN_PROGRESS = (".tmp", ".part", ".inprogress", "_COPYING_", ".crdownload", ".partial")
_REPORTED: set[str] = set()  # badly named folders and refused days: reported once a process


def _report_once(key: str, message: str, *args: object) -> None:
    if key not in _REPORTED:
        _REPORTED.add(key)
        log.warning(message, *args)


def data_files(folder: Landing, source: Source) -> list[Landing]:
    """The day's data files: its format's suffix, not hidden (``.x``, ``_x``), not in progress."""
    found: list[Landing] = [p for p in folder.glob(f"*.{source.format}")
                            if p.is_file() and not p.name.startswith((".", "_"))
                            and not p.name.endswith(IN_PROGRESS)]
    return sorted(found, key=str)  # one folder: the names' order


def _in_progress(folder: Landing) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(IN_PROGRESS))


def day_folders(landing: Landing, source: Source, *, today: date | None = None
                ) -> dict[date, Landing]:
    """Every well-named day folder of the source within the future tolerance, by day."""
    root = landing / source.name
    if not root.is_dir():
        return {}
    limit = (today or date.today()) + timedelta(days=source.future_days)
    days: dict[date, Landing] = {}
    for day, folder in _named_folders(root):
        if day is None:
            _report_once(str(folder), "skipped %s: a day's folder is named date=YYYY-MM-DD "
                         "(rename it to build it)", folder)
            continue
        if day > limit:
            _report_once(str(folder), "refused %s: dated %s, more than %d day(s) after today; "
                         "fix the export's date (or the source's future_days)", folder, day,
                         source.future_days)
            continue
        days[day] = folder
    return days


def _named_folders(root: Landing) -> list[tuple[date | None, Landing]]:
    """The source's folders that are not hidden, each with the day it is named for (None: not
    named ``date=YYYY-MM-DD``), oldest first. A local one's are remembered while the source's
    folder is unchanged (a day folder added, removed or renamed changes its times, see
    :func:`_stamp`), so that asking again costs one stat, not a scan of thousands."""
    if not isinstance(root, Path):
        return _named(_subfolders(root))
    key = (str(root),)
    seen = _FOLDERS.get(key[0])
    if seen is not None and _stamp(key) == seen[0]:
        return seen[1]
    started = time.time_ns()
    found = _named(_subfolders(root))
    stamp = _stamp(key)
    if _settled(stamp, started):
        if len(_FOLDERS) >= _SEEN_MAX:
            _FOLDERS.clear()
        _FOLDERS[key[0]] = (stamp, found)
    return found


def _named(folders: list[Landing]) -> list[tuple[date | None, Landing]]:
    found: list[tuple[date | None, Landing]] = []
    for folder in folders:
        if folder.name.startswith((".", "_")):
            continue
        match = DAY_FOLDER.fullmatch(folder.name)
        day = None
        if match:
            try:
                day = date.fromisoformat(match.group(1))
            except ValueError:
                day = None
        found.append((day, folder))
    return sorted(found, key=lambda f: (f[0] or date.min, str(f[1])))


def _subfolders(root: Landing) -> list[Landing]:
    """The folders in ``root``; a local one's from one scan of its entries (their types come
    with the names: no stat per day folder)."""
    if isinstance(root, Path):
        with os.scandir(root) as entries:
            return [root / e.name for e in entries if e.is_dir()]
    return [f for f in root.iterdir() if f.is_dir()]


def _manifest(folder: Landing) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    fix = ('Write {"files": [{"name": ..., "bytes": ..., "rows": ..., "sha256": ...}]}, '
           "the export's last file")
    try:
        found = json.loads(path.read_bytes())
    except ValueError as err:  # cut short: an exporter still writing it, or a broken copy
        raise DataError("the manifest is not valid JSON yet (still being written?)",
                        where=str(path), fix=fix) from err
    files = found.get("files") if isinstance(found, dict) else None
    if not (isinstance(files, list)
            and all(isinstance(f, dict) and "name" in f for f in files)):
        raise DataError('the manifest is not valid: it needs "files", a list of {"name": ...}',
                        where=str(path), fix=fix)
    return dict(found)


CACHE_SECONDS = 30  # how long a process may take to notice a marker written into a day folder


def _bucket() -> int:
    return int(time.monotonic() // CACHE_SECONDS)


def first_marker_day(landing: Landing, source: Source) -> date | None:
    """The source's first day with a ``_SUCCESS`` or manifest: under ``Completion.AUTO`` the
    days from it on need one, the days before it (landed before the exporter wrote markers)
    are judged by their files.

    Asked once per day read, so it is cached: by the source's folder and its mtime (a new day
    folder) and by a time bucket, so a long-lived worker notices a marker written into an
    existing day folder within :data:`CACHE_SECONDS`, while one build reading thousands of
    days lists the folders about once. An object store prefix has no mtime: the time bucket
    alone keys it (a new day folder is noticed within :data:`CACHE_SECONDS` too)."""
    root = landing / source.name
    if not root.is_dir():
        return None
    return _first_marker_day(str(root), root.stat().st_mtime_ns if isinstance(root, Path)
                             else 0, _bucket())


@functools.lru_cache(maxsize=256)
def _first_marker_day(root: str, _mtime: int, _bucket: int) -> date | None:
    for day, folder in _named_folders(landing_root(root)):
        if day is not None and _marked(folder):
            return day
    return None


def _marked(folder: Landing) -> bool:
    """Has the day folder a ``_SUCCESS`` or a manifest? (A local one's asked of the OS by name,
    without a path object each: thousands of days are asked about.)"""
    if isinstance(folder, Path):
        where = str(folder)
        return os.path.exists(os.path.join(where, MARKER)) or os.path.exists(
            os.path.join(where, MANIFEST))
    return (folder / MARKER).exists() or (folder / MANIFEST).exists()


def marker_rules(first: date | None, day: date) -> bool:
    """Does ``Completion.AUTO`` expect a marker on ``day``, given the source's first marked day?"""
    return first is not None and day >= first


@dataclass(frozen=True)
class LandedDay:
    """One day folder of a source: its data files, whether it is complete, and why not."""

    day: date
    folder: Landing
    files: tuple[Landing, ...]
    problem: str = ""  # empty when the day is complete

    @property
    def complete(self) -> bool:
        return not self.problem


def inspect_day(source: Source, day: date, folder: Landing, *, markers: bool) -> LandedDay:
    """Is the day complete, by the source's convention? Cheap: names and sizes only (checksums
    and row counts are checked when the day is read, see :func:`verify`). ``markers``: under
    ``Completion.AUTO``, does this day need a marker (see :func:`marker_rules`)?

    A local day found complete is remembered with the state of what its verdict read (see
    :func:`_remember`): a build asks about the same thousands of days several times (its plan,
    each publish of a full refresh, each read), and a day whose folder and files are as they
    were then is the same day; any other is inspected again."""
    if not isinstance(folder, Path):  # an object store folder lists itself once per lookup
        return _inspect(source, day, folder, markers=markers)
    key = (str(folder), day, source.format, source.completion, markers)
    seen = _SEEN.get(key)
    if seen is not None and _stamp(seen.paths) == seen.stamp:
        return seen.day
    started = time.time_ns()
    found = _inspect(source, day, folder, markers=markers)
    if found.complete:
        _remember(key, found, started)
    return found


RACY_SECONDS = 2  # a change this recent may share its time stamp with a later one
_SEEN_MAX = 50_000  # days remembered (~1 KiB each; a worker serving many sources), then cleared
_Stamp = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _Seen:
    paths: tuple[str, ...]  # the day's folder, its files and its manifest (if it has one)
    stamp: _Stamp
    day: LandedDay


_SEEN: dict[tuple[str, date, str, Completion, bool], _Seen] = {}
_FOLDERS: dict[str, tuple[_Stamp, list[tuple[date | None, Landing]]]] = {}  # by source folder


def _stamp(paths: tuple[str, ...]) -> _Stamp:
    """Each path's device, inode, size, mtime and ctime (``()`` if it is gone). A file added to,
    renamed in or removed from the folder changes the folder's times; a file written in place
    changes its own; a copy that keeps a file's mtime (``cp -p``, rsync) still changes its
    ctime, which nothing can set back."""
    found: list[tuple[int, ...]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(())
            continue
        found.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(found)


def _remember(key: tuple[str, date, str, Completion, bool], day: LandedDay,
              started: int) -> None:
    """Remember a complete day with the state of its folder, its files and its manifest (a
    manifest or marker added or removed later changes the folder's times)."""
    paths = (str(day.folder), *(str(p) for p in day.files))
    if (day.folder / MANIFEST).is_file():
        paths += (str(day.folder / MANIFEST),)
    stamp = _stamp(paths)
    if not _settled(stamp, started):
        return
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN[key] = _Seen(paths, stamp, day)


def _settled(stamp: _Stamp, started: int) -> bool:
    """Did everything stamped exist, and last change at least :data:`RACY_SECONDS` before the
    look at it ``started``? Else what was seen is not remembered: a change made after the look
    could get the same time stamp (a file system's clock ticks in milliseconds) and go
    unnoticed. A day landed a while ago is remembered; a fresh one is looked at again."""
    recent = started - RACY_SECONDS * 1_000_000_000
    return all(s and max(s[3], s[4]) < recent for s in stamp)


def _inspect(source: Source, day: date, folder: Landing, *, markers: bool) -> LandedDay:
    """:func:`inspect_day`, from the folder as it is now."""
    files = tuple(data_files(folder, source))
    mode = source.completion
    if mode is Completion.AUTO:
        mode = Completion.MARKER if markers else Completion.FILES
    try:
        manifest = _manifest(folder)
    except DataError as err:  # half-written: the day waits (reading it says why)
        return LandedDay(day, folder, files, err.what)
    if mode is Completion.MANIFEST or (mode is Completion.MARKER and manifest is not None):
        if manifest is None:
            return LandedDay(day, folder, files, f"no {MANIFEST} yet (still being written?)")
        listed = {str(f["name"]): f for f in manifest["files"]}
        names = {p.name for p in files}
        for name, entry in sorted(listed.items()):
            path = folder / name
            if not path.is_file():
                return LandedDay(day, folder, files, f"{name} is in the manifest but not landed")
            size = entry.get("bytes")
            if size is not None and path.stat().st_size != int(size):
                return LandedDay(day, folder, files,
                                 f"{name} has {path.stat().st_size} bytes, the manifest says "
                                 f"{size} (cut short or still being written?)")
        extra = sorted(names - set(listed))
        if extra:
            return LandedDay(day, folder, files, f"{', '.join(extra)} not in the manifest")
        return LandedDay(day, folder, tuple(folder / n for n in sorted(listed)))
    if mode is Completion.MARKER and not (folder / MARKER).exists():
        return LandedDay(day, folder, files, f"no {MARKER} marker yet (still being written?)")
    if not files:
        busy = _in_progress(folder)
        if busy:
            return LandedDay(day, folder, files, f"only files in progress ({', '.join(busy)})")
        other = sorted(p.name for p in folder.iterdir() if not p.name.startswith((".", "_")))
        if mode is Completion.MARKER and not other:
            # the export finished with no data: an empty day (a change feed's quiet day; the
            # reader refuses it for a source that does not allow empty days)
            return LandedDay(day, folder, ())
        return LandedDay(day, folder, files, f"no {source.format} file" + (
            f" (found {', '.join(other)})" if other else ""))
    if mode is Completion.FILES:
        empty = [p.name for p in files if p.stat().st_size == 0]
        if empty:
            return LandedDay(day, folder, files, f"{', '.join(empty)} is empty (0 bytes: still "
                             "being written?)")
        busy = _in_progress(folder)
        if busy:
            return LandedDay(day, folder, files, f"{', '.join(busy)} still being written")
    return LandedDay(day, folder, files)


def landed(landing: Landing, source: Source, *, today: date | None = None) -> list[LandedDay]:
    """Every well-named day folder of the source, complete or not, oldest first (once per
    build step's day, see loaders/landing_look.py)."""
    key = (str(landing), source.name, source.format, source.completion, source.future_days,
           today)
    return looked(key, lambda: _landed(landing, source, today=today))


def _landed(landing: Landing, source: Source, *, today: date | None) -> list[LandedDay]:
    first = first_marker_day(landing, source)
    return [inspect_day(source, d, f, markers=marker_rules(first, d))
            for d, f in day_folders(landing, source, today=today).items()]


def landed_dates(landing: Landing, source: Source) -> list[date]:
    """Every day whose extract is complete, oldest first."""
    return [d.day for d in landed(landing, source) if d.complete]


def incomplete(landing: Landing, source: Source) -> dict[date, str]:
    """Days whose folder is there but not complete, with why."""
    return {d.day: d.problem for d in landed(landing, source) if not d.complete}


def signature(day: LandedDay) -> str:
    """A cheap sign that the day's files may have changed: each file's name, size and mtime
    (and the manifest's), and in an object store its ETag (a time there is to the second). A
    copy, a restore or an rsync changes it with the content unchanged."""
    digest = hashlib.sha256()
    for path in sorted({*day.files, day.folder / MANIFEST}, key=str):
        if path.is_file():
            st = path.stat()
            tag = getattr(st, "st_etag", "")
            digest.update(f"{path.name}\x1f{st.st_size}\x1f{st.st_mtime_ns}"
                          f"{f'{chr(0x1f)}{tag}' if tag else ''}\x1e".encode())
    return digest.hexdigest()[:16]


def content(day: LandedDay) -> str:
    """What the day's landing holds: each data file's name and sha256, from the manifest where
    it lists them (checked when the day is read), else hashed here. An identical re-export, a
    copy, or the same files with or without a manifest are the same content."""
    found = _manifest(day.folder) if (day.folder / MANIFEST).is_file() else None
    listed = {str(f["name"]): str(f["sha256"]) for f in (found or {}).get("files", [])
              if f.get("sha256")}
    entries = []
    for path in day.files:
        if path.name in listed:
            entries.append((path.name, listed[path.name]))
            continue
        entries.append((path.name, sha256(path)))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()[:16]


def fingerprint(day: LandedDay, known: dict[str, str] | None = None) -> str:
    """``signature/content`` of the day. ``known`` maps signatures recorded before to their
    content, so an unchanged day is not read again to fingerprint it."""
    sig = signature(day)
    return f"{sig}/{(known or {}).get(sig) or content(day)}"


def same_landing(recorded: str, day: LandedDay) -> bool:
    """Is the day what was recorded? The signature decides when it matches; otherwise the
    content does (a copied or touched file with the same bytes is the same landing)."""
    sig, _, kept = recorded.partition("/")
    return sig == signature(day) or kept == content(day)


def verify(day: LandedDay) -> None:
    """Check the day's files against its manifest's checksums (a file cut at a line boundary
    has the right shape and the wrong bytes). Row counts are checked by the reader."""
    found = _manifest(day.folder)
    if found is None:
        return
    for entry in found["files"]:
        want = entry.get("sha256")
        if not want:
            continue
        path = day.folder / str(entry["name"])
        if sha256(path) != want:
            raise DataError(f"{path.name} does not match its manifest's sha256 (changed or cut "
                            "short after the manifest was written)", where=str(path),
                            fix="Land the export again, manifest last")


def manifest_rows(day: LandedDay) -> dict[str, int]:
    """Row counts the manifest declares, by file name."""
    found = _manifest(day.folder)
    if found is None:
        return {}
    return {str(f["name"]): int(f["rows"]) for f in found["files"] if f.get("rows") is not None}


def write_manifest(folder: Path, rows: dict[str, int], *,
                   extra: dict[str, Any] | None = None) -> None:
    """Write a day's manifest (the last file of an export): each data file's bytes, rows and
    sha256. The demo and ``starsmith init`` land their days this way; ``starsmith extract``
    adds ``extra`` keys (its window and dead-letter count)."""
    files = []
    for name, n in sorted(rows.items()):
        data = (folder / name).read_bytes()
        files.append({"name": name, "bytes": len(data), "rows": n,
                      "sha256": hashlib.sha256(data).hexdigest()})
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files, **(extra or {})}, indent=1))
    tmp.replace(folder / MANIFEST)
