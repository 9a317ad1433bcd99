"""Late records in a change feed: placed in the key's history with every record already seen.

A change feed dates each record (``updated_at``). A record that arrives after a later record of
its key was built (a CRM export a day late) is not a change on top of the latest version: the
key's versions from that instant on are what *all* its records say. Comparing it with the latest
version alone gets it wrong: records at 01:04 (address A), 21:20 (email only) and, a day late,
19:01 (address B) would leave B current, while the 21:20 record says A.

So, for a dimension with ``LatePolicy.PLACE`` (the default) whose input is a model partitioned
by landing day (its staged record history), a nightly step finds the batch's keys that have a
record dated before its landing day and no later than one already staged, and re-derives those
keys' versions from their whole staged history in one pass of the builder. Versions that did
not move keep their surrogate keys and run ids; the others get new ones. Keys with only fresh
records take the usual path.
The cost grows with the late keys' history, never with the dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from starsmith.contract import BuildContext, Model, Window
from starsmith.dimensions import DimensionSpec, reserved_members, scd_changes
from starsmith.dimensions.scd import reject_columns
from starsmith.dimensions.spec import INFERRED_BASE, ChangeDetection, LatePolicy
from starsmith.loaders import sql
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.orchestration.output import run_transform
from starsmith.registry import Catalogue

TS = pl.Datetime("us")


def history_input(model: Model, cat: Catalogue) -> tuple[str, str] | None:
    """(upstream model, its landing-day column) when late records can be placed, else None."""
    spec = model.dimension
    if (spec is None or spec.late_changes is not LatePolicy.PLACE or spec.snapshot
            or spec.detection is not ChangeDetection.TIMESTAMP or len(model.inputs) != 1):
        return None
    inp = model.inputs[0]
    up = cat.models.get(inp.name)
    if up is None or inp.window is not Window.DAY or not up.partition_by:
        return None
    if not set(spec.natural_key) <= set(up.schema.names()):
        return None
    return up.name, up.partition_by


@dataclass(frozen=True)
class Placed:
    """The late keys' re-derived versions, and what the normal path still has to build."""

    keys: pl.DataFrame  # natural keys whose versions were re-derived (delete theirs first)
    rows: pl.DataFrame  # every version of those keys
    rest: pl.DataFrame  # the batch's records of the other keys
    rejects: pl.DataFrame
    issued: int  # the largest own key issued after this


def _prior(model: Model, wh: Warehouse, up: str, col: str, keys: pl.DataFrame, day: date,
           run_id: str) -> pl.DataFrame:
    """The staged records of ``keys`` landed before ``day``, as the transform makes them."""
    found = wh.query(f'SELECT u.* FROM main."{up}" u WHERE {sql.keys_in("u", "_k", keys.columns)}'
                     f' AND u."{col}" < ? ORDER BY u."{col}"', [day], _k=keys)
    if not found.height:
        return found
    return run_transform(model, {up: found.lazy()}, BuildContext(day, run_id))


def place_late(model: Model, cat: Catalogue, wh: Warehouse, existing: pl.DataFrame,
               batch: pl.DataFrame, day: date, run_id: str, max_key: int) -> Placed | None:
    """Re-derive the versions of the batch's late keys; None when no key is late."""
    found = history_input(model, cat)
    spec = model.dimension
    if found is None or spec is None or not batch.height or not wh.exists(found[0]):
        return None
    up, col = found
    nk, ts = list(spec.natural_key), spec.updated_at
    assert ts is not None
    # Only a record dated before its own landing day can be older than one landed earlier
    # (exporters date a day's changes that day): the history of those keys alone is read, so
    # a night without late records reads none.
    start = BuildContext(day, run_id).batch_time
    touched = batch.filter(pl.col(ts).cast(TS) < start).select(nk).drop_nulls().unique()
    if not touched.height:
        return None
    prior = _prior(model, wh, up, col, touched, day, run_id)
    if not prior.height:
        return None
    last = prior.group_by(nk).agg(_last=pl.col(ts).cast(TS).max())
    first = batch.drop_nulls(nk).group_by(nk).agg(_first=pl.col(ts).cast(TS).min())
    late = first.join(last, on=nk).filter(pl.col("_first") <= pl.col("_last")).select(nk)
    if not late.height:
        return None
    late = conform_read(late, batch.select(nk).schema)
    records = pl.concat([prior.join(late, on=nk, how="semi"), batch.join(late, on=nk, how="semi")],
                        how="vertical_relaxed")
    return _rederive(spec, existing, records, batch, late, day, run_id, max_key)


def _rederive(spec: DimensionSpec, existing: pl.DataFrame, records: pl.DataFrame,
              batch: pl.DataFrame, late: pl.DataFrame, day: date, run_id: str, max_key: int
              ) -> Placed:
    nk, sk = list(spec.natural_key), spec.surrogate_key
    stored = existing.join(late, on=nk, how="semi")
    schema = existing.schema
    placeholders = stored.filter(pl.col(sk) >= INFERRED_BASE).sort("valid_from").unique(
        subset=nk, keep="first")
    if placeholders.height:  # back to the placeholder the facts made: completed again below
        placeholders = placeholders.with_columns(
            *[pl.lit(None, dtype=schema[c]).alias(c) for c in spec.attributes],
            is_inferred=pl.lit(True))
    base = pl.concat([reserved_members(spec, schema).collect(), placeholders])
    out = scd_changes(base.lazy(), records.lazy(), spec,
                      batch_time=BuildContext(day, run_id).batch_time, run_id=run_id,
                      max_key=max_key, narrowed=True).collect()
    rows = out.rows.filter(pl.col(sk) >= 0)
    # Versions that did not move keep their key; the rest are numbered after every key issued.
    known = stored.select(*nk, "valid_from", _old=pl.col(sk))
    rows = rows.join(known, on=[*nk, "valid_from"], how="left", maintain_order="left")
    fresh = rows["_old"].is_null() & (rows[sk] < INFERRED_BASE)
    rows = rows.with_columns(
        pl.when(fresh).then(max_key + fresh.cast(pl.Int64).cum_sum())
        .otherwise(pl.coalesce("_old", sk)).alias(sk)).drop("_old")
    # A row written exactly as stored keeps the run that wrote it.
    same = [c for c in rows.columns if c != "run_id"]
    kept = stored.select(*same, _run="run_id")
    rows = rows.join(kept, on=same, how="left", nulls_equal=True, maintain_order="left"
                     ).with_columns(run_id=pl.coalesce("_run", "run_id")).drop("_run")
    # Only today's records are held back today: earlier ones were, on their own day.
    ts = spec.updated_at
    assert ts is not None
    rejects = out.rejects
    if rejects.height:
        today = batch.select(*nk, pl.col(ts).cast(TS).alias("_ts")).unique()
        rejects = rejects.join(today, left_on=[*nk, reject_columns(spec)[0]],
                               right_on=[*nk, "_ts"], how="semi")
    return Placed(late, rows.select(existing.columns).sort(sk),
                  batch.join(late, on=nk, how="anti"), rejects,
                  max_key + int(fresh.sum()))
