"""The build plan: which models run, in which order, for which logical dates, with which strategy.

The plan is plain data (names, dates, edges), so the in-process runner and the Temporal workflow
schedule from the same thing: a model starts as soon as its inputs are built.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from loaders.landing import landed_dates
from loaders.target import Warehouse
from models.contract import Window
from models.registry import Catalogue
from orchestration.messages import BuildPlan, PlannedModel


def run_id_for(day: date | str) -> str:
    """Deterministic per logical date, so a re-run writes byte-identical rows."""
    return f"build-{day if isinstance(day, str) else day.isoformat()}"


def daily_sources(cat: Catalogue, models: list[str]) -> set[str]:
    """The sources the selected models read day by day, through any chain of upstream models."""
    wanted: set[str] = set()
    todo = list(models)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for inp in cat.models[name].inputs:
            if inp.name in cat.sources and inp.window is Window.DAY:
                wanted.add(inp.name)
            elif inp.name in cat.models:
                todo.append(inp.name)
    return wanted


def landed_days(cat: Catalogue, models: list[str], landing: Path) -> list[date]:
    """Days on which every source the models need (through any chain) has landed."""
    sources = daily_sources(cat, models)
    if not sources:
        return []
    return sorted(set.intersection(*(set(landed_dates(landing, cat.sources[s]))
                                     for s in sources)))


def pending_dates(cat: Catalogue, models: list[str], landing: Path, wh: Warehouse
                  ) -> list[date]:
    """Every landed day (on which all needed sources landed) not yet built for every model."""
    common = set(landed_days(cat, models, landing))
    if not common:
        return []
    built = wh.watermarks()
    incremental = [m for m in models if cat.models[m].inputs]
    done = {d for d in common if all(
        not built.filter((built["model"] == m) & (built["logical_date"] == d)).is_empty()
        for m in incremental)} if built.height else set()
    return sorted(common - done)


def date_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def make_plan(cat: Catalogue, selected: list[str], dates: list[date], *,
              full_refresh: bool = False, max_parallel: int = 4) -> BuildPlan:
    chosen = set(selected)
    models = tuple(
        PlannedModel(name, cat.models[name].strategy.value, cat.models[name].kind.value,
                     tuple(u for u in cat.upstream(name) if u in chosen))
        for name in selected
    )
    iso = tuple(d.isoformat() for d in dates)
    return BuildPlan(iso, models, full_refresh, max_parallel, {d: run_id_for(d) for d in iso})
