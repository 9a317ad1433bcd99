"""Checks of a model against its inputs' declared schemas, when the catalogue loads.

A fact's hidden contracts are made explicit and checked before any data moves: which input
carries the event date (``FactSpec.event_input``, default the first), and on which declared
columns (``Input(..., on=(...))``) each other input joins it. A mistake is a ModelError naming
the model, the input and the column, never a raw engine error halfway through a build.
"""

from __future__ import annotations

from collections.abc import Mapping

from starsmith.contract import Kind, Model, Source, Window
from starsmith.errors import ModelError
from starsmith.facts.spec import FactType


def _check_rules(model: Model, where: str) -> None:
    """Every column a quality rule names is a declared column of the model."""
    for rule in model.expectations:
        kw = rule.kwargs
        named = [kw["column"]] if "column" in kw else list(kw.get("column_list", []))
        for col in named:
            if col not in model.schema:
                raise ModelError(f"model {model.name} checks column {col!r}, which it does not "
                                 f"declare ({rule.type})", where=where,
                                 fix="Declare the column, or remove or fix the expectation")
    for check in model.checks:
        col = getattr(check, "column", None)
        if col is not None and col not in model.schema:
            raise ModelError(f"model {model.name} checks column {col!r}, which it does not "
                             f"declare ({type(check).__name__})", where=where,
                             fix="Declare the column, or remove or fix the check")


def check_model(model: Model, models: Mapping[str, Model], sources: Mapping[str, Source],
                where: str) -> None:
    """Raise ModelError if a model's rules or a fact's inputs do not fit its declaration."""
    _check_rules(model, where)
    fs = model.fact
    if fs is None:
        return
    names = model.input_names
    event = fs.event_input or (names[0] if names else "")
    if event not in names:
        raise ModelError(f"fact {model.name} names {event!r} as its event input, but does not "
                         f"read it (inputs: {', '.join(names) or 'none'})", where=where,
                         fix="Set FactSpec(event_input=...) to one of the model's inputs")
    primary = models.get(event)
    if primary is None or not primary.partition_by:
        what = "a source" if event in sources else "not partitioned by landing day"
        raise ModelError(
            f"fact {model.name} reads its events from {event!r}, which is {what}", where=where,
            fix="Stage the events in a model with strategy PARTITION and partition_by=<landing "
                "day column>, and read that model first (or name it in event_input)")
    if fs.fact_type is not FactType.ACCUMULATING_SNAPSHOT and fs.event_date not in primary.schema:
        raise ModelError(
            f"fact {model.name}: its event input {event!r} has no column {fs.event_date!r} "
            "(the FactSpec's event_date)", where=where,
            fix=f"Add {fs.event_date!r} to {event}, or set FactSpec(event_input=...) to the "
                "input that carries it")
    for inp in model.inputs:
        if inp.name == event or inp.name in sources:
            continue
        other = models[inp.name]
        if inp.window is Window.ALL or other.kind is Kind.DIMENSION:
            if inp.on:
                raise ModelError(f"fact {model.name} joins {inp.name!r} on {list(inp.on)}, but "
                                 "a dimension or a Window.ALL input is read whole",
                                 where=where, fix=f"Remove on=... from Input({inp.name!r})")
            continue
        if not inp.on:
            shared = [c for c in other.schema.names() if c in primary.schema
                      and c not in (other.partition_by, primary.partition_by)]
            raise ModelError(
                f"fact {model.name} reads {inp.name!r} by day but does not say how it joins "
                f"{event!r}", where=where,
                fix=f"Declare Input({inp.name!r}, on=(...)) with the key columns"
                    + (f", e.g. on={tuple(shared[:2])!r}" if shared else ""))
        for col in inp.on:
            for side, schema in ((event, primary.schema), (inp.name, other.schema)):
                if col not in schema:
                    raise ModelError(f"fact {model.name} joins {inp.name!r} on {col!r}, which "
                                     f"{side!r} does not have", where=where,
                                     fix=f"Use columns both {event!r} and {inp.name!r} declare")
            if primary.schema[col] != other.schema[col]:
                raise ModelError(
                    f"fact {model.name} joins {inp.name!r} on {col!r}, typed "
                    f"{primary.schema[col]} in {event!r} and {other.schema[col]} in "
                    f"{inp.name!r}", where=where, fix="Cast one side to the other's type")
