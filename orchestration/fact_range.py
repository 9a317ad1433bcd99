"""A fact's catch-up range: the partitions its nights rebuilt, each under its night.

A night rebuilds the partitions its landed rows touch and those within the lookback, keyed and
transformed as of that night; a partition's rows in the warehouse are those of the last night
that rebuilt it. A range replays that rule over its landing days (:func:`range_partitions`),
transforms each partition under its night's context (:func:`per_night`), and keys it against its
dimensions as that night left them (``Nights``, orchestration/asof.py). Where the nights' result
hangs on their order (a key in two partitions: each night judged it against what was published
then), the range says so (:class:`NotInOneGo`) and its step builds the nights one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from starsmith.contract import BuildContext, Model
from starsmith.dimensions import dimension_schema
from starsmith.errors import StarsmithError
from starsmith.facts.spec import FactSpec
from starsmith.loaders.target import Warehouse
from starsmith.orchestration.asof import night_log
from starsmith.orchestration.output import run_transform
from starsmith.orchestration.plan import run_id_for
from starsmith.registry import Catalogue


@dataclass(frozen=True)
class Nights:
    """A catch-up range's facts: each partition's night, and the states of the dimensions
    their replays changed after the range's first night (orchestration/asof.py)."""

    of: pl.DataFrame  # _p (partition) -> _night
    logs: dict[str, pl.DataFrame]  # dimension -> its NightLog
    contexts: bool = True  # transform each partition under its night's context (a range's)


def _alike(model: Model, inputs: dict[str, pl.LazyFrame], nights: list[date]
           ) -> list[list[date]]:
    """The nights grouped by the plan the transform makes under each one's context, built on
    empty inputs (~0.06 ms a night): a transform that never reads its context makes one plan,
    and one call over every night's rows gives what a call per night gives. The serialized plan
    holds every literal, a frame built from the context included; a plan that cannot be
    serialized (a Python function) keeps each night apart."""
    # frames of no rows built from the schemas (``clear`` would keep the batch in the plan)
    empty = {name: pl.LazyFrame(schema=frame.collect_schema()) for name, frame in inputs.items()}
    groups: dict[bytes, list[date]] = {}
    for night in nights:
        try:
            plan = model.transform(empty, BuildContext(night, run_id_for(night))).serialize()
        except Exception:  # a plan Polars cannot serialize: each night on its own
            return [[n] for n in nights]
        groups.setdefault(plan, []).append(night)
    return list(groups.values())


def per_night(model: Model, fs: FactSpec, event: str, inputs: dict[str, pl.LazyFrame],
              day: date, run_id: str, asof: pl.DataFrame | None) -> pl.DataFrame:
    """The transform's rows; in a range, each partition's under the context of its night (the
    last night that rebuilt it), all in one engine call."""
    rows = inputs[event].collect() if asof is not None else None
    if asof is None or rows is None or not rows.height:
        return run_transform(model, inputs, BuildContext(day, run_id))
    rows = rows.join(asof, left_on=fs.event_date, right_on="_p", how="left")
    groups = _alike(model, inputs, rows["_night"].unique().sort().to_list())
    parts = [(group[0], rows.filter(pl.col("_night").is_in(group)).drop("_night"))
             for group in groups] if len(groups) > 1 else [(groups[0][0], rows.drop("_night"))]
    try:
        outs = pl.collect_all([model.transform({**inputs, event: part.lazy()},
                                               BuildContext(night, run_id_for(night)))
                               for night, part in parts])
    except Exception:  # one night at a time, for the error its night would give
        outs = [run_transform(model, {**inputs, event: part.lazy()},
                              BuildContext(night, run_id_for(night)))
                for night, part in parts]
    # one chunk: keys set beside multi-chunk string views made Polars 2.1 panic in a filter
    return pl.concat(outs, how="vertical_relaxed", rechunk=True) if outs else run_transform(
        model, inputs, BuildContext(day, run_id))


class NotInOneGo(StarsmithError):
    """A range's fact cannot be rebuilt in one go as its nights built it: built night by night."""


def range_partitions(wh: Warehouse, model: Model, fs: FactSpec, table: str, load: str,
                      span: list[date]) -> tuple[pl.DataFrame, int, list[int]]:
    """Each partition the range's nights rebuild, with the last of those nights (``_p``,
    ``_night``): the nights' own rule (:func:`_partitions`), replayed over the range's landing
    days; how many rows landed older than the lookback; and about how many rows each partition
    holds, in the frame's order (its rows landed in the range or within the lookback before
    it: what sizes the rebuild's batches)."""
    first, last = span[0], span[-1]
    lookback = max(fs.lookback_days, 1) - 1
    event = fs.event_date
    pairs = wh.query(f'SELECT "{event}" AS p, "{load}" AS l, count(*) AS n FROM main."{table}" '
                     f'WHERE "{load}" <= ? AND ("{load}" >= ? OR "{event}" >= ?) '
                     f'AND "{event}" IS NOT NULL GROUP BY ALL', [last, first,
                                                              first - timedelta(days=lookback)])
    nights: dict[date, date] = {}
    late = 0
    landed: dict[date, date] = {}  # partition -> its first landing day
    rows: dict[date, int] = {}
    for p, landed_on, n in pairs.iter_rows():
        landed[p] = min(landed.get(p, landed_on), landed_on)
        rows[p] = rows.get(p, 0) + n
        if first <= landed_on:  # touched by that night
            nights[p] = max(nights.get(p, landed_on), landed_on)
            if p < landed_on - timedelta(days=lookback):
                late += n
    for p, since in landed.items():  # in the lookback window of the nights after it landed
        end = min(p + timedelta(days=lookback), last)
        if end >= max(first, since, p):
            nights[p] = max(nights.get(p, end), end)
    frame = pl.DataFrame({"_p": list(nights), "_night": list(nights.values())},
                         schema={"_p": pl.Date(), "_night": pl.Date()}).sort("_p")
    columns = set(wh.query(f'SELECT * FROM main."{table}" LIMIT 0').columns)
    for key in {tuple(k) for k in (model.unique_key, fs.grain) if k}:
        key = tuple(c for c in key if c != model.partition_by)
        if not set(key) <= columns:
            raise NotInOneGo(f"{model.name}: its key ({', '.join(key)}) is made by its transform")
        # a key in two partitions: each night judged it against what was published then
        cols = ", ".join(f'p."{c}"' for c in key)
        split = wh.query(f'SELECT 1 AS x FROM main."{table}" p SEMI JOIN _parts d ON p."{event}"'
                         f' = d._p WHERE p."{load}" <= ? GROUP BY {cols} '
                         f'HAVING count(DISTINCT p."{event}") > 1 LIMIT 1', [last],
                         _parts=frame.select("_p"))
        if split.height:
            raise NotInOneGo(f"{model.name}: a key ({', '.join(key)}) is in two partitions")
    return frame, late, [rows.get(p, 0) for p in frame["_p"].to_list()]


def night_logs(wh: Warehouse, cat: Catalogue, fs: FactSpec, first: date, last: date
               ) -> dict[str, pl.DataFrame]:
    """The states the looked-up dimensions' range replays logged that cover the nights
    ``first``..``last``, by dimension (orchestration/asof.py)."""
    logs: dict[str, pl.DataFrame] = {}
    for lk in fs.lookups:
        spec = lk.dimension
        states = night_log(wh, spec, dimension_schema(spec, cat.models[spec.name].schema),
                           first, last)
        if states is not None:
            logs[spec.name] = states
    return logs
