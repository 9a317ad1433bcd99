"""The fact step: rebuild the partitions a day touches, with point-in-time keys, atomically.

For a transaction or periodic-snapshot fact, a run rebuilds every event-date partition that the
day's rows fall in (however late they arrived: a late row lands in its own partition, counted as
``late_beyond_lookback`` when older than the window) plus the last ``lookback_days`` partitions,
so dimension changes that arrived late re-key recent facts. A partition is rebuilt from every
staged row of that event date landed up to the logical date, so a re-run gives the same rows and
N nightly runs give what one full rebuild gives. An accumulating snapshot merges the day's
milestones into the touched rows by key instead.

Inferred members created for facts are inserted into their dimension in the same transaction as
the facts, so a fact never points at a key that does not exist.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
from sqlglot import exp

from dimensions import dimension_schema, inferred_members
from facts.grain import check_grain, grain_violations
from facts.keys import MATCH, apply_missing, lookup_key
from facts.spec import FactSpec, FactType, KeyLookup, MissingKey
from loaders import sql
from loaders.duckdb import DuckDBWarehouse
from models.contract import BuildContext, Kind, Model, Window
from models.registry import Catalogue
from orchestration.output import StepOutput, conform, split_quarantine


def _partitions(wh: DuckDBWarehouse, table: str, event: str, load: str, day: date,
                fs: FactSpec, full_refresh: bool, bound: date) -> tuple[list[date], int]:
    """Event dates to rebuild, and how many of the day's rows are older than the lookback."""
    if full_refresh:
        found = wh.query(f'SELECT DISTINCT "{event}" AS d FROM main."{table}" WHERE "{load}" <= ?',
                         [bound])
        return sorted(d for d in found["d"].to_list() if d is not None), 0
    first = day - timedelta(days=max(fs.lookback_days, 1) - 1)
    found = wh.query(
        f'SELECT "{event}" AS d, count(*) AS n FROM main."{table}" WHERE "{load}" = ? GROUP BY 1',
        [day])
    touched = {d for d in found["d"].to_list() if d is not None}
    late = int(found.filter(pl.col("d") < first)["n"].sum())
    window = wh.query(f'SELECT DISTINCT "{event}" AS d FROM main."{table}" '
                      f'WHERE "{event}" BETWEEN ? AND ? AND "{load}" <= ?', [first, day, bound])
    return sorted(touched | set(window["d"].to_list())), late


def _inputs(model: Model, fs: FactSpec, cat: Catalogue, wh: DuckDBWarehouse, primary: pl.DataFrame,
            day: date) -> dict[str, pl.LazyFrame]:
    """The primary rows, plus other inputs: whole (Window.ALL) or matched on shared columns."""
    frames = {model.inputs[0].name: primary.lazy()}
    for inp in model.inputs[1:]:
        if cat.models[inp.name].kind is Kind.DIMENSION and inp.window is Window.DAY:
            continue  # a dependency (built first); lookups read it by key
        if inp.window is Window.ALL or not wh.exists(inp.name):
            frames[inp.name] = (wh.read(inp.name) if wh.exists(inp.name)
                                else pl.DataFrame(schema=cat.models[inp.name].schema)).lazy()
            continue
        other = cat.models[inp.name]
        shared = [c for c in other.schema.names() if c in primary.columns
                  and c not in (other.partition_by, cat.models[model.inputs[0].name].partition_by)]
        cond = f'"{other.partition_by}" <= ?' if other.partition_by else "true"
        frames[inp.name] = wh.query(
            f'SELECT o.* FROM main."{inp.name}" o SEMI JOIN _k USING ({", ".join(shared)}) '
            f"WHERE {cond}", [day] if other.partition_by else None,
            _k=primary.select(shared).unique()).lazy()
    return frames


def _lookup(facts: pl.DataFrame, lk: KeyLookup, cat: Catalogue, wh: DuckDBWarehouse, model: Model,
            run_id: str, counts: dict[str, int]
            ) -> tuple[pl.DataFrame, pl.DataFrame, tuple[str, pl.DataFrame] | None]:
    spec = lk.dimension
    keys = facts.select([pl.col(a).alias(b) for a, b in zip(lk.fact_columns, spec.natural_key,
                                                           strict=True)]).drop_nulls().unique()
    nk = ", ".join(f'"{k}"' for k in spec.natural_key)
    versions = wh.query(f'SELECT d.* FROM main."{spec.name}" d SEMI JOIN _k USING ({nk})', _k=keys)
    found = lookup_key(facts.lazy(), versions.lazy(), lk)
    looked, missing = pl.collect_all([found.facts, found.missing_keys], engine="in-memory")
    inferred = None
    if lk.missing is MissingKey.INFERRED and missing.height:
        schema = dimension_schema(spec, cat.models[spec.name].schema)
        inferred = inferred_members(spec, schema, versions.lazy(), missing.lazy(),
                                    max_key=wh.max_value(spec.name, spec.surrogate_key),
                                    run_id=run_id).collect()
    keep, held = pl.collect_all(
        list(apply_missing(looked.lazy(), lk, inferred.lazy() if inferred is not None else None)))
    for how, n in keep.group_by(MATCH).len().iter_rows():
        counts[f"{spec.name}:{how}"] = int(n)
    if held.height:
        counts[f"{spec.name}:quarantined"] = held.height
    extra = (spec.name, inferred) if inferred is not None else None
    return keep.drop(MATCH), held.drop(MATCH), extra


def build_fact(model: Model, cat: Catalogue, wh: DuckDBWarehouse, landing: Path, day: date,
               run_id: str, *, full_refresh: bool) -> StepOutput:
    fs = model.fact
    assert fs is not None
    primary_name = model.inputs[0].name
    upstream = cat.models[primary_name]
    assert upstream.partition_by, f"{primary_name} must be partitioned by landing day"
    load = upstream.partition_by
    counts: dict[str, int] = {}
    exists = wh.exists(model.name)
    # Rows landed up to the latest day this fact was built for: re-running an older day then
    # rebuilds its partitions to what they are now, instead of rolling them back.
    built = wh.query("SELECT max(logical_date) AS d FROM _starsmith.watermarks WHERE model = ?",
                     [model.name])["d"][0]
    bound = max(day, built) if built else day
    if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
        cond = f'"{load}" <= ?' if full_refresh else f'"{load}" = ?'
        primary = wh.query(f'SELECT * FROM main."{primary_name}" WHERE {cond}',
                           [bound if full_refresh else day])
        parts: list[date] = []
    else:
        parts, counts["late_beyond_lookback"] = _partitions(
            wh, primary_name, fs.event_date, load, day, fs, full_refresh, bound)
        primary = wh.query(f'SELECT p.* FROM main."{primary_name}" p SEMI JOIN _parts d '
                           f'ON p."{fs.event_date}" = d.d WHERE p."{load}" <= ?', [bound],
                           _parts=pl.DataFrame({"d": parts}, schema={"d": pl.Date()}))
    inputs = _inputs(model, fs, cat, wh, primary, bound)
    if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
        current = (wh.query(f'SELECT f.* FROM main."{model.name}" f SEMI JOIN _k USING '
                            f'({", ".join(model.unique_key)})',
                            _k=primary.select(model.unique_key).unique())
                   if exists and not full_refresh else pl.DataFrame(schema=model.schema))
        inputs[model.name] = current.lazy()
    facts, bad = split_quarantine(model.transform(inputs, BuildContext(day, run_id)).collect(),
                                  model)
    held = [bad]
    extra_stages: list[tuple[str, pl.DataFrame]] = []
    for lk in fs.lookups:
        facts, q, inferred = _lookup(facts, lk, cat, wh, model, run_id, counts)
        held.append(q)
        if inferred is not None:
            extra_stages.append(inferred)
    check_grain(grain_violations(facts.lazy(), fs.grain).collect(), fs.grain, model.name)
    rows = conform(facts, model)
    staged_inferred = [(dim, wh.stage(f"{dim}__inferred_by_{model.name}", run_id, frame))
                       for dim, frame in extra_stages]
    cols = model.schema.names()

    def statements(target: str, staged: str) -> list[exp.Expr]:
        qualified = f"main.{target}"
        adds: list[exp.Expr] = [exp.insert(exp.select("*").from_(sql._table(ref)), f"main.{dim}")
                                for dim, ref in staged_inferred]
        if full_refresh or not exists:
            return [*adds, *sql.replace_all(qualified, staged)]
        create = sql.create_like(qualified, staged)
        if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
            return [*adds, create, *sql.merge(qualified, staged, model.unique_key, cols)]
        assert model.partition_by is not None
        return [*adds, create, *sql.overwrite_partitions(qualified, staged, model.partition_by,
                                                         cols, values=parts)]

    quarantine = pl.concat([h for h in held if h.height] or [held[0]], how="diagonal_relaxed")
    return StepOutput(rows, quarantine, statements, primary.height, counts, days=[day],
                      also_staged=[ref for _, ref in staged_inferred],
                      pending=dict(staged_inferred))
