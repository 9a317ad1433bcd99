"""Resolve a model's inputs for one logical date: landing files or upstream tables, by reference.

A ``Window.DAY`` input is the day's extract (a source) or the day's partition (a partitioned
upstream model); an upstream without partitions, or a ``Window.ALL`` input, is read whole.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from starsmith.contract import Model, Window
from starsmith.loaders.landed import landed_dates
from starsmith.loaders.landing import scan_source
from starsmith.loaders.store import Landing
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.registry import Catalogue


def _partition(cat: Catalogue, name: str) -> str | None:
    return cat.models[name].partition_by if name in cat.models else None


def input_days(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing, day: date,
               *, full_refresh: bool) -> list[date]:
    """The days a run reads: the logical date, or on a full refresh every day up to it."""
    daily = [i for i in model.inputs if i.window is Window.DAY]
    if not daily:
        return []
    if not full_refresh:
        return [day]
    days: set[date] = set()
    for inp in daily:
        if inp.name in cat.sources:  # every landing (reference data: each one it had)
            days.update(landed_dates(landing, cat.sources[inp.name]))
        elif (col := _partition(cat, inp.name)) and wh.exists(inp.name):
            found = wh.query(f'SELECT DISTINCT "{col}" AS d FROM main."{inp.name}"')
            days.update(found["d"].to_list())
    return sorted(d for d in days if d <= day)


def day_inputs(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing, day: date
               ) -> tuple[dict[str, pl.LazyFrame], int]:
    """Each input as a LazyFrame, and how many rows were read."""
    frames: dict[str, pl.LazyFrame] = {}
    read = 0
    for inp in model.inputs:
        if inp.name in cat.sources:
            frame = scan_source(landing, cat.sources[inp.name], day,
                                whole=inp.window is Window.ALL).collect()
        else:
            col = _partition(cat, inp.name)
            if inp.window is Window.DAY and col:
                frame = wh.read(inp.name, f'"{col}" = ?', [day])
            else:
                frame = wh.read(inp.name)
            frame = conform_read(frame, cat.models[inp.name].schema)
        read += frame.height
        frames[inp.name] = frame.lazy()
    return frames, read
