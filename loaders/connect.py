"""Open the warehouse a reference names: a DuckDB file, or ``bigquery://PROJECT/DATASET``.

Apart from ``target.py`` (the interface every engine implements) so that the engines import the
interface and this module imports the engines, with no circle between them.
"""

from __future__ import annotations

from pathlib import Path

from starsmith.loaders.target import Warehouse, is_bigquery


def open_warehouse(ref: str | Path, *, memory_limit: str = "4GB", staging: str = "",
                   job_key: str = "") -> Warehouse:
    """The target a reference names. ``job_key`` names the build run: BigQuery job ids are unique
    per run, and a publish retried after its commit (same run, same key) is not done twice."""
    if is_bigquery(ref):
        from starsmith.loaders.bigquery.warehouse import BigQueryWarehouse

        return BigQueryWarehouse.from_ref(str(ref), job_key=job_key)
    from starsmith.loaders.duckdb import DuckDBWarehouse

    return DuckDBWarehouse(ref, memory_limit=memory_limit,
                           staging_dir=Path(staging) if staging else None, job_key=job_key)
