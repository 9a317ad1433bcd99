"""Catch-up in ranges: many pending days built with one step per model, equal to the nights.

A warehouse that is weeks behind (a new project over a year of landings, a pause, a long outage)
used to run one workflow step per model per day: ~0.1 s of fixed cost a step, 2,406 days x 5
models of it, against seconds for one full rebuild. Here the pending days are cut into ranges,
and each model is built once per range, as nightly builds of those days, one after another,
would have left it:

- a staging table partitioned by landing day writes each day's partition from that day's
  inputs, with that day's context (``many_days.transformed``);
- a full-replace model is built once, for the range's last day (what the last night leaves);
- an SCD dimension replays the range's days in order, from what it holds, each day with its
  own run id, and only the days whose input can differ (a reference source's landing days);
- a fact rebuilds the partitions the nights would have, each transformed and keyed as of the
  last night that rebuilt it: against the dimensions as that night left them, from the states
  the dimensions' replays logged when a later night of the range changed a key (asof.py).

The conditions, each named when a catch-up runs night by night instead: no fact adds inferred
members (the nights complete a placeholder in place: a range built after the dimension would
not have made it), every model is of a kind above, and its rules are judged alike over a range
and over each night (a ``mostly``, a rate above 0, freshness, volume or a row count are not). A
fact whose key sits in two partitions of a range (each night judged it against what was
published then) rebuilds that range night by night, in its step. Pending days some models have
built already (a catch-up stopped part way) run only the models that have not, night by night
(:func:`_resumed`): a dimension is never re-run for a day older than its last.

Like a full refresh, a range assumes a dimension's transform depends on its inputs, not on the
logical date: a day whose inputs are the same as the day before is not replayed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import polars as pl

from starsmith.contract import Kind, Model, Strategy, Window
from starsmith.facts.spec import FactType, MissingKey
from starsmith.loaders.target import Warehouse
from starsmith.orchestration.messages import BuildPlan
from starsmith.orchestration.plan import Listing, make_plan, run_id_for
from starsmith.quality.checks import References
from starsmith.registry import Catalogue

# A range's staging rows are in memory at once (a fact's are batched): two years of days.
MAX_RANGE_DAYS = 731


def judged_per_night(model: Model) -> str:
    """Why the model's rules must be judged night by night ('' when a range may judge them)."""
    dim = model.dimension
    keys = [set(k) for k in (model.unique_key, model.fact.grain if model.fact else (),
                             (dim.surrogate_key,) if dim else (),
                             (*dim.natural_key, "valid_from") if dim else ()) if k]
    for e in model.expectations:
        kw = e.kwargs
        if float(kw.get("mostly", 1.0)) < 1.0:
            return f"its rule {e.type} has mostly={kw['mostly']}"
        if "unique" in e.type and set(kw.get("column_list") or [kw.get("column")]) in keys:
            continue  # the model's own key: unique in the range iff in each night (a key in
            # two partitions rebuilds the fact's range night by night)
        if not e.type.startswith("expect_column_values_to_") or "unique" in e.type:
            return f"its rule {e.type} is judged over each night's rows"  # a count, a mean
    for check in model.checks:
        if not isinstance(check, References) or check.max_unknown_rate > 0:
            return f"its check {type(check).__name__} is judged per night"
    return ""


def per_day(cat: Catalogue, name: str) -> bool:
    """A staging table partitioned by landing day, each day's partition from that day's inputs
    (sources or other such tables, read by day)."""
    model = cat.models[name]
    return (model.strategy is Strategy.PARTITION and model.fact is None
            and model.dimension is None and bool(model.inputs)
            and all(i.window is Window.DAY and (i.name in cat.sources or per_day(cat, i.name))
                    for i in model.inputs))


def not_batchable(cat: Catalogue, name: str) -> str:
    """Why ``name`` must be built night by night in a catch-up ('' when a range may build it):
    what the model is first, then how its rules are judged."""
    return _kind(cat, name) or judged_per_night(cat.models[name])


def _kind(cat: Catalogue, name: str) -> str:
    model = cat.models[name]
    if per_day(cat, name):
        return ""
    if model.strategy is Strategy.FULL and model.fact is None and model.dimension is None:
        return ""
    if model.strategy is Strategy.SCD and model.dimension is not None:
        inferring = [m.name for m in cat.models.values() if m.fact is not None and any(
            lk.dimension.name == name and lk.missing is MissingKey.INFERRED
            for lk in m.fact.lookups)]
        return f"{inferring[0]} adds inferred members to it" if inferring else ""
    fs = model.fact
    if fs is None:
        return f"its strategy ({model.strategy.value}) merges night by night"
    if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT or model.strategy is not Strategy.PARTITION:
        return "an accumulating snapshot merges night by night"
    if any(lk.missing is MissingKey.INFERRED for lk in fs.lookups):
        return "it adds inferred members to a dimension"
    primary = fs.event_input or model.inputs[0].name
    for inp in model.inputs:
        if inp.name == primary:
            continue
        other = cat.models.get(inp.name)
        if other is None or other.kind is not Kind.DIMENSION or inp.window is not Window.DAY:
            return f"its transform reads {inp.name} as of each night"
    return ""


def change_days(cat: Catalogue, name: str, listing: Listing, days: list[date]) -> set[date]:
    """Of ``days``, those on which ``name``'s inputs can differ from the day before: a reference
    source's landing days, every day for a daily source or a model read by day."""
    found: set[date] = set()
    model = cat.models[name]
    for inp in model.inputs:
        if inp.name in cat.sources:
            source = cat.sources[inp.name]
            if source.cadence.daily and inp.window is Window.DAY:
                return set(days)
            landed = {d.day for d in listing.get(inp.name, []) if d.complete}
            found |= landed & set(days)
        elif inp.window is Window.DAY and cat.models[inp.name].partition_by:
            return set(days)
        else:
            found |= change_days(cat, inp.name, listing, days)
    return found


def why_not_ranges(cat: Catalogue, models: list[str]) -> str:
    """Why a catch-up of these models runs night by night ('' when it may run in ranges)."""
    for name in models:
        if not cat.models[name].inputs:
            continue  # built every day from nothing: a range builds it once, as the last night
        why = not_batchable(cat, name)
        if why:
            return f"{name}: {why}"
    return ""


def cut(days: list[date]) -> list[list[date]]:
    """The pending ``days`` cut into ranges: consecutive days, at most MAX_RANGE_DAYS each."""
    ranges: list[list[date]] = []
    for day in days:
        if (not ranges or day - ranges[-1][-1] != timedelta(days=1)
                or len(ranges[-1]) >= MAX_RANGE_DAYS):
            ranges.append([day])
        else:
            ranges[-1].append(day)
    return ranges


def _resumed(plan: BuildPlan, cat: Catalogue, models: list[str], days: list[date],
             built: dict[str, set[date]]) -> BuildPlan | None:
    """The plan when some models have built pending days already and later ones too (a
    catch-up stopped part way: its staging and dimensions published their range, its fact did
    not), or None. Each such day runs only the models that have not built it, or built it last
    (a re-run of a model's last day is idempotent; a dimension re-run for an older day would
    apply that day's input on top of later ones), night by night, as phases; the days after
    the last any model built go on in ranges."""
    last = {m: max(d) for m, d in built.items() if m in models and d}
    ahead = max(last.values(), default=None)
    if ahead is None or ahead < days[0]:
        return None
    phases: list[BuildPlan] = []
    skipped = 0
    for day in (d for d in days if d <= ahead):
        todo = [m for m in models if day not in built.get(m, set()) or day == last[m]]
        skipped += len(models) - len(todo)
        if not todo:
            continue
        if phases and [p.name for p in phases[-1].models] == todo:
            phases[-1] = replace(phases[-1], dates=(*phases[-1].dates, day.isoformat()),
                                 run_ids={**phases[-1].run_ids, day.isoformat(): run_id_for(day)})
        else:
            phases.append(make_plan(cat, todo, [day], max_parallel=plan.max_parallel,
                                    accept_changes=plan.accept_changes))
    if not skipped:
        return None
    rest = [d for d in days if d > ahead]
    main = ranged(make_plan(cat, models, rest, max_parallel=plan.max_parallel,
                            accept_changes=plan.accept_changes), cat, models, built)
    waiting = sum(len(p.dates) for p in phases)
    return replace(main, phases=tuple(phases), notes=(
        *plan.notes, f"{waiting} day(s) some models built already: the others catch up night "
        f"by night", *main.notes))


def ranged(plan: BuildPlan, cat: Catalogue, models: list[str],
           built: Warehouse | dict[str, set[date]]) -> BuildPlan:
    """The plan with its pending days in ranges where that equals the nights (see the module),
    and a note saying which; the plan as it was otherwise. ``built``: the warehouse, or the
    days each model has built (its watermarks)."""
    days = [date.fromisoformat(d) for d in plan.dates]
    if plan.full_refresh or plan.phases or not days:
        return plan
    if not isinstance(built, dict):
        marks: dict[str, set[date]] = {}
        for model, day in built_days(built).iter_rows():
            marks.setdefault(model, set()).add(day)
        built = marks
    resumed = _resumed(plan, cat, models, days, built)
    if resumed is not None:
        return resumed
    if len(days) < 2:
        return plan
    why = why_not_ranges(cat, models)
    if why:
        return replace(plan, notes=(*plan.notes, f"{len(days)} days built night by night ({why})"))
    ranges = cut(days)
    last = tuple(r[-1].isoformat() for r in ranges)
    return replace(plan, dates=last, run_ids={d: run_id_for(d) for d in last},
                   ranges={r[-1].isoformat(): r[0].isoformat() for r in ranges if len(r) > 1},
                   notes=(*plan.notes, f"{len(days)} days built in {len(ranges)} range(s)"))


def built_days(wh: Warehouse) -> pl.DataFrame:
    """(model, logical_date) of every day a model has built."""
    marks = wh.watermarks()
    return marks.select("model", "logical_date") if marks.height else pl.DataFrame(
        schema={"model": pl.String(), "logical_date": pl.Date()})
