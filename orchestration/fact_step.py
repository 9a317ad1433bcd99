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

import polars as pl
from sqlglot import exp

from starsmith.contract import Kind, Model, Window
from starsmith.facts.grain import (
    check_grain,
    grain_violations,
    key_hashes,
    split_grain_conflicts,
    surely_unique,
)
from starsmith.facts.spec import FactSpec, FactType, MissingKey
from starsmith.loaders import sql
from starsmith.loaders.store import Landing
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.log import get_logger
from starsmith.orchestration.batches import (
    BatchOutput,
    Built,
    finished,
    held_allowance,
    side_by_side,
)
from starsmith.orchestration.budget import BATCH_DAYS, Batcher
from starsmith.orchestration.fact_keys import WholeVersions, key_proofs, lookup, whole_versions
from starsmith.orchestration.fact_range import Nights, night_logs, per_night, range_partitions
from starsmith.orchestration.output import StepOutput, conform, split_quarantine
from starsmith.registry import Catalogue

log = get_logger(__name__)


def event_input(model: Model) -> str:
    """The input whose rows carry the event date (checked when the catalogue loads)."""
    assert model.fact is not None
    return model.fact.event_input or model.inputs[0].name


def _partitions(wh: Warehouse, table: str, event: str, load: str, day: date,
                fs: FactSpec, full_refresh: bool, bound: date
                ) -> tuple[list[date], int, list[int]]:
    """Event dates to rebuild, how many of the day's rows are older than the lookback, and (a
    full rebuild) each date's rows, to size batches by."""
    if full_refresh:
        found = wh.query(f'SELECT "{event}" AS d, count(*) AS n FROM main."{table}" '
                         f'WHERE "{load}" <= ? AND "{event}" IS NOT NULL GROUP BY 1 ORDER BY 1',
                         [bound])
        return found["d"].to_list(), 0, found["n"].to_list()
    first = day - timedelta(days=max(fs.lookback_days, 1) - 1)
    found = wh.query(
        f'SELECT "{event}" AS d, count(*) AS n FROM main."{table}" WHERE "{load}" = ? GROUP BY 1',
        [day])
    touched = {d for d in found["d"].to_list() if d is not None}
    late = int(found.filter(pl.col("d") < first)["n"].sum())
    window = wh.query(f'SELECT DISTINCT "{event}" AS d FROM main."{table}" '
                      f'WHERE "{event}" BETWEEN ? AND ? AND "{load}" <= ?', [first, day, bound])
    return sorted(touched | set(window["d"].to_list())), late, []


def _inputs(model: Model, fs: FactSpec, cat: Catalogue, wh: Warehouse, primary: pl.DataFrame,
            day: date) -> dict[str, pl.LazyFrame]:
    """The event rows, plus other inputs: whole (Window.ALL) or matched on their ``on`` keys."""
    event = event_input(model)
    frames = {event: primary.lazy()}
    for inp in model.inputs:
        if inp.name == event:
            continue
        if cat.models[inp.name].kind is Kind.DIMENSION and inp.window is Window.DAY:
            continue  # a dependency (built first); lookups read it by key
        if inp.window is Window.ALL or not wh.exists(inp.name):
            frames[inp.name] = (wh.read(inp.name) if wh.exists(inp.name)
                                else pl.DataFrame(schema=cat.models[inp.name].schema)).lazy()
            continue
        other = cat.models[inp.name]
        shared = list(inp.on)  # declared and checked when the catalogue loaded
        cond = f'"{other.partition_by}" <= ?' if other.partition_by else "true"
        frames[inp.name] = conform_read(wh.query(
            f'SELECT o.* FROM main."{inp.name}" o {sql.semi_join("o", "_k", shared)} '
            f"WHERE {cond}", [day] if other.partition_by else None,
            _k=primary.select(shared).unique()), other.schema).lazy()
    return frames


def _grain_conflicts(model: Model, fs: FactSpec, cat: Catalogue, primary: pl.DataFrame,
                     counts: dict[str, int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Check a transaction fact's event rows at its grain before its transform can drop any.

    A transaction fact has one row per event, so event rows carrying the grain are at the grain:
    a row landed twice unchanged is kept once, and rows sharing a grain with different values
    are all held back with the reason (a transform's ``unique(..., keep="last")`` would publish
    one of them, and the grain check after it could not tell). Rows are compared without the
    landing day they were staged under. A snapshot's event rows may be finer than its grain (a
    total per store from levels per product), so only the grain check after the transform
    applies to snapshots.
    """
    if fs.fact_type is not FactType.TRANSACTION or not set(fs.grain) <= set(primary.columns):
        return primary, primary.clear().with_columns(reason=pl.lit("", dtype=pl.String()))
    load = cat.models[event_input(model)].partition_by
    kept, held = split_grain_conflicts(primary, fs.grain, [load] if load else [])
    if held.height:
        counts["grain_conflicts"] = counts.get("grain_conflicts", 0) + held.height
        log.warning("%s: %d rows held back: they share a grain (%s) with different values",
                    model.name, held.height, ", ".join(fs.grain))
    return kept, held


def _chunk(model: Model, fs: FactSpec, cat: Catalogue, wh: Warehouse, primary: pl.DataFrame,
           day: date, bound: date, run_id: str, exists: bool, full_refresh: bool,
           counts: dict[str, int], inferred: dict[str, pl.DataFrame],
           whole: dict[str, WholeVersions] | None = None, asof: Nights | None = None
           ) -> Built:
    """Build the facts of one batch of partitions: transform, point-in-time keys, grain.
    ``asof`` (a catch-up's range): each partition's night, whose context transforms it.

    When the grain is the unique key (the usual case), the hashes that prove the batch's grain
    unique are returned with its rows, for the step-wide proof of the key (orchestration/
    batches.py), which would otherwise hash every row again (~0.2 s of CPU over 6M rows)."""
    primary, conflicts = _grain_conflicts(model, fs, cat, primary, counts)
    inputs = _inputs(model, fs, cat, wh, primary, bound)
    if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
        current = (conform_read(wh.query(f'SELECT f.* FROM main."{model.name}" f '
                                         + sql.semi_join("f", "_k", model.unique_key),
                                         _k=primary.select(model.unique_key).unique()), model.schema)
                   if exists and not full_refresh else pl.DataFrame(schema=model.schema))
        inputs[model.name] = current.lazy()
    facts, bad = split_quarantine(per_night(model, fs, event_input(model), inputs, day, run_id,
                                               asof.of if asof and asof.contexts else None),
                                  model)
    held = [bad, conflicts]
    for lk in fs.lookups:
        facts, q, new = lookup(facts, lk, cat, wh, model, run_id, day, counts,
                               inferred.get(lk.dimension.name),
                               (whole or {}).get(lk.dimension.name), asof)
        held.append(q)
        if new is not None:
            name, frame = new
            inferred[name] = pl.concat([inferred[name], frame]) if name in inferred else frame
    rows = conform(facts, model)
    keyed = set(fs.grain) == set(model.unique_key)
    hashes = key_hashes(rows if keyed else facts, model.unique_key if keyed else fs.grain)
    if not surely_unique(hashes):  # may repeat: grouped, to name them
        check_grain(grain_violations(facts.lazy(), fs.grain).collect(), fs.grain, model.name)
    return rows, held, hashes if keyed else None


def _read_batch(wh: Warehouse, table: str, fs: FactSpec, load: str, bound: date, day: date,
                batch: list[date], *, whole_range: bool = False) -> pl.DataFrame:
    """The event rows of a batch's partitions landed up to ``bound``. The range lets DuckDB skip
    row groups outside the batch (rows land in event order mostly); the semi-join keeps the
    batch's partitions only. ``whole_range``: the batch is every partition from its first to
    its last (a full rebuild's batches are runs of all the event dates), so the range alone
    selects them (the semi-join cost ~5 ms a 500k-row batch)."""
    semi = "" if whole_range else f'SEMI JOIN _parts d ON p."{fs.event_date}" = d.d '
    parts = {} if whole_range else {"_parts": pl.DataFrame({"d": batch}, schema={"d": pl.Date()})}
    return wh.query(f'SELECT p.* FROM main."{table}" p {semi}WHERE p."{load}" <= ? '
                    f'AND p."{fs.event_date}" BETWEEN ? AND ?',
                    # no partition to rebuild (an empty day): reads no row
                    [bound, min(batch, default=day), max(batch, default=day)], **parts)


def _independent(model: Model, fs: FactSpec, cat: Catalogue, budget: int,
                 whole: dict[str, WholeVersions]) -> bool:
    """Can the batches be built beside each other? Only when a batch needs nothing another
    makes or the warehouse holds beyond what was read before the first: every looked-up
    dimension read whole and none inferring members (an inferred member one batch makes, a
    later one reuses), no input read per batch but the event rows, and no budget (it measures
    one batch at a time)."""
    event = event_input(model)
    return (not budget
            and all(lk.dimension.name in whole and lk.missing is not MissingKey.INFERRED
                    for lk in fs.lookups)
            and all(i.name == event or (i.name in cat.models and i.window is Window.DAY
                                        and cat.models[i.name].kind is Kind.DIMENSION)
                    for i in model.inputs))


def _outside_partitions(wh: Warehouse, model: Model, rows: pl.DataFrame,
                        parts: list[date]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold back rows whose key is already published in a partition this run does not replace.

    Within the rebuilt partitions the grain check sees every row; a duplicate of a row in an
    untouched partition (a source re-sending an event with another date) would slip past it.
    """
    assert model.partition_by
    key = list(model.unique_key)
    grain = ", ".join(f'f."{c}"' for c in key)
    clash = wh.query(
        f'SELECT {grain}, f."{model.partition_by}" AS _published_in FROM main."{model.name}" f '
        f'{sql.semi_join("f", "_g", key)} WHERE f."{model.partition_by}" NOT IN (SELECT d FROM _p)',
        _g=rows.select(key).unique(), _p=pl.DataFrame({"d": parts}, schema={"d": pl.Date()}))
    if not clash.height:
        return rows, rows.clear().with_columns(reason=pl.lit(""))
    marked = rows.join(clash, on=key, how="left")
    bad = marked.filter(pl.col("_published_in").is_not_null())
    held = bad.with_columns(reason=pl.format(
        f"key ({', '.join(key)}) already published in partition {{}}",
        pl.col("_published_in").cast(pl.String))).drop("_published_in")
    return marked.filter(pl.col("_published_in").is_null()).drop("_published_in"), held


def build_fact(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing, day: date,
               run_id: str, *, full_refresh: bool, budget: int = 0,
               span: list[date] | None = None) -> StepOutput:
    """Build a fact for one logical date; many partitions are built a batch at a time.

    Batching bounds memory: a full rebuild of years of history holds one batch of partitions in
    memory at once, each batch staged as its own Parquet part, all published in one transaction.
    A batch is ``batch_days`` partitions, or with a memory ``budget`` (bytes) as many as fit it
    (orchestration/budget.py).
    """
    fs = model.fact
    assert fs is not None
    primary_name = event_input(model)
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
    inferred: dict[str, pl.DataFrame] = {}
    held: list[pl.DataFrame] = []
    built = BatchOutput(wh, model.name, run_id, held_allowance(budget), model.unique_key)
    read = 0
    asof: pl.DataFrame | None = None  # a range's partitions and their nights
    logs: dict[str, pl.DataFrame] = {}  # and the states their dimensions' replays logged
    if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
        cond = f'"{load}" <= ?' if full_refresh else f'"{load}" = ?'
        primary = wh.query(f'SELECT * FROM main."{primary_name}" WHERE {cond}',
                           [bound if full_refresh else day])
        parts: list[date] = []
        rows, held, hashes = _chunk(model, fs, cat, wh, primary, day, bound, run_id, exists,
                                    full_refresh, counts, inferred)
        built.add(rows, last=True, hashes=hashes)
        read = primary.height
    else:
        if span:  # a catch-up's range: the partitions its nights rebuilt, each as of its night
            asof, counts["late_beyond_lookback"], counted = range_partitions(
                wh, model, fs, primary_name, load, span)
            parts = asof["_p"].to_list()
            logs = night_logs(wh, cat, fs, span[0], span[-1])
        else:
            parts, counts["late_beyond_lookback"], counted = _partitions(
                wh, primary_name, fs.event_date, load, day, fs, full_refresh, bound)
            # a night of a range built on its own (after a failure, or a key in two partitions)
            logs = {} if full_refresh else night_logs(wh, cat, fs, day, day)
        nights = (Nights(asof, logs) if asof is not None
                  else Nights(pl.DataFrame({"_p": parts, "_night": [day] * len(parts)},
                                           schema={"_p": pl.Date(), "_night": pl.Date()}),
                              logs, contexts=False) if logs else None)
        batcher, batches = Batcher(parts, fs.batch_days, budget, rows=counted), 0
        # Many batches read each dimension once (before the first: what it holds is resident,
        # and the budget's batches are sized around it); a night's one batch reads its keys'.
        whole = (whole_versions(wh, cat, fs, budget)
                 if full_refresh or len(parts) > (fs.batch_days or BATCH_DAYS) else {})
        clash = (asof is not None and exists and model.partition_by and model.unique_key
                 and model.partition_by not in model.unique_key)

        def outside(rows: pl.DataFrame, bad: list[pl.DataFrame]) -> pl.DataFrame:
            """A range's rows whose key is published in a partition it does not rebuild."""
            if not clash:
                return rows
            rows, clashed = _outside_partitions(wh, model, rows, parts)
            bad.append(clashed)
            counts["grain_in_other_partition"] = (
                counts.get("grain_in_other_partition", 0) + clashed.height)
            return rows

        if _independent(model, fs, cat, budget, whole) and len(parts) > 1:
            batches, read = side_by_side(
                batcher.rest(),
                lambda batch: _read_batch(wh, primary_name, fs, load, bound, day, batch,
                                          whole_range=full_refresh and not span),
                lambda primary, mine: _chunk(model, fs, cat, wh, primary, day, bound, run_id,
                                             exists, full_refresh, mine, {}, whole, nights),
                built, counts, held, outside)
            log.info("%s: %d batches built two at a time", model.name, batches)
        else:
            while True:
                batch = batcher.next()
                primary = _read_batch(wh, primary_name, fs, load, bound, day, batch,
                                      whole_range=full_refresh and not span)
                read += primary.height
                rows, bad, hashes = _chunk(model, fs, cat, wh, primary, day, bound, run_id,
                                           exists, full_refresh, counts, inferred, whole, nights)
                rows, hashes = finished(outside, rows, bad, hashes)
                sizes = primary.estimated_size(), rows.estimated_size()
                held += bad
                built.add(rows, last=not batcher.remaining, hashes=hashes)  # held, or staged
                batches += 1
                batcher.measured(len(batch), *sizes)
                if not batcher.remaining:
                    break
        counts["batches"] = batches
        if budget:
            log.info("%s: %d partitions in %d batches under a %d MiB budget", model.name,
                     len(parts), counts["batches"], budget >> 20)
    rows, staged_parts = built.rows(model.schema), built.parts
    if (exists and not full_refresh and not span and parts and not staged_parts
            and model.partition_by
            and model.unique_key and model.partition_by not in model.unique_key):
        rows, clashed = _outside_partitions(wh, model, rows, parts)
        held.append(clashed)
        counts["grain_in_other_partition"] = clashed.height
    # keys set against the published versions, rows in memory: their references are proven
    proofs = (key_proofs(wh, fs, rows) if asof is None and not logs and not staged_parts
              and fs.fact_type is not FactType.ACCUMULATING_SNAPSHOT else {})
    if proofs:
        log.info("%s: %s reference their dimensions by construction", model.name,
                 ", ".join(proofs))
    staged_inferred = [(dim, wh.stage(f"{dim}__inferred_by_{model.name}", run_id, frame))
                       for dim, frame in inferred.items()]
    inferred_cols = {dim: frame.columns for dim, frame in inferred.items()}
    cols = model.schema.names()

    def statements(target: str, staged: str) -> list[exp.Expr]:
        qualified = f"main.{target}"
        adds = [sql.insert_from(f"main.{dim}", ref, inferred_cols[dim]) for dim, ref in staged_inferred]
        if full_refresh or not exists:
            return [*adds, *sql.replace_all(qualified, staged)]
        create = sql.create_like(qualified, staged)
        if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT:
            return [*adds, create, *sql.merge(qualified, staged, model.unique_key, cols)]
        assert model.partition_by is not None
        return [*adds, create, *sql.overwrite_partitions(qualified, staged, model.partition_by,
                                                         cols, values=parts)]

    quarantine = pl.concat([h for h in held if h.height] or held[:1], how="diagonal_relaxed")
    scope = None if fs.fact_type is FactType.ACCUMULATING_SNAPSHOT else (fs.event_date, parts)
    if scope and fs.event_date not in quarantine.columns:
        quarantine = quarantine.with_columns(pl.lit(None, dtype=pl.Date()).alias(fs.event_date))
    if asof is not None and scope:  # a row was held back by its partition's night
        quarantine = quarantine.join(asof.rename({"_p": fs.event_date}), on=fs.event_date,
                                     how="left").with_columns(
            logical_date=pl.coalesce("_night", pl.lit(day))).drop("_night")
    # A full refresh rebuilt every day landed so far: each is built (a watermark apiece).
    days = list(span or [day])
    if full_refresh:
        found = wh.query(f'SELECT DISTINCT "{load}" AS d FROM main."{primary_name}" '
                         f'WHERE "{load}" <= ?', [day])["d"].to_list()
        days = sorted({*found, day})
    return StepOutput(rows, quarantine, statements, read, counts, days=days,
                      also_staged=[ref for _, ref in staged_inferred],
                      pending=dict(staged_inferred), parts=staged_parts,
                      quarantine_scope=scope, known_unique=built.known_unique, proofs=proofs)
