"""Guards before history changes: a day of a snapshot source that would close much of a
dimension is refused, and absence is not taken as removal when the day's records were not all
usable.

A snapshot closes every live key it lacks, so a truncated export, an export cut to one region or
a run of NULL keys rewrites history silently and with exit 0. Here, before the builder runs:

- a key whose record was held back upstream (a failed rule) is present, not removed: it is not
  closed. If some records had no natural key at all, none of the keys the snapshot lacks is
  closed that day (any of them may be one of those records): they stay as they are, counted as
  ``closes_held`` and logged, and a corrected day closes what really went;
- otherwise, closing more than the source's ``Guard.max_closed`` share of the live keys (and
  more than ``Guard.at_least`` keys) stops the step with the count and a sample of keys, unless
  the build says ``--accept-changes``.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from starsmith.contract import Cadence, Guard, Model, Source
from starsmith.dimensions.spec import INFERRED_BASE
from starsmith.errors import DataError
from starsmith.loaders.target import Warehouse
from starsmith.log import get_logger
from starsmith.registry import Catalogue

log = get_logger(__name__)


def snapshot_sources(model: Model, cat: Catalogue) -> list[Source]:
    """The snapshot sources a model reads, directly or through upstream models."""
    found: list[Source] = []
    todo, seen = [model.name], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for inp in cat.models[name].inputs:
            if inp.name in cat.sources:
                if cat.sources[inp.name].cadence is Cadence.SNAPSHOT:
                    found.append(cat.sources[inp.name])
            elif inp.name in cat.models:
                todo.append(inp.name)
    return found


def _held_upstream(model: Model, cat: Catalogue, wh: Warehouse, day: date, nk: list[str]
                   ) -> tuple[int, pl.DataFrame]:
    """The day's rows the model's upstream models quarantined: how many had no natural key,
    and the keys of the others (present in the source, only held back)."""
    unknown, known = 0, []
    for up in cat.upstream(model.name):
        table = f"{up}__quarantine"
        if not wh.exists(table):
            continue
        rows = wh.query(f'SELECT * FROM main."{table}" WHERE logical_date = ?', [day])
        if not set(nk) <= set(rows.columns):
            unknown += rows.height
            continue
        missing = rows.select(pl.any_horizontal([pl.col(c).is_null() for c in nk]))[:, 0]
        unknown += int(missing.sum())
        known.append(rows.filter(~missing).select(nk))
    keys = pl.concat(known, how="vertical_relaxed").unique() if known else pl.DataFrame()
    return unknown, keys


def _as_records(rows: pl.DataFrame, batch: pl.DataFrame, model: Model) -> pl.DataFrame:
    """Current versions as batch records that change nothing (the builder sees a replay)."""
    spec = model.dimension
    assert spec is not None
    fill = {}
    for col in batch.columns:
        if col in rows.columns:
            fill[col] = pl.col(col)
        elif col == spec.updated_at:
            fill[col] = pl.col("valid_from")
        elif col == spec.deleted_flag:
            fill[col] = pl.lit(False)
        else:
            fill[col] = pl.lit(None)
    return rows.select(**fill).cast(dict(batch.schema))  # type: ignore[arg-type]


def guard_snapshot(model: Model, cat: Catalogue, wh: Warehouse, existing: pl.DataFrame,
                   batch: pl.DataFrame, day: date, *, accept: bool, live_total: int | None = None
                   ) -> tuple[pl.DataFrame, int]:
    """The batch to build (with the lacking keys kept when absence proves nothing), and how many
    closes were held back. Raises DataError on a day beyond the source's guard.

    ``existing`` holds at least the current versions of the keys the snapshot lacks;
    ``live_total`` counts the dimension's own live keys when ``existing`` holds only some
    (a snapshot narrowed to its changes, ``snapshot_diff.py``)."""
    spec = model.dimension
    assert spec is not None
    nk, sk = list(spec.natural_key), spec.surrogate_key
    live = existing.filter(pl.col("is_current") & ~pl.col("is_deleted") & (pl.col(sk) >= 0)
                           & (pl.col(sk) < INFERRED_BASE) & ~pl.col("is_inferred"))
    total = live.height if live_total is None else live_total
    if not total:
        return batch, 0
    gone = live.join(batch.select(nk).drop_nulls().unique(), on=nk, how="anti")
    if not gone.height:
        return batch, 0
    unknown, held = _held_upstream(model, cat, wh, day, nk)
    unknown += batch.filter(pl.any_horizontal([pl.col(c).is_null() for c in nk])).height
    kept = gone if unknown else gone.join(held, on=nk, how="semi") if held.height else gone.clear()
    if kept.height:  # present in the source but unusable: not a removal
        log.warning("%s %s: %d key(s) missing from the snapshot are not closed: %s", model.name,
                    day, kept.height, f"{unknown} record(s) had no key" if unknown
                    else "their records were held back upstream")
        return pl.concat([batch, _as_records(kept, batch, model)]), kept.height
    sources = snapshot_sources(model, cat)
    guards = [s.guard for s in sources] or [Guard()]
    limit = min(g.max_closed for g in guards)
    floor = min(g.at_least for g in guards)
    if gone.height > max(limit * total, floor) and not accept:
        sample = ", ".join(str(r) for r in gone.select(nk).head(5).rows())
        raise DataError(
            f"the {day} snapshot would close {gone.height} of {total} live keys of "
            f"{model.name} ({gone.height / total:.0%}), more than the {limit:.0%} its "
            f"source allows (e.g. {sample})", where=f"model {model.name}, day {day}",
            fix="If the export is incomplete, land it again (the day is then rebuilt); if the "
                "keys really went, build with --accept-changes, or raise the source's "
                "guard=Guard(max_closed=...)")
    return batch, 0
