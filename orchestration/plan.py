"""The build plan: which models run, in which order, for which logical dates, with which strategy.

The plan is plain data (names, dates, edges), so the in-process runner and the Temporal workflow
schedule from the same thing: a model starts as soon as its inputs are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from starsmith.contract import Window
from starsmith.loaders.landed import LandedDay, landed
from starsmith.loaders.store import Landing
from starsmith.loaders.target import Warehouse
from starsmith.orchestration.messages import BuildPlan, PlannedModel
from starsmith.registry import Catalogue


def run_id_for(day: date | str) -> str:
    """Deterministic per logical date, so a re-run writes byte-identical rows."""
    return f"build-{day if isinstance(day, str) else day.isoformat()}"


def needed_sources(cat: Catalogue, models: list[str]) -> tuple[set[str], set[str]]:
    """The sources the selected models read, through any chain of upstream models: those that
    must land on a day for it to build (daily cadences, read by day), and the others (reference
    data, or sources read whole), which need only some landing on or before the day."""
    daily: set[str] = set()
    other: set[str] = set()
    todo = list(models)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for inp in cat.models[name].inputs:
            if inp.name in cat.sources:
                must = inp.window is Window.DAY and cat.sources[inp.name].cadence.daily
                (daily if must else other).add(inp.name)
            elif inp.name in cat.models:
                todo.append(inp.name)
    return daily, other - daily


def explain(held: dict[date, str], limit: int = 5) -> list[str]:
    """One line per held-back day (the first few), saying what it waits for."""
    lines = [f"{d} waits: {why}" for d, why in sorted(held.items())[:limit]]
    if len(held) > limit:
        lines.append(f"... and {len(held) - limit} more day(s) after them")
    return lines


@dataclass(frozen=True)
class Readiness:
    """Which landed days can be built, and which are held back by what."""

    ready: list[date]
    held: dict[date, str] = field(default_factory=dict)  # day -> why it waits

    def explain(self, limit: int = 5) -> list[str]:
        return explain(self.held, limit)


Listing = dict[str, list[LandedDay]]  # source -> every day folder, complete or not


def list_sources(cat: Catalogue, models: list[str], landing: Landing) -> Listing:
    """Every source the models need, listed once: what :func:`readiness` judges. A caller with
    several questions about one landing (the whole catalogue's ready days, then one model's)
    passes the same listing to each, so that they agree and the days are not listed again."""
    daily, other = needed_sources(cat, models)
    return {s: landed(landing, cat.sources[s]) for s in sorted(daily | other)}


def readiness(cat: Catalogue, models: list[str], landing: Landing,
              listing: Listing | None = None) -> Readiness:
    """Days on which every daily source the models need has landed, and every reference source
    has landed on or before. A day that is not ready holds back every later day too, naming the
    source: SCD history is built in order, so a gap is waited for, never skipped. ``listing``:
    the sources as :func:`list_sources` found them (listed now when not given)."""
    daily, other = needed_sources(cat, models)
    if listing is None or not (daily | other) <= listing.keys():
        listing = list_sources(cat, models, landing)
    complete = {s: [d.day for d in listing[s] if d.complete] for s in daily | other}
    partial = {s: {d.day: d.problem for d in listing[s] if not d.complete} for s in daily}
    seen = set().union(*(complete[s] for s in daily), *(partial[s] for s in daily)) if daily \
        else set().union(*(complete[s] for s in other)) if other else set()
    # Every day from the first landing to the last: a day no daily source landed is a gap
    candidates = date_range(min(seen), max(seen)) if seen else []
    ready: list[date] = []
    held: dict[date, str] = {}
    blocker = ""
    landed_on = {s: set(complete[s]) for s in daily}
    for day in candidates:
        missing = [f"source {cat.sources[s].name!r}'s extract is not complete: {partial[s][day]}"
                   if day in partial[s] else f"source {cat.sources[s].name!r} "
                   f"({cat.sources[s].cadence.value}) has not landed that day"
                   for s in sorted(daily) if day not in landed_on[s]]
        missing += [f"reference source {cat.sources[s].name!r} has not landed on or before it"
                    for s in sorted(other) if not complete[s] or complete[s][0] > day]
        if blocker:
            held[day] = blocker
        elif missing:
            held[day] = "; ".join(missing)
            blocker = f"an earlier day ({day}) is not ready"
        else:
            ready.append(day)
    return Readiness(ready, held)


def landed_days(cat: Catalogue, models: list[str], landing: Landing,
                listing: Listing | None = None) -> list[date]:
    """Days that can be built: see :func:`readiness`."""
    return readiness(cat, models, landing, listing).ready


@dataclass(frozen=True)
class Pending:
    days: list[date]
    held: dict[date, str] = field(default_factory=dict)
    landed: int = 0  # days ready to build, built or not

    def explain(self, limit: int = 5) -> list[str]:
        return explain(self.held, limit)


def pending_dates(cat: Catalogue, models: list[str], landing: Landing, wh: Warehouse) -> Pending:
    """Every ready day not yet built for every model, and the days held back."""
    ready = readiness(cat, models, landing)
    common = set(ready.ready)
    built = wh.watermarks() if common else None
    incremental = [m for m in models if cat.models[m].inputs]
    done: set[date] = set()
    if built is not None and built.height:
        pairs = {(m, d) for m, d in built.select("model", "logical_date").iter_rows()}
        done = {d for d in common if all((m, d) in pairs for m in incremental)}
    return Pending(sorted(common - done), ready.held, len(common))


def date_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def make_plan(cat: Catalogue, selected: list[str], dates: list[date], *,
              full_refresh: bool = False, max_parallel: int = 4,
              accept_changes: bool = False) -> BuildPlan:
    chosen = set(selected)
    models = tuple(
        PlannedModel(name, cat.models[name].strategy.value, cat.models[name].kind.value,
                     tuple(u for u in cat.upstream(name) if u in chosen))
        for name in selected
    )
    iso = tuple(d.isoformat() for d in dates)
    return BuildPlan(iso, models, full_refresh, max_parallel, {d: run_id_for(d) for d in iso},
                     accept_changes)
