"""The run metadata kept in BigQuery, and Polars frames turned into BigQuery loads.

Three datasets per target: ``<dataset>`` holds the star (what analysts query) and each model's
``<model>__quarantine``; ``<dataset>_staging`` holds staged tables, which expire on their own
(the dataset's default expiration) even if a run dies; ``<dataset>_starsmith`` holds the run log,
watermarks, quality results and ``jobs``: one row per BigQuery job with its bytes processed and
billed and its slot time, so the cost of every model and night can be summed.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from starsmith.loaders.bigquery.tables import bigquery_type
from starsmith.loaders.target import ASOF_SCHEMA

ROW = "_starsmith_row"  # the staged row's position: BigQuery tables have no order of their own

RUN_LOG = pl.Schema({
    "run_id": pl.String(), "model": pl.String(), "logical_date": pl.Date(),
    "strategy": pl.String(), "status": pl.String(), "rows_read": pl.Int64(),
    "rows_written": pl.Int64(), "rows_inserted": pl.Int64(), "rows_updated": pl.Int64(),
    "rows_closed": pl.Int64(), "rows_quarantined": pl.Int64(), "started_at": pl.Datetime("us"),
    "finished_at": pl.Datetime("us"), "duration_s": pl.Float64(), "fingerprint": pl.String(),
    "message": pl.String(), "details": pl.String(),
})
WATERMARKS = pl.Schema({
    "model": pl.String(), "logical_date": pl.Date(), "run_id": pl.String(),
    "fingerprint": pl.String(), "published_at": pl.Datetime("us"),
})
LANDINGS = pl.Schema({
    "model": pl.String(), "source": pl.String(), "landed_day": pl.Date(),
    "fingerprint": pl.String(), "run_id": pl.String(), "recorded_at": pl.Datetime("us"),
})
RESTATEMENTS = pl.Schema({
    "model": pl.String(), "from_day": pl.Date(), "reason": pl.String(),
    "recorded_at": pl.Datetime("us"),
})
JOBS = pl.Schema({
    "run_id": pl.String(), "model": pl.String(), "logical_date": pl.Date(),
    "job_id": pl.String(), "kind": pl.String(), "bytes_processed": pl.Int64(),
    "bytes_billed": pl.Int64(), "slot_ms": pl.Int64(), "reused": pl.Boolean(),
})


def quality_schema() -> pl.Schema:
    from starsmith.quality.gate import RESULT_SCHEMA

    return RESULT_SCHEMA


def meta_tables() -> dict[str, pl.Schema]:
    return {"run_log": RUN_LOG, "watermarks": WATERMARKS, "jobs": JOBS, "landings": LANDINGS,
            "restatements": RESTATEMENTS, "asof": ASOF_SCHEMA,
            "quality_results": quality_schema()}


def portable(frame: pl.DataFrame) -> pl.DataFrame:
    """Types every BigQuery load accepts: unsigned to Int64, categories and nulls to strings."""
    casts: dict[str, pl.DataType] = {}
    for name, dtype in frame.schema.items():
        if dtype.is_unsigned_integer():
            casts[name] = pl.Int64()
        elif isinstance(dtype, (pl.Categorical, pl.Enum, pl.Null, pl.Object)):
            casts[name] = pl.String()
    return frame.cast(casts) if casts else frame  # type: ignore[arg-type]


def fields(schema: pl.Schema) -> list[Any]:
    from google.cloud import bigquery

    out = []
    for name, dtype in schema.items():
        kind, mode = bigquery_type(dtype, name)
        base, _, params = kind.partition("(")
        if params:
            precision, scale = (int(x) for x in params.rstrip(")").split(","))
            out.append(bigquery.SchemaField(name, base, mode=mode, precision=precision,
                                            scale=scale))
        else:
            out.append(bigquery.SchemaField(name, base, mode=mode))
    return out


def parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()
