"""Read a source's extract for one day from the landing zone, cast to the source's contract.

Reading is lazy; a column the contract declares but the file lacks comes back as NULLs only if it
is nullable, otherwise the read fails naming the file and the column (schema drift is named, not
guessed around). An Avro file's embedded schema is checked from its header, file by file, before
any row is decoded (loaders/avro.py). The landing zone may be an object store prefix
(loaders/store.py): Polars scans its Parquet, CSV and NDJSON lazily with its own cloud readers.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import overload

import polars as pl

from starsmith.contract import Cadence, Source
from starsmith.errors import DataError, SourceMissing
from starsmith.loaders import avro
from starsmith.loaders.landed import (
    MANIFEST,
    MARKER,
    LandedDay,
    data_files,
    day_folders,
    fingerprint,
    first_marker_day,
    inspect_day,
    landed,
    landed_dates,
    manifest_rows,
    marker_rules,
    verify,
)
from starsmith.loaders.store import Landing, ObjectPath, scan_args, storage_options
from starsmith.log import get_logger

log = get_logger(__name__)


@overload
def source_folder(landing: Path, source: Source, day: date) -> Path: ...
@overload
def source_folder(landing: ObjectPath, source: Source, day: date) -> ObjectPath: ...
@overload
def source_folder(landing: Landing, source: Source, day: date) -> Landing: ...
def source_folder(landing: Landing, source: Source, day: date) -> Landing:
    return landing / source.name / f"date={day.isoformat()}"


_COMPATIBLE: dict[pl.DataType, set[pl.DataType]] = {  # widenings that lose no data
    pl.Int64(): {pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt16(),
                 pl.UInt32()},
    pl.Int32(): {pl.Int8(), pl.Int16(), pl.Int32(), pl.UInt8(), pl.UInt16()},
    pl.Float64(): {pl.Float32(), pl.Float64(), pl.Int32(), pl.Int64()},
}


Earlier = Callable[[], tuple[date, Collection[str]] | None]
"""The columns of a source's previous landing that holds data, and its day (None: there is none),
asked only when a snapshot or change feed lacks a nullable column."""


def check_drift(source: Source, found: pl.Schema, where: str, *, earlier: Earlier | None = None
                ) -> None:
    """Name schema drift precisely: a missing column, a changed type, a new column.

    A missing required column or an incompatible type stops the read (no retry helps). A
    missing nullable column reads as NULLs (a warning), except in a snapshot or change feed
    whose previous landing had it (``earlier``): dropped from the export, it would version every
    key with a NULL. Days landed before the column was added to the contract read as NULLs, so a
    restatement or full refresh can read them. A new column is ignored with a warning.
    """
    problems = []
    versioned = source.cadence in (Cadence.SNAPSHOT, Cadence.CHANGE_FEED)
    before: list[tuple[date, Collection[str]] | None] = []  # asked once, when needed
    for col in source.columns:
        if col.name not in found:
            if versioned and col.nullable and earlier is not None and not before:
                before.append(earlier())
            previous = before[0] if before else None
            if not col.nullable:
                problems.append(f"missing column {col.name!r} ({col.dtype})")
            elif versioned and previous is not None and col.name in previous[1]:
                problems.append(f"missing column {col.name!r} ({col.dtype}), which its previous "
                                f"landing ({previous[0]}) had")
            else:
                log.warning("source %r has no column %r (%s): read as NULL (in %s)",
                            source.name, col.name, col.dtype, where)
            continue
        got = found[col.name]
        text = source.format in ("csv", "ndjson") and got == pl.String()
        if got != col.dtype and not text and got not in _COMPATIBLE.get(col.dtype, set()) \
                and not (got.is_decimal() and col.dtype.is_decimal()) \
                and not (got.is_temporal() and col.dtype.is_temporal()):
            problems.append(f"column {col.name!r} changed type: declared {col.dtype}, found {got}")
        elif source.format == "avro" and (loss := avro.narrowing(col.dtype, got)) is not None:
            problems.append(f"column {col.name!r} cannot hold its declared {col.dtype}: found "
                            f"{got}, {loss}")
    for name in found.names():
        if name not in source.schema:
            log.warning("source %r has a new column %r (%s) that its contract does not declare;"
                        " it is ignored (in %s)", source.name, name, found[name], where)
    if problems:
        raise DataError(f"source {source.name!r} drifted from its contract: "
                        + "; ".join(problems), where=where,
                        fix="Fix the export, or change the source's contract in the project")


def landed_columns(source: Source, day: LandedDay) -> set[str] | None:
    """The columns a landing holds, read cheaply from its first file with data (Parquet
    metadata or Avro header, the CSV header, the first NDJSON record); None when it holds no
    data."""
    for path in day.files:
        if path.stat().st_size == 0:
            continue
        if source.format == "avro":
            return avro.columns(path)
        if source.format in ("parquet", "csv"):
            if isinstance(path, ObjectPath):  # read by Polars' cloud reader: the footer, a line
                uri, options = str(path), storage_options(path)
                lf = pl.scan_parquet(uri, storage_options=options) \
                    if source.format == "parquet" else \
                    pl.scan_csv(uri, infer_schema=False, storage_options=options)
                return set(lf.collect_schema().names())
            if source.format == "parquet":
                return set(pl.read_parquet_schema(path))
            return set(pl.read_csv(path, n_rows=0, infer_schema=False).columns)
        with path.open("rb") as fh:
            line = next((x for x in fh if x.strip()), b"")
        if line:
            try:
                record = json.loads(line)
            except ValueError:
                return None
            return set(record) if isinstance(record, dict) else None
    return None


def complete_before(landing: Landing, source: Source, day: date) -> Iterator[LandedDay]:
    """The source's complete landings before ``day``, newest first; the day before is tried
    first, so a daily source does not list its folders."""
    first = first_marker_day(landing, source)
    prior = day - timedelta(days=1)
    folder = source_folder(landing, source, prior)
    if folder.is_dir():
        found = inspect_day(source, prior, folder, markers=marker_rules(first, prior))
        if found.complete:
            yield found  # listed further only if it holds no data
    for d, folder in sorted(day_folders(landing, source).items(), reverse=True):
        if d < prior:
            found = inspect_day(source, d, folder, markers=marker_rules(first, d))
            if found.complete:
                yield found


def earlier_columns(source: Source, landings: Callable[[], Iterable[LandedDay]]) -> Earlier:
    """The columns of the latest of ``landings`` that holds data (an empty day says nothing)."""
    def columns() -> tuple[date, Collection[str]] | None:
        for found in landings():
            cols = landed_columns(source, found)
            if cols is not None:
                return found.day, cols
        return None
    return columns


def _landed_upto(landing: Landing, source: Source, day: date) -> list[LandedDay]:
    """Every complete landing on or before ``day``, oldest first, from one listing."""
    days = [d for d in landed(landing, source) if d.complete and d.day <= day]
    if not days:
        raise SourceMissing(
            f"source {source.name!r} has no extract landed on or before {day}",
            where=str(landing / source.name),
            fix="Land an extract, or build a later day")
    return days


def landings_for(landing: Landing, source: Source, day: date, *, whole: bool = False) -> list[date]:
    """The landings a run of ``day`` reads: that day's extract; for reference data the latest
    landed on or before it; with ``whole`` (``Window.ALL``) every landing up to it."""
    if whole:
        return [d.day for d in _landed_upto(landing, source, day)]
    if not source.cadence.daily:
        found = landing_read(source, day, landed_dates(landing, source))
        if found is None:
            raise SourceMissing(
                f"reference source {source.name!r} has no extract landed on or before {day}",
                where=str(landing / source.name),
                fix="Land the reference data (any earlier day will do), then build again")
        return [found]
    return [day]


def landing_read(source: Source, day: date, complete: Sequence[date]) -> date | None:
    """Which of the ``complete`` landings (oldest first) a run of ``day`` reads: a daily
    source's own day, reference data's latest on or before it; None when there is none."""
    if source.cadence.daily:
        at = bisect.bisect_left(complete, day)
        return day if at < len(complete) and complete[at] == day else None
    at = bisect.bisect_right(complete, day)
    return complete[at - 1] if at else None


def scan_source(landing: Landing, source: Source, day: date, *, whole: bool = False
                ) -> pl.LazyFrame:
    """The source's rows a run of ``day`` reads (see :func:`landings_for`), cast to its contract.

    Checksums and row counts are checked on the newest landing read only: with ``whole``, the
    older ones were checked when they were the newest (a re-landed day is noticed by its
    fingerprint and restated)."""
    if not whole:
        (only,) = landings_for(landing, source, day)
        return _scan_one(landing, source, day_landing(landing, source, only))
    days = _landed_upto(landing, source, day)
    frames = [_scan_one(landing, source, found, check=i == len(days) - 1,
                        earlier=functools.partial(_newest_first, days, i))
              for i, found in enumerate(days)]
    return frames[0] if len(frames) == 1 else pl.concat(frames)


def _newest_first(days: list[LandedDay], end: int) -> Iterator[LandedDay]:
    return (days[i] for i in range(end - 1, -1, -1))


def day_landing(landing: Landing, source: Source, day: date) -> LandedDay:
    """The day's landing, refused with the reason unless it is complete."""
    folder = source_folder(landing, source, day)
    if not folder.is_dir() or not (data_files(folder, source) or (folder / MANIFEST).exists()
                                   or (folder / MARKER).exists()):
        raise SourceMissing(
            f"source {source.name!r} has no {source.format} extract for {day}",
            where=str(folder),
            fix="Land the extract, or build only the days that have landed (`starsmith build`)",
        )
    found = inspect_day(source, day, folder,
                        markers=marker_rules(first_marker_day(landing, source), day))
    if not found.complete:
        raise SourceMissing(f"source {source.name!r}'s extract for {day} is not complete: "
                            f"{found.problem}", where=str(folder),
                            fix="Wait for the export to finish, or land it again")
    return found


def fingerprints(landing: Landing, source: Source, day: date, *, whole: bool = False,
                 known: dict[str, str] | None = None) -> dict[date, str]:
    """The fingerprint of each landing a run of ``day`` reads (recorded with its publish);
    ``known``: signatures recorded before, with their content (see landed.fingerprint)."""
    if whole:  # one listing, each landing's fingerprint once
        return {d.day: fingerprint(d, known) for d in _landed_upto(landing, source, day)}
    return {d: fingerprint(day_landing(landing, source, d), known)
            for d in landings_for(landing, source, day)}


def _scan_one(landing: Landing, source: Source, found: LandedDay, *, check: bool = True,
              earlier: Callable[[], Iterable[LandedDay]] | None = None) -> pl.LazyFrame:
    """One complete landing, cast to the contract. ``check``: verify its checksums and row
    counts; ``earlier``: the complete landings before it, newest first, when the caller knows
    them (else they are looked up, only if a column is missing)."""
    if check:
        verify(found)
    folder, schema = found.folder, source.schema
    files = [f for f in found.files if f.stat().st_size > 0]  # an empty change-feed day: 0 bytes
    if not files:
        if check:
            check_rows(source, found, pl.LazyFrame(schema=schema))
        return pl.LazyFrame(schema=schema)
    before = earlier or (lambda: complete_before(landing, source, found.day))
    if source.format == "avro":  # each file's header checked, its rows cast to the contract
        lf = avro.scan(files, schema, lambda f: check_drift(
            source, f.schema, str(f.path), earlier=earlier_columns(source, before)))
        if check:
            check_rows(source, found, lf)
        return lf
    paths, options = scan_args(files)
    if source.format == "parquet":
        lf = pl.scan_parquet(paths, storage_options=options)
    elif source.format == "csv" and options is not None:  # in an object store: see _remote_csv
        lf = pl.concat([_remote_csv(f, schema_overrides=schema, try_parse_dates=False)
                        for f in files], how="vertical_relaxed")
    elif source.format == "csv":
        lf = pl.scan_csv(paths, schema_overrides=schema, try_parse_dates=False,
                         storage_options=options)
    elif source.format == "ndjson":
        lf = pl.scan_ndjson(paths, schema={c: pl.String() for c in schema.names()},
                            storage_options=options)
    else:  # pragma: no cover - Source checks its format when it is declared
        raise DataError(f"unknown source format {source.format!r}", where=source.name)
    found_schema = lf.collect_schema()
    check_drift(source, found_schema, str(folder), earlier=earlier_columns(source, before))
    if check:
        check_rows(source, found, lf)
    return lf.select(to_contract(schema, found_schema))


def to_contract(schema: pl.Schema, found: pl.Schema) -> list[pl.Expr]:
    """The contract's columns from a landing of schema ``found``: cast, a text timestamp parsed,
    a nullable column the landing lacks as NULLs (check_drift has allowed it)."""
    return [(pl.col(c).str.to_datetime(time_unit="us")
             if t == pl.Datetime("us") and found.get(c) == pl.String()
             else pl.col(c).cast(t)) if c in found else pl.lit(None, dtype=t).alias(c)
            for c, t in schema.items()]


def check_rows(source: Source, day: LandedDay, lf: pl.LazyFrame,
               counted: dict[str, int] | None = None) -> None:
    """A day with no rows is refused unless the source allows empty days; a manifest's row
    counts must match what each file holds (a CSV cut at a line boundary parses fine).
    ``counted``: the rows of each file by name, when the caller has read them already."""
    declared = manifest_rows(day)
    if counted is not None and not declared:
        total = sum(counted.values())
    elif declared:
        for path in day.files:
            want = declared.get(path.name)
            if want is None:
                continue
            got = counted.get(path.name, 0) if counted is not None else _count(source, path)
            if got != want:
                raise DataError(f"{path.name} holds {got} rows, its manifest says {want}",
                                where=str(path), fix="Land the export again, manifest last")
        total = sum(declared.values())
    elif source.format == "avro":  # from the block headers, without decoding a record
        total = sum(_count(source, path) for path in day.files)
    else:
        total = int(lf.select(pl.len()).collect().item())
    if total == 0 and not source.allows_empty:
        raise DataError(
            f"source {source.name!r}'s extract for {day.day} has no rows: a {source.cadence.value}"
            " source with an empty day is a broken export, not an empty business day",
            where=str(day.folder),
            fix="Land the export again; if an empty day is right for this source, declare "
                "guard=Guard(allow_empty=True)")


def _remote_csv(path: Landing, **options: object) -> pl.LazyFrame:
    """A CSV object read whole, then parsed here. A text file carries no count of its own, and
    Polars' cloud CSV reader once parsed 9,803 of an intact object's 98,819 rows (its sha256
    verified; against the S3 emulator, under load; not reproduced in 180 reads): a short read
    there is a silent loss when no manifest counts the rows. Reading the bytes first makes a
    short read an error of the store's (a retry), not fewer rows."""
    return pl.read_csv(path.read_bytes(), **options).lazy()  # type: ignore[arg-type]


def _count(source: Source, path: Landing) -> int:
    if path.stat().st_size == 0:  # an empty change-feed file: no header, no rows
        return 0
    (one,), options = scan_args([path])
    if source.format == "parquet":
        return int(pl.scan_parquet(one, storage_options=options).select(pl.len()).collect()
                   .item())
    if source.format == "avro":
        return avro.count_rows(path)
    if source.format == "csv" and options is not None:
        return int(_remote_csv(path, infer_schema=False).select(pl.len()).collect().item())
    if source.format == "csv":
        return int(pl.scan_csv(one, infer_schema=False, storage_options=options)
                   .select(pl.len()).collect().item())
    with path.open("rb") as fh:  # a JSON line per record
        return sum(1 for line in fh if line.strip())
