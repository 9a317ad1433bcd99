"""Restatement: a day that changes or lands after later days were built re-derives every model it
affects, from that day on, in order; never a patch on top of what later days built.

What triggers one: a landed day whose files changed since a model read them (a corrected
export, noticed by the fingerprints recorded with each publish), a day that became ready after
later days were built (a late landing), or ``build --date D`` / ``--from D`` of a day older than
the latest built.

How it runs, so that the result equals a clean build of the landing zone as it is now:

1. the per-day models at the root of the affected graph (staging tables partitioned by landing
   day, whose inputs are sources or other such tables) re-run each day from D to the latest
   built day: each run replaces its day's partition;
2. every other affected model (SCD dimensions, facts, merged tables, and whatever reads them)
   is rebuilt from history as of the latest built day: an SCD dimension replays its staged
   records day by day keeping the surrogate keys it issued, a fact rebuilds its partitions.

The cost of step 2 is the affected models' history, not the day's changes: a restatement is
rare, and only the affected models pay it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date

import polars as pl

from starsmith.contract import Strategy
from starsmith.loaders.landed import LandedDay, landed, same_landing
from starsmith.loaders.store import Landing
from starsmith.loaders.target import Warehouse
from starsmith.orchestration.messages import BuildPlan
from starsmith.orchestration.plan import landed_days, make_plan
from starsmith.orchestration.ranges import ranged
from starsmith.registry import Catalogue


@dataclass(frozen=True)
class Restatement:
    """Which models re-derive from which day, and why."""

    start: date
    end: date  # the latest day built for any affected model
    replay: list[str]  # step 1: per-day models re-run from start to end
    rebuild: list[str]  # step 2: rebuilt from history as of end
    why: dict[str, str] = field(default_factory=dict)  # model -> the first reason found

    def explain(self) -> list[str]:
        lines = [f"restating from {self.start} to {self.end}:"]
        lines += [f"  {m}: {why}" for m, why in self.why.items()]
        if self.replay:
            lines.append(f"  re-run day by day: {', '.join(self.replay)}")
        if self.rebuild:
            lines.append(f"  rebuilt from history as of {self.end}: {', '.join(self.rebuild)}")
        return lines


def _changed_landings(cat: Catalogue, models: list[str], wh: Warehouse, root: Landing
                      ) -> dict[str, tuple[date, str]]:
    """Models whose recorded landings differ from the landing zone now: (first day, why)."""
    recorded = wh.landings()
    if not recorded.height:
        return {}
    current: dict[tuple[str, date], LandedDay] = {}
    for source in cat.sources.values():
        for day in landed(root, source):
            if day.complete:
                current[(source.name, day.day)] = day
    chosen = set(models)
    found: dict[str, tuple[date, str]] = {}
    same: dict[tuple[str, date, str], bool] = {}  # models reading one landing: checked once
    for model, source, day, fp in recorded.select(
            "model", "source", "landed_day", "fingerprint").iter_rows():
        now = current.get((source, day))
        if model not in chosen or now is None:
            continue
        if (source, day, fp) not in same:
            same[(source, day, fp)] = same_landing(fp, now)
        if same[(source, day, fp)]:
            continue
        if model not in found or day < found[model][0]:
            found[model] = (day, f"source {source!r}'s extract for {day} changed after it was "
                                 "built (re-landed)")
    return found


def find_restatement(cat: Catalogue, models: list[str], ready: list[date], wh: Warehouse,
                     landing: Landing, *, forced: date | None = None, mark: bool = True
                     ) -> Restatement | None:
    """The restatement a build of ``models`` must run first, or None.

    What is dirty is found over the whole catalogue: a selection that re-runs a staging table
    leaves its dependants marked (``_starsmith.restatements``) until a build rebuilds them, so a
    correction is never lost because only part of the graph was built. ``forced``: the day the
    user asked for with ``--date``; ``mark``: record the marks (a build does; ``plan`` only
    looks).
    """
    marks = wh.watermarks()
    if not marks.height:
        return None
    built: dict[str, set[date]] = {}
    for model, day in marks.select("model", "logical_date").iter_rows():
        built.setdefault(model, set()).add(day)
    everything = list(cat.order)
    dirty = _changed_landings(cat, everything, wh, landing)
    for model, day, why in wh.restatements().select("model", "from_day", "reason").iter_rows():
        if model in cat.models and (model not in dirty or day < dirty[model][0]):
            dirty[model] = (day, why)
    for m in everything:
        if not cat.models[m].inputs or m not in built:
            continue
        last = max(built[m])
        late = [d for d in ready if d < last and d not in built[m]]
        if late and (m not in dirty or late[0] < dirty[m][0]):
            dirty[m] = (late[0], f"{late[0]} became ready after later days were built")
        if forced and m in models and forced < last and (m not in dirty or forced < dirty[m][0]):
            dirty[m] = (forced, f"asked to build {forced}, older than its latest build ({last})")
    if not dirty:
        return None
    start = min(d for d, _ in dirty.values())
    # Every model downstream of a dirty one is affected, built before or not: a model that
    # reads a restated one must never run before it (a new one is built from history).
    affected = [m for m in everything if m in dirty or any(u in dirty for u in _upstream(cat, m))]
    end = max(max(built[m]) for m in affected if m in built)
    replay: list[str] = []
    for m in affected:  # in catalogue order: a model's upstream comes first
        model = cat.models[m]
        roots = all(i.name in cat.sources or i.name in replay for i in model.inputs)
        if model.strategy is Strategy.PARTITION and model.fact is None and roots:
            replay.append(m)
    rebuild = [m for m in affected if m not in replay]
    why = {m: dirty[m][1] for m in affected if m in dirty}
    # Remember what must be rebuilt, in case this build does not get to it (a selection, a
    # failure): cleared by the model's own rebuild (a full-refresh publish).
    if mark:
        wh.mark_restatements(pl.DataFrame(
            {"model": rebuild, "from_day": [start] * len(rebuild),
             "reason": [why.get(m) or f"an upstream model is restated from {start}"
                        for m in rebuild]},
            schema={"model": pl.String(), "from_day": pl.Date(), "reason": pl.String()}))
    chosen = set(models)
    replay, rebuild = [m for m in replay if m in chosen], [m for m in rebuild if m in chosen]
    if not replay and not rebuild:
        return None
    return Restatement(start, end, replay, rebuild,
                       {m: w for m, w in why.items() if m in chosen})


def with_restatement(cat: Catalogue, models: list[str], dates: list[date], wh: Warehouse,
                     landing: Landing, *, forced: date | None = None, full_refresh: bool = False,
                     accept_changes: bool = False, max_parallel: int = 4,
                     mark: bool = True) -> BuildPlan:
    """The build plan, with the restatement it needs first as its phases (run in order, before
    the plan's own days; the workflow and the in-process runner both do)."""
    def plan(names: list[str], days: list[date], refresh: bool = False) -> BuildPlan:
        return make_plan(cat, names, days, full_refresh=refresh, max_parallel=max_parallel,
                         accept_changes=accept_changes)

    if full_refresh:
        return plan(models, dates, True)
    ready = landed_days(cat, list(cat.order), landing)
    found = find_restatement(cat, models, ready, wh, landing, forced=forced, mark=mark)
    if found is None:  # a catch-up of many days: in ranges where they equal the nights
        return ranged(plan(models, dates), cat, models, wh)
    phases = []
    # The models the restatement leaves alone come up to its last day first: a rebuilt model
    # reads them as of that day (they are never downstream of a restated one).
    restated = {*found.replay, *found.rebuild}
    rest = [m for m in models if m not in restated]
    early = [d for d in dates if d <= found.end]
    if rest and early:
        phases.append(plan(rest, early))
    if found.replay:
        days = [d for d in landed_days(cat, found.replay, landing)
                if found.start <= d <= found.end]
        if days:
            phases.append(plan(found.replay, days))
    if found.rebuild:
        phases.append(plan(found.rebuild, [found.end], True))
    main = plan(models, [d for d in dates if d > found.end])
    return replace(main, phases=tuple(phases), notes=tuple(found.explain()))


def _upstream(cat: Catalogue, name: str) -> set[str]:
    """Every model ``name`` reads, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for up in cat.upstream(todo.pop()):
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen
