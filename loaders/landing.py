"""Read a source's extract for one day from the landing zone, cast to the source's contract.

Reading is lazy; a column the contract declares but the file lacks comes back as NULLs only if it
is nullable, otherwise the read fails naming the file and the column (schema drift is named, not
guessed around).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl

from models.contract import Source
from starsmith.errors import DataError, SourceMissing


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


def scan_source(landing: Path, source: Source, day: date) -> pl.LazyFrame:
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
    else:  # pragma: no cover - Source formats are declared in models/sources.py
        raise DataError(f"unknown source format {source.format!r}", where=source.name)
    found = lf.collect_schema()
    missing = [c.name for c in source.columns if c.name not in found and not c.nullable]
    if missing:
        raise DataError(
            f"source {source.name!r} lacks required column(s) {missing}",
            where=str(folder), fix="Fix the export, or change the source contract",
        )
    return lf.select(
        (pl.col(c).str.to_datetime(time_unit="us") if t == pl.Datetime("us") and found.get(c) == pl.String()
         else pl.col(c).cast(t)) if c in found else pl.lit(None, dtype=t).alias(c)
        for c, t in schema.items()
    )
