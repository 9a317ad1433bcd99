"""Read a source's extract for one day from the landing zone, cast to the source's contract.

Reading is lazy; a column the contract declares but the file lacks comes back as NULLs only if it
is nullable, otherwise the read fails naming the file and the column (schema drift is named, not
guessed around).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl

from starsmith.contract import Source
from starsmith.errors import DataError, SourceMissing
from starsmith.log import get_logger

log = get_logger(__name__)


def source_folder(landing: Path, source: Source, day: date) -> Path:
    return landing / source.name / f"date={day.isoformat()}"


def landed_dates(landing: Path, source: Source) -> list[date]:
    """Every day for which the source has a complete folder, oldest first."""
    root = landing / source.name
    if not root.is_dir():
        return []
    days = []
    for folder in root.glob("date=*"):
        if any(folder.glob(f"*.{source.format}")):
            days.append(date.fromisoformat(folder.name.removeprefix("date=")))
    return sorted(days)


_COMPATIBLE: dict[pl.DataType, set[pl.DataType]] = {  # widenings that lose no data
    pl.Int64(): {pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt16(),
                 pl.UInt32()},
    pl.Int32(): {pl.Int8(), pl.Int16(), pl.Int32(), pl.UInt8(), pl.UInt16()},
    pl.Float64(): {pl.Float32(), pl.Float64(), pl.Int32(), pl.Int64()},
}


def check_drift(source: Source, found: pl.Schema, where: str) -> None:
    """Name schema drift precisely: a missing column, a changed type, a new column.

    A missing required column or an incompatible type stops the read (no retry helps); a missing
    nullable column reads as NULLs and a new column is ignored, both logged as warnings.
    """
    problems = []
    for col in source.columns:
        if col.name not in found:
            if not col.nullable:
                problems.append(f"missing column {col.name!r} ({col.dtype})")
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
    for name in found.names():
        if name not in source.schema:
            log.warning("source %r has a new column %r (%s) that its contract does not declare;"
                        " it is ignored (in %s)", source.name, name, found[name], where)
    if problems:
        raise DataError(f"source {source.name!r} drifted from its contract: "
                        + "; ".join(problems), where=where,
                        fix="Fix the export, or change the source's contract in the project")


def landings_for(landing: Path, source: Source, day: date, *, whole: bool = False) -> list[date]:
    """The landings a run of ``day`` reads: that day's extract; for reference data the latest
    landed on or before it; with ``whole`` (``Window.ALL``) every landing up to it."""
    if whole:
        days = [d for d in landed_dates(landing, source) if d <= day]
        if not days:
            raise SourceMissing(
                f"source {source.name!r} has no extract landed on or before {day}",
                where=str(landing / source.name),
                fix="Land an extract, or build a later day")
        return days
    if not source.cadence.daily:
        earlier = [d for d in landed_dates(landing, source) if d <= day]
        if not earlier:
            raise SourceMissing(
                f"reference source {source.name!r} has no extract landed on or before {day}",
                where=str(landing / source.name),
                fix="Land the reference data (any earlier day will do), then build again")
        return [earlier[-1]]
    return [day]


def scan_source(landing: Path, source: Source, day: date, *, whole: bool = False
                ) -> pl.LazyFrame:
    """The source's rows a run of ``day`` reads (see :func:`landings_for`), cast to its contract."""
    days = landings_for(landing, source, day, whole=whole)
    frames = [_scan_one(landing, source, d) for d in days]
    return frames[0] if len(frames) == 1 else pl.concat(frames)


def _scan_one(landing: Path, source: Source, day: date) -> pl.LazyFrame:
    folder = source_folder(landing, source, day)
    files = sorted(folder.glob(f"*.{source.format}"))
    if not files:
        raise SourceMissing(
            f"source {source.name!r} has no {source.format} extract for {day}",
            where=str(folder),
            fix="Land the extract, or build only the days that have landed (`starsmith build`)",
        )
    schema = source.schema
    if source.format == "parquet":
        lf = pl.scan_parquet(files)
    elif source.format == "csv":
        lf = pl.scan_csv(files, schema_overrides=schema, try_parse_dates=False)
    elif source.format == "ndjson":
        lf = pl.scan_ndjson(files, schema={c: pl.String() for c in schema.names()})
    else:  # pragma: no cover - Source checks its format when it is declared
        raise DataError(f"unknown source format {source.format!r}", where=source.name)
    found = lf.collect_schema()
    check_drift(source, found, str(folder))
    return lf.select(
        (pl.col(c).str.to_datetime(time_unit="us") if t == pl.Datetime("us") and found.get(c) == pl.String()
         else pl.col(c).cast(t)) if c in found else pl.lit(None, dtype=t).alias(c)
        for c, t in schema.items()
    )
