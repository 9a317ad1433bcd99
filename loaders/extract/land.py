"""Land one source's extract for one day: ``<landing>/<source>/date=D/part-0.parquet``, the dead
letters beside it, and ``_manifest.json`` last, the marker that the day is complete.

Files are written under hidden, in-progress names (``.part-0.parquet.<pid>.tmp``) that no reader
takes for data, renamed into place once the database transaction has ended, then the manifest is
written: a day is never seen half-landed, and an extract that fails leaves the day as it was
(a forced re-extract that fails keeps the previous landing). Nothing is written before the
source's columns are checked, so a column dropped in the database lands nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from starsmith.contract import Source
from starsmith.errors import ConfigError, DataError
from starsmith.loaders.extract.connections import resolve
from starsmith.loaders.extract.convert import (
    Converted,
    contract_schema,
    convert,
    dead_schema,
    plain,
)
from starsmith.loaders.extract.messages import ExtractResult
from starsmith.loaders.extract.postgres import Session
from starsmith.loaders.extract.spec import Postgres
from starsmith.loaders.extract.window import (
    Window,
    cursor_kind,
    day_end,
    literal,
    neighbours,
    recorded,
)
from starsmith.loaders.landed import (
    MANIFEST,
    data_files,
    first_marker_day,
    inspect_day,
    marker_rules,
    write_manifest,
)
from starsmith.loaders.landing import source_folder
from starsmith.log import get_logger

log = get_logger(__name__)

DATA_FILE = "part-0.parquet"
DEAD_LETTER = "_dead_letter.parquet"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def is_landed(landing: Path, source: Source, day: date) -> bool:
    """Is the day's extract complete (its manifest written and matching its files)?"""
    folder = source_folder(landing, source, day)
    if not (folder / MANIFEST).is_file():
        return False
    found = inspect_day(source, day, folder,
                        markers=marker_rules(first_marker_day(landing, source), day))
    return found.complete


def _check_columns(source: Source, spec: Postgres, found: pa.Schema) -> None:
    """Every contract column (and the cursor) must be in the table or query: a missing one is
    a DataError naming the source, the column and the table, before anything lands."""
    names = set(found.names)
    missing = [c.name for c in source.columns if c.name not in names]
    if spec.cursor and spec.cursor not in names:
        missing.append(f"{spec.cursor} (the cursor)")
    if missing:
        raise DataError(
            f"source {source.name!r}: column(s) {', '.join(repr(m) for m in missing)} not in "
            f"{spec.described} (it has {', '.join(found.names) or 'no columns'})",
            where=f"connection {spec.connection!r}",
            fix="The database changed under the source's contract: restore the column, or "
                "remove it from the source's columns (nothing was landed for the day)")


def _window(db: Session, source: Source, spec: Postgres, found: pa.Schema, landing: Path,
            day: date, force: bool) -> Window:
    """The day's window (see loaders/extract/window.py)."""
    assert spec.cursor is not None
    kind = cursor_kind(source, spec.cursor, found.field(spec.cursor).type)
    if force:
        again = recorded(source_folder(landing, source, day))
        if again is not None and again.cursor == spec.cursor and again.kind == kind:
            return again  # a re-run reads the window it read before
    before, after = neighbours(landing, source, day, spec.cursor)
    low = before.high if before is not None and before.kind == kind else None
    if before is not None and before.kind == kind and low is None:
        low = before.low
    column = _quote(spec.cursor)
    conditions = [f"{column} IS NOT NULL"]
    cap = day_end(kind, day)
    if cap is not None:  # nothing dated after the day being extracted
        conditions.append(f"{column} < {literal(kind, cap)}")
    if after is not None and after.kind == kind:
        if after.low is None:  # the later day holds every row up to its high already
            return Window(spec.cursor, kind, low, low)
        conditions.append(f"{column} <= {literal(kind, after.low)}")
    if low is not None:
        conditions.append(f"{column} > {literal(kind, low)}")
    high = db.scalar(f"SELECT max({column}) FROM {spec.relation} WHERE {' AND '.join(conditions)}",
                     doing=f"reading the high watermark of {spec.described}")
    return Window(spec.cursor, kind, low, high if high is not None else low)


def _select(source: Source, spec: Postgres, window: Window | None) -> str:
    columns = ", ".join(_quote(c.name) for c in source.columns)
    sql = f"SELECT {columns} FROM {spec.relation}"
    if window is not None:
        column = _quote(window.cursor)
        sql += f" WHERE {window.where(column)} ORDER BY {column}"
    return sql


def _write(batches: Iterator[pa.RecordBatch], source: Source, data: Path, dead: Path
           ) -> tuple[int, int]:
    """Convert and write the batches; returns (rows landed, rows dead-lettered).

    A batch is written (zstd Parquet, on one helper thread) while the next is read and
    converted: writing was a third of an extract's time when done in turn (1M rows: 1.0 s of
    3.7 s). One write at a time, in order, so the file's row order is the query's."""
    schema, rejects = contract_schema(source), dead_schema(source)
    counts = [0, 0]
    dead_writer: list[pq.ParquetWriter] = []

    def write(writer: pq.ParquetWriter, out: Converted) -> None:
        if out.good.height:
            writer.write_table(out.good.to_arrow().cast(schema))
            counts[0] += out.good.height
        if out.dead.height:
            if not dead_writer:
                dead_writer.append(pq.ParquetWriter(dead, rejects, compression="zstd"))
            dead_writer[0].write_table(out.dead.to_arrow().cast(rejects))
            counts[1] += out.dead.height

    with pq.ParquetWriter(data, schema, compression="zstd") as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="extract-write") as pool:
        try:
            pending: Future[None] | None = None
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                out = convert(plain(batch), source)
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, writer, out)
            if pending is not None:
                pending.result()
        finally:
            for opened in dead_writer:
                opened.close()
    return counts[0], counts[1]


def extract_day(source: Source, day: date, landing: Path, secrets_file: Path | None, *,
                force: bool = False) -> ExtractResult:
    """Land ``source``'s extract for ``day`` (a no-op when it has landed, unless ``force``)."""
    spec = source.extract
    if spec is None:
        raise ConfigError(f"source {source.name!r} is not extracted from a database",
                          where=f"source {source.name}",
                          fix="Declare extract=Postgres(...) on it, or land its files yourself")
    if not force and is_landed(landing, source, day):
        return ExtractResult(source.name, day.isoformat(), "already landed")
    folder = source_folder(landing, source, day)
    foreign = [p.name for p in (data_files(folder, source) if folder.is_dir() else [])
               if p.name != DATA_FILE]
    if foreign:
        raise DataError(f"the day's folder holds data files starsmith did not extract: "
                        f"{', '.join(foreign)}", where=str(folder),
                        fix="Move them away (an extracted day holds part-0.parquet only), "
                            "then extract again")
    clock = time.perf_counter()
    uri = resolve(spec.connection, secrets_file)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_data = folder / f".{DATA_FILE}.{os.getpid()}.tmp"
    tmp_dead = folder / f".{DEAD_LETTER}.{os.getpid()}.tmp"
    try:
        with Session(spec.connection, uri) as db:
            found = db.schema(f"SELECT * FROM {spec.relation}",
                              doing=f"reading the columns of {spec.described}")
            _check_columns(source, spec, found)
            window = _window(db, source, spec, found, landing, day, force) \
                if spec.cursor else None
            if window is not None and window.empty:
                rows, failed = _write(iter(()), source, tmp_data, tmp_dead)
            else:
                rows, failed = _write(db.batches(_select(source, spec, window),
                                                 doing=f"reading {spec.described}"),
                                      source, tmp_data, tmp_dead)
        (folder / MANIFEST).unlink(missing_ok=True)  # a re-extract: incomplete until written
        tmp_data.replace(folder / DATA_FILE)
        if failed:
            tmp_dead.replace(folder / DEAD_LETTER)
        else:
            (folder / DEAD_LETTER).unlink(missing_ok=True)
        extra: dict[str, object] = {
            "extract": {**(window.to_json() if window else {"cursor": None}),
                        "connection": spec.connection, "relation": spec.described,
                        "extracted_at": datetime.now(UTC).isoformat(timespec="seconds")},
            "dead_letter": {"file": DEAD_LETTER if failed else None, "rows": failed},
        }
        write_manifest(folder, {DATA_FILE: rows}, extra=extra)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_dead.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing landed: no empty day folder left behind
    if failed:
        log.warning("%s %s: %d row(s) failed conversion; see %s", source.name, day, failed,
                    folder / DEAD_LETTER)
    return ExtractResult(source.name, day.isoformat(), "landed", rows=rows, dead_letters=failed,
                         window=window.describe() if window else "full snapshot",
                         duration_s=round(time.perf_counter() - clock, 3))


def dead_letters(landing: Path, source: Source, day: date) -> int | None:
    """How many rows of the day's extract failed conversion (None: not an extracted day)."""
    import json

    try:
        found = json.loads((source_folder(landing, source, day) / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    entry = found.get("dead_letter") if isinstance(found, dict) else None
    return int(entry.get("rows", 0)) if isinstance(entry, dict) else None


def dead_letter_details(inputs: list[Source], landing: Path, day: date) -> dict[str, int]:
    """``{"dead_letters": n}`` for a step reading extracted sources' day: how many of their
    rows failed conversion and wait in ``_dead_letter.parquet`` (recorded in the run log's
    details); empty when the step reads no extracted day."""
    counts = [dead_letters(landing, s, day) for s in inputs if s.extract is not None]
    found = [n for n in counts if n is not None]
    return {"dead_letters": sum(found)} if found else {}
