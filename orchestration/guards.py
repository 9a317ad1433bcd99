"""Guards before history changes: a day of a snapshot source that would close much of a
dimension is refused, and absence is not taken as removal when the day's records were not all
usable.

A snapshot closes every live key it lacks, so a truncated export, an export cut to one region or
a run of NULL keys rewrites history silently and with exit 0. Here, before the builder runs:

- if some of the day's records were held back upstream (a NULL key, a failed rule) or have a
  NULL key here, the keys the snapshot lacks are not closed that day: those records may be them.
  They stay as they are, are counted as ``closes_held`` and logged; a corrected day closes them;
- otherwise, closing more than the source's ``Guard.max_closed`` share of the live keys stops
  the step with the count and a sample of keys, unless the build says ``--accept-changes``.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from starsmith.contract import Cadence, Guard, Model, Source
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


def _held_upstream(model: Model, cat: Catalogue, wh: Warehouse, day: date) -> int:
    """Rows of the day the model's upstream models quarantined."""
    held = 0
    for up in cat.upstream(model.name):
        table = f"{up}__quarantine"
        if wh.exists(table):
            held += int(wh.query(f'SELECT count(*) AS n FROM main."{table}" WHERE logical_date = ?',
                                 [day])["n"][0])
    return held


def guard_snapshot(model: Model, cat: Catalogue, wh: Warehouse, existing: pl.DataFrame,
                   batch: pl.DataFrame, day: date, *, accept: bool) -> tuple[pl.DataFrame, int]:
    """The batch to build (with the lacking keys kept when absence proves nothing), and how many
    closes were held back. Raises DataError on a day beyond the source's guard."""
    spec = model.dimension
    assert spec is not None
    nk, sk = list(spec.natural_key), spec.surrogate_key
    live = existing.filter(pl.col("is_current") & ~pl.col("is_deleted") & (pl.col(sk) >= 0))
    if not live.height:
        return batch, 0
    gone = live.join(batch.select(nk).drop_nulls().unique(), on=nk, how="anti")
    if not gone.height:
        return batch, 0
    unusable = _held_upstream(model, cat, wh, day) + batch.filter(
        pl.any_horizontal([pl.col(c).is_null() for c in nk])).height
    if unusable:
        keep = set(batch.columns) <= {*nk, *spec.attributes}
        if not keep:
            raise DataError(
                f"{unusable} record(s) of the {day} snapshot were unusable (NULL key or held back)"
                f" and {gone.height} live key(s) are missing from it: they cannot be told apart",
                where=f"model {model.name}", fix="Fix the export and land the day again")
        log.warning("%s %s: %d record(s) unusable (NULL key or held back upstream), so the %d "
                    "key(s) missing from the snapshot are not closed", model.name, day,
                    unusable, gone.height)
        kept = gone.select(batch.columns).cast(dict(batch.schema))  # type: ignore[arg-type]
        return pl.concat([batch, kept]), gone.height
    sources = snapshot_sources(model, cat)
    limit = min((s.guard.max_closed for s in sources), default=Guard().max_closed)
    if gone.height > limit * live.height and not accept:
        sample = ", ".join(str(r) for r in gone.select(nk).head(5).rows())
        raise DataError(
            f"the {day} snapshot would close {gone.height} of {live.height} live keys of "
            f"{model.name} ({gone.height / live.height:.0%}), more than the {limit:.0%} its "
            f"source allows (e.g. {sample})", where=f"model {model.name}, day {day}",
            fix="If the export is incomplete, land it again (the day is then rebuilt); if the "
                "keys really went, build with --accept-changes, or raise the source's "
                "guard=Guard(max_closed=...)")
    return batch, 0
