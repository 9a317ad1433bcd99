"""The one-transaction publish script for BigQuery: the strategy plus everything that commits with it.

The small rows that go with the publish (run log, quality results, watermarks, the cost of the
jobs so far) are written into the script as ``VALUES``; quarantined rows, which can be many, are
loaded into a staging table of this attempt and read from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlglot import exp

from starsmith.loaders.bigquery import meta
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, safe_name

if TYPE_CHECKING:
    from starsmith.loaders.bigquery.warehouse import BigQueryWarehouse


def _lit(value: object) -> str:
    """A BigQuery literal for a value of the run metadata."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"CAST('{value}' AS FLOAT64)"
    if isinstance(value, datetime):
        return f"DATETIME '{value.replace(tzinfo=None).isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    return exp.Literal.string(str(value)).sql("bigquery")


def _in(column: str, values: Sequence[date]) -> str:
    return f"`{column}` IN ({', '.join(_lit(v) for v in values)})" if values else "FALSE"


class _Script:
    def __init__(self, wh: BigQueryWarehouse, job: Publish) -> None:
        self.wh, self.job = wh, job
        self.prefix = (f"_meta_{safe_name(job.target)}__{safe_name(job.run_log['run_id'])}__"
                       f"{wh.nonce}")
        self.staged: list[str] = []
        self.lines: list[str] = []

    def table(self, dataset: str, name: str) -> str:
        return f"`{self.wh.ref.project}`.`{dataset}`.`{name}`"

    def upload(self, kind: str, frame: pl.DataFrame) -> str:
        name = self.wh.upload(f"{self.prefix}_{kind}", frame)
        self.staged.append(name)
        return self.table(self.wh.ref.staging, name)

    def values(self, target: str, frame: pl.DataFrame) -> None:
        """Small metadata rows written into the script itself: no load job for them."""
        if frame.height:
            self.lines.append(values_insert(target, frame))

    def insert(self, target: str, source: str, columns: Sequence[str],
               types: dict[str, str] | None = None) -> None:
        cols = ", ".join(f"`{c}`" for c in columns)
        picks = ", ".join(f"CAST(`{c}` AS {types[c]})" if types and c in types else f"`{c}`"
                          for c in columns)
        self.lines.append(f"INSERT INTO {target} ({cols}) SELECT {picks} FROM {source}")


def values_insert(target: str, frame: pl.DataFrame) -> str:
    cols = ", ".join(f"`{c}`" for c in frame.columns)
    rows = ", ".join("(" + ", ".join(_lit(v) for v in row) + ")" for row in frame.iter_rows())
    return f"INSERT INTO {target} ({cols}) VALUES {rows}"


def _quarantine(s: _Script, rows: pl.DataFrame) -> None:
    """Replace the quarantine rows this step answers for (its date, or its partitions)."""
    from google.cloud import bigquery

    job, wh = s.job, s.wh
    rows = meta.portable(rows)
    table_id = wh.table_id(f"{job.target}__quarantine")
    wanted = {f.name: f for f in meta.fields(rows.schema)}
    scope = job.quarantine_scope
    if scope and scope[0] not in wanted:
        wanted[scope[0]] = bigquery.SchemaField(scope[0], "DATE")
    table = wh.get_table(table_id)
    if table is None:
        spec = bigquery.Table(table_id, schema=list(wanted.values()))
        spec.description = f"Rows of {job.target} held back, with the reason"
        table = wh.client.create_table(spec, exists_ok=True)
    missing = [f for n, f in wanted.items() if n not in {x.name for x in table.schema}]
    if missing:
        table.schema = [*table.schema, *missing]
        table = wh.client.update_table(table, ["schema"])
    types = {f.name: str(f.field_type).partition("(")[0] for f in table.schema}
    target = s.table(wh.ref.dataset, f"{job.target}__quarantine")
    if job.full_refresh:  # rebuilt from history: every row it held back is held back again
        s.lines.append(f"DELETE FROM {target} WHERE TRUE")
    elif scope is None:
        s.lines.append(f"DELETE FROM {target} WHERE `logical_date` = "
                       f"{_lit(job.run_log['logical_date'])}")
    else:
        s.lines.append(f"DELETE FROM {target} WHERE {_in(scope[0], list(scope[1]))} "
                       f"OR `{scope[0]}` IS NULL")
    if rows.height:
        s.insert(target, s.upload("quarantine", rows), rows.columns, types)


def publish_script(wh: BigQueryWarehouse, job: Publish, body: Sequence[str]
                   ) -> tuple[str, list[str]]:
    """The script text and the staging tables it reads (to drop once it committed)."""
    s = _Script(wh, job)
    s.lines += body
    if job.quarantine is not None:
        _quarantine(s, job.quarantine)
    meta_ds = wh.ref.meta
    run_log = pl.DataFrame([{c: job.run_log.get(c) for c in RUN_LOG_COLUMNS}], schema=meta.RUN_LOG)
    s.values(s.table(meta_ds, "run_log"), run_log)
    if job.quality is not None and job.quality.height:
        quality = job.quality.cast(meta.quality_schema())
        s.lines.append(f"DELETE FROM {s.table(meta_ds, 'quality_results')} WHERE `run_id` = "
                       f"{_lit(job.run_log['run_id'])} AND `model` = {_lit(job.target)}")
        s.values(s.table(meta_ds, "quality_results"), quality)
    if job.full_refresh:  # rebuilt as of its logical date: later days are undone
        for table in ("landings", "restatements"):
            s.lines.append(f"DELETE FROM {s.table(meta_ds, table)} WHERE `model` = "
                           f"{_lit(job.target)}")
        s.lines.append(f"DELETE FROM {s.table(meta_ds, 'watermarks')} WHERE `model` = "
                       f"{_lit(job.target)} AND `logical_date` > "
                       f"{_lit(job.run_log['logical_date'])}")
    if job.asof is not None:  # a range's dimension: the states it replaced
        s.lines.append(f"DELETE FROM {s.table(meta_ds, 'asof')} WHERE `dimension` = "
                       f"{_lit(job.target)}")
        if job.asof.height:
            s.values(s.table(meta_ds, "asof"), job.asof)
    if job.landings:
        read = pl.DataFrame([(job.target, src, d, f, job.run_log["run_id"], datetime.now())
                             for src, d, f in job.landings], schema=meta.LANDINGS, orient="row")
        by_source: dict[str, set[date]] = {}
        for src, d, _ in job.landings:
            by_source.setdefault(src, set()).add(d)
        pairs = " OR ".join(f"(`source` = {_lit(src)} AND {_in('landed_day', sorted(days))})"
                            for src, days in sorted(by_source.items()))
        s.lines.append(f"DELETE FROM {s.table(meta_ds, 'landings')} WHERE `model` = "
                       f"{_lit(job.target)} AND ({pairs})")
        s.values(s.table(meta_ds, "landings"), read)
    if job.watermark_dates:
        days = sorted(set(job.watermark_dates))
        marks = pl.DataFrame({
            "model": job.target, "logical_date": days, "run_id": job.run_log["run_id"],
            "fingerprint": job.run_log["fingerprint"],
            "published_at": job.run_log.get("finished_at") or datetime.now()}, schema=meta.WATERMARKS)
        s.lines.append(f"DELETE FROM {s.table(meta_ds, 'watermarks')} WHERE `model` = "
                       f"{_lit(job.target)} AND {_in('logical_date', days)}")
        s.values(s.table(meta_ds, "watermarks"), marks)
    jobs: list[dict[str, Any]] = [
        {"run_id": job.run_log["run_id"], "model": job.target,
         "logical_date": job.run_log["logical_date"], **r} for r in wh.jobs.rows()]
    if jobs:
        s.values(s.table(meta_ds, "jobs"), pl.DataFrame(jobs, schema=meta.JOBS))
    text = "BEGIN TRANSACTION;\n" + ";\n".join(s.lines) + ";\nCOMMIT TRANSACTION;"
    return text, s.staged
