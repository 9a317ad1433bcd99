"""What a build would scan on BigQuery, from dry runs (free, and nothing runs).

Each step reads its upstream tables (a day's partition when the input is daily and the table is
partitioned, else the whole table) and its publish scans the target (DELETE/INSERT or MERGE).
Landing files are loaded into staging, which BigQuery does not bill as a scan.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from starsmith.contract import Model, Window
from starsmith.registry import Catalogue

if TYPE_CHECKING:
    from starsmith.loaders.bigquery.warehouse import BigQueryWarehouse


def estimate_bytes(wh: BigQueryWarehouse, cat: Catalogue, model: Model, dates: list[date]) -> int:
    total = 0
    for inp in model.inputs:
        if inp.name in cat.sources or not wh.exists(inp.name):
            continue
        col = cat.models[inp.name].partition_by
        if inp.window is Window.DAY and col:
            days = ", ".join(f"DATE '{d.isoformat()}'" for d in dates)
            total += wh.dry_run(f'SELECT * FROM main."{inp.name}" WHERE "{col}" IN ({days})')
        else:
            total += wh.dry_run(f'SELECT * FROM main."{inp.name}"') * len(dates)
    if wh.exists(model.name):
        total += wh.dry_run(f'SELECT * FROM main."{model.name}"') * len(dates)
    return total
