"""Resolve a model's inputs for one logical date: landing files or upstream tables, by reference.

A ``Window.DAY`` input is the day's extract (a source) or the day's partition (a partitioned
upstream model); an upstream without partitions, or a ``Window.ALL`` input, is read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import polars as pl

from starsmith.contract import Model, Window
from starsmith.loaders.landed import LandedDay, landed_dates
from starsmith.loaders.landing import scan_source
from starsmith.loaders.landing_days import listing, read_days
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


def many_day_inputs(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing,
                    days: list[date], chunk: int
                    ) -> Iterator[list[tuple[date, dict[str, pl.LazyFrame], int]]]:
    """Each day's inputs, as :func:`day_inputs` gives them, for many days (a full refresh), in
    chunks of ``chunk`` days held in memory at once: a daily source's landings are listed once
    and read a chunk in one pass (loaders/landing_days.py), a partitioned upstream's partitions a
    chunk in one query, then split by day; an upstream read whole is read once. An input that
    cannot be shared (a ``Window.ALL`` source grows with the day) is read per day."""
    listed = {inp.name: listing(landing, cat.sources[inp.name]) for inp in model.inputs
              if inp.name in cat.sources and inp.window is Window.DAY}
    whole: dict[str, pl.DataFrame] = {}
    for inp in model.inputs:
        col = _partition(cat, inp.name)
        if inp.name in cat.models and not (inp.window is Window.DAY and col):
            whole[inp.name] = conform_read(wh.read(inp.name), cat.models[inp.name].schema)
    for start in range(0, len(days), chunk):
        some = days[start:start + chunk]
        shared = _shared_reads(model, cat, wh, landing, some, listed)
        out = []
        for d in some:
            frames: dict[str, pl.LazyFrame] = {}
            read = 0
            for inp in model.inputs:
                if inp.name in shared:
                    frame = shared[inp.name][d]
                elif inp.name in whole:
                    frame = whole[inp.name]
                else:  # a source read as the day-by-day build reads it
                    frame = scan_source(landing, cat.sources[inp.name], d,
                                        whole=inp.window is Window.ALL).collect()
                read += frame.height
                frames[inp.name] = frame.lazy()
            out.append((d, frames, read))
        yield out


def _shared_reads(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing,
                  days: list[date], listed: dict[str, dict[date, LandedDay] | None]
                  ) -> dict[str, dict[date, pl.DataFrame]]:
    """The inputs of ``days`` read in one pass each, by input and day."""
    shared: dict[str, dict[date, pl.DataFrame]] = {}
    for inp in model.inputs:
        if inp.name in listed:
            found = read_days(landing, cat.sources[inp.name], days, listed[inp.name])
            if found is not None:
                shared[inp.name] = found
            continue
        col = _partition(cat, inp.name)
        if inp.name in cat.models and inp.window is Window.DAY and col:
            rows = conform_read(wh.read(inp.name, f'"{col}" IN (SELECT d FROM _days)',
                                        _days=pl.DataFrame({"d": days}, schema={"d": pl.Date()})),
                                cat.models[inp.name].schema)
            parts = rows.partition_by(col, as_dict=True, maintain_order=True)
            empty = rows.clear()
            shared[inp.name] = {d: parts.get((d,), empty) for d in days}
    return shared
