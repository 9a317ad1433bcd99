"""The SCD step: fetch only the touched keys' versions, run the builder, hand back the changes.

The warehouse returns every version of the keys the batch touches (a semi-join inside DuckDB),
plus the largest surrogate key. The builder returns every version of every changed key and checks
the invariants on them. The publish writes only the new versions and the stored ones whose values
changed, replacing those surrogate keys' rows, so a change to a key with a long history costs the
rows it changes. A snapshot source also needs the current keys, to see which are gone. A full
refresh replays every landed day, in order, from an empty dimension.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
from sqlglot import exp

from starsmith.contract import BuildContext, Model
from starsmith.dimensions import DimensionSpec, SCDFrames, dimension_schema, reserved_members, scd_changes
from starsmith.loaders import sql
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.orchestration.inputs import day_inputs, input_days
from starsmith.orchestration.output import StepOutput, run_transform
from starsmith.registry import Catalogue

COUNTS = {"inserted": "rows_inserted", "updated": "rows_updated", "closed": "rows_closed"}


def _existing(wh: Warehouse, model: Model, spec: DimensionSpec, batch: pl.DataFrame,
              schema: pl.Schema) -> tuple[pl.DataFrame, int]:
    if not wh.exists(model.name):
        return pl.DataFrame(schema=schema), 0
    if spec.snapshot:
        rows = wh.read(model.name)
    else:
        rows = wh.read_keys(model.name, batch.select(spec.natural_key).unique())
    return (conform_read(rows.select(schema.names()), schema),
            wh.max_value(model.name, spec.surrogate_key))


def build_scd(model: Model, cat: Catalogue, wh: Warehouse, landing: Path, day: date,
              run_id: str, *, full_refresh: bool) -> StepOutput:
    spec = model.dimension
    assert spec is not None
    schema = dimension_schema(spec, model.schema)
    reserved = reserved_members(spec, schema).collect()
    days = input_days(model, cat, wh, landing, day, full_refresh=full_refresh)
    totals: dict[str, int] = {}
    rejects: list[pl.DataFrame] = []
    read = 0
    dim = reserved if full_refresh else None
    changed = pl.DataFrame(schema=schema)
    for d in days:
        inputs, n = day_inputs(model, cat, wh, landing, d)
        read += n
        batch = run_transform(model, inputs, BuildContext(d, run_id))
        if dim is None:
            existing, max_key = _existing(wh, model, spec, batch, schema)
        else:
            existing, max_key = dim, max(0, int(dim[spec.surrogate_key].max() or 0))  # type: ignore[arg-type]
        frames: SCDFrames = scd_changes(
            existing.lazy(), batch.lazy(), spec, batch_time=BuildContext(d, run_id).batch_time,
            run_id=run_id, max_key=max_key, narrowed=dim is None and not spec.snapshot,
        ).collect()
        for k, v in frames.stats.items():
            totals[k] = totals.get(k, 0) + v
        rejects.append(frames.rejects.with_columns(logical_date=pl.lit(d)))
        if dim is None:
            changed = frames.changes()
        else:
            dim = frames.apply(dim, spec.surrogate_key)
    if dim is not None:
        rows = dim.sort(spec.surrogate_key)  # replayed day by day: put in key order once
    elif wh.exists(model.name):
        rows = changed
    else:  # the first publish creates the table with its reserved members
        rows = pl.concat([reserved, changed])
    counts = {COUNTS.get(k, k): v for k, v in totals.items() if k != "rejected"}

    def statements(target: str, staged: str) -> list[exp.Expr]:
        qualified = f"main.{target}"
        if full_refresh:
            return sql.replace_all(qualified, staged)
        return [sql.create_like(qualified, staged),
                *sql.replace_keys(qualified, staged, (spec.surrogate_key,), schema.names())]

    quarantine = (pl.concat(rejects, how="diagonal_relaxed") if rejects
                  else pl.DataFrame({"reason": []}, schema={"reason": pl.String()}))
    # In (natural key, valid_from) order, as the builder left them: deterministic, so a re-run
    # stages the same file.
    return StepOutput(rows, quarantine, statements, read, counts, days)
