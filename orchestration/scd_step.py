"""The SCD step: fetch only the touched keys' versions, run the builder, hand back the changes.

The warehouse returns the current version of each key the batch touches, and every version of
the keys that need their history (late records, type-1 changes, no current version), plus the
largest surrogate key. A snapshot is first narrowed in the engine to the records that can change
something (``snapshot_diff.py``). The builder returns every version of every changed key and checks
the invariants on them. The publish writes only the new versions and the stored ones whose values
changed, replacing those surrogate keys' rows, so a change to a key with a long history costs the
rows it changes. A full refresh replays every landed day, in order, from an empty dimension.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
from sqlglot import exp

from starsmith.contract import BuildContext, Model
from starsmith.dimensions import DimensionSpec, SCDFrames, dimension_schema, reserved_members, scd_changes
from starsmith.dimensions.members import inferred_slot
from starsmith.dimensions.spec import BEGINNING, INFERRED_BASE, OPEN_END, ChangeDetection, SCDType
from starsmith.facts.grain import key_hashes, surely_unique
from starsmith.loaders import sql
from starsmith.loaders.store import Landing
from starsmith.loaders.target import Warehouse, conform_read
from starsmith.orchestration import row_hashes
from starsmith.orchestration.asof import FIRST, LOGGED, NightLog
from starsmith.orchestration.guards import guard_snapshot
from starsmith.orchestration.inputs import day_inputs, input_days
from starsmith.orchestration.late import place_late
from starsmith.orchestration.output import StepOutput, refuse_lossy, run_transform
from starsmith.orchestration.plan import run_id_for
from starsmith.orchestration.snapshot_diff import snapshot_diff
from starsmith.registry import Catalogue

COUNTS = {"inserted": "rows_inserted", "updated": "rows_updated", "closed": "rows_closed"}


def _existing(wh: Warehouse, model: Model, spec: DimensionSpec, batch: pl.DataFrame,
              schema: pl.Schema, keys: pl.DataFrame | None = None, *, day: date | None = None
              ) -> tuple[pl.DataFrame, int]:
    """The stored versions of the batch's keys (or of ``keys``), and the largest own key.

    With ``day`` (a change feed's nightly batch), a key whose records only add to its history
    brings its current version alone (see :func:`_current_suffices`); the others all of theirs."""
    if not wh.exists(model.name):
        return pl.DataFrame(schema=schema), 0
    wanted = batch.select(spec.natural_key).unique() if keys is None else keys
    if day is not None and wanted.height:
        rows = _versions_needed(wh, model.name, spec, batch, wanted, day, schema)
    else:
        rows = wh.read_keys(model.name, wanted)
    own = wh.query(f'SELECT coalesce(max("{spec.surrogate_key}"), 0) AS m FROM main."{model.name}"'
                   f' WHERE "{spec.surrogate_key}" < ?', [INFERRED_BASE])
    return conform_read(rows.select(schema.names()), schema), int(own["m"][0])


def _current_suffices(spec: DimensionSpec, batch: pl.DataFrame, current: pl.DataFrame,
                      day: date) -> pl.DataFrame:
    """The batch's keys whose current version is all the builder needs: every record of the key
    is dated after that version began and on or after its landing day (so nothing is late or
    replayed, and no staged history is re-derived), and no type-1 value changes (a type-1
    change rewrites every version). Such a batch only closes the current version and adds
    versions after it; the older ones stay as they are, so reading them buys nothing."""
    nk = list(spec.natural_key)
    start = BuildContext(day, "").batch_time
    ts = (pl.col(spec.updated_at).cast(pl.Datetime("us"))
          if spec.detection is ChangeDetection.TIMESTAMP and spec.updated_at
          else pl.lit(start, dtype=pl.Datetime("us")))
    t1 = spec.of_type(SCDType.OVERWRITE)
    now = current.select(*nk, _from="valid_from", **{f"{c}_now": c for c in t1})
    records = batch.drop_nulls(nk).select(*nk, *t1, _ts=ts).join(now, on=nk, how="left")
    bad = (pl.col("_from").is_null() | pl.col("_ts").is_null() | (pl.col("_ts") < start)
           | (pl.col("_ts") <= pl.col("_from"))
           | pl.any_horizontal([~pl.col(c).eq_missing(pl.col(f"{c}_now")) for c in t1]
                               or [pl.lit(False)]))
    needs_all = records.filter(bad).select(nk).unique()
    return now.select(nk).join(needs_all, on=nk, how="anti")


def _versions_needed(wh: Warehouse, table: str, spec: DimensionSpec, batch: pl.DataFrame,
                     keys: pl.DataFrame, day: date, schema: pl.Schema) -> pl.DataFrame:
    """The touched keys' current versions, and every version of the keys that need them
    (with the model's types: a time zone or an enum read back differs from the batch's)."""
    nk = list(spec.natural_key)
    current = conform_read(wh.query(f'SELECT d.* FROM main."{table}" d WHERE d.is_current AND '
                                    + sql.keys_in("d", "_keys", nk), _keys=keys
                                    ).select(schema.names()), schema)
    enough = _current_suffices(spec, batch, current, day)
    rest = keys.join(enough, on=nk, how="anti")
    if not rest.height:
        return current
    whole = conform_read(wh.read_keys(table, rest).select(schema.names()), schema)
    return pl.concat([current.join(enough, on=nk, how="semi"), whole], how="vertical_relaxed")


def _own_max(frame: pl.DataFrame, sk: str) -> int:
    """The largest key the dimension's own versions hold (inferred members have their own range)."""
    found = frame.filter(pl.col(sk) < INFERRED_BASE)[sk].max()
    return max(0, int(found or 0))  # type: ignore[arg-type]


def _placeholders(wh: Warehouse, model: Model, spec: DimensionSpec, schema: pl.Schema
                  ) -> pl.DataFrame:
    """The inferred members facts created, as the placeholders they were when created: a replay
    completes them in place again, and they keep their keys (their own range)."""
    if not wh.exists(model.name):
        return pl.DataFrame(schema=schema)
    sk = spec.surrogate_key
    seeds = conform_read(wh.read(model.name, f'"{sk}" >= ?', [INFERRED_BASE])
                         .select(schema.names()), schema)
    blank = {c: pl.lit(None, dtype=schema[c]) for c in spec.attributes}
    reset: dict[str, pl.Expr] = {"valid_from": pl.lit(BEGINNING, dtype=schema["valid_from"]),
                                 "valid_to": pl.lit(OPEN_END, dtype=schema["valid_to"]),
                                 "is_current": pl.lit(True), "is_inferred": pl.lit(True)}
    if spec.tracks_deletes:
        reset["is_deleted"] = pl.lit(False)
    # the key's first version only: later versions of an inferred key are replayed
    first = seeds.sort("valid_from").unique(subset=list(spec.natural_key), keep="first")
    return first.with_columns(**blank, **reset).select(schema.names())


def _seed(dim: pl.DataFrame, seeds: pl.DataFrame | None, spec: DimensionSpec, *, before: date
          ) -> pl.DataFrame:
    """Add the placeholders the facts of days before ``before`` inferred, as the nightly build
    did after each day's dimension step: only for keys the dimension did not hold then."""
    if seeds is None or not seeds.height:
        return dim
    sk, nk = spec.surrogate_key, list(spec.natural_key)
    due = seeds.filter(pl.col(sk) < inferred_slot(before))  # inferred on a day before it
    due = due.join(dim.select(nk), on=nk, how="anti")
    return pl.concat([dim, due]) if due.height else dim


def _range_start(wh: Warehouse, model: Model, schema: pl.Schema, reserved: pl.DataFrame
                 ) -> pl.DataFrame:
    """What a range's replay starts from: the dimension as the night before the range left it."""
    if not wh.exists(model.name):
        return reserved
    return conform_read(wh.read(model.name).select(schema.names()), schema)


def _range_replays(model: Model, cat: Catalogue, landing: Landing, span: list[date]
                   ) -> list[date]:
    """The days of a range whose input can differ from the day before (and its first): a day
    that reads what the day before read changes nothing, as a full refresh's replay assumes."""
    from starsmith.orchestration.plan import list_sources
    from starsmith.orchestration.ranges import change_days

    changes = change_days(cat, model.name, list_sources(cat, [model.name], landing), span)
    return [d for d in span if d == span[0] or d in changes]


def build_scd(model: Model, cat: Catalogue, wh: Warehouse, landing: Landing, day: date,
              run_id: str, *, full_refresh: bool, accept_changes: bool = False,
              span: list[date] | None = None) -> StepOutput:
    """The dimension's changes for ``day``; a full refresh replays every landed day from an
    empty dimension, a catch-up's range (``span``) its own days from the stored one."""
    spec = model.dimension
    assert spec is not None
    schema = dimension_schema(spec, model.schema)
    reserved = reserved_members(spec, schema).collect()
    days = input_days(model, cat, wh, landing, day, full_refresh=full_refresh)
    totals: dict[str, int] = {}
    rejects: list[pl.DataFrame] = []
    read = 0
    seeds = _placeholders(wh, model, spec, schema) if full_refresh else None
    dim = reserved if full_refresh else None
    replay = full_refresh or bool(span)
    log = None
    if span:
        days, dim = _range_replays(model, cat, landing, span), _range_start(wh, model, schema,
                                                                              reserved)
        if any(m.fact is not None and any(lk.dimension.name == model.name for lk in m.fact.lookups)
               for m in cat.models.values()):  # facts key against it: log what they saw
            log = NightLog(spec, schema, span[0])
    changed = pl.DataFrame(schema=schema)
    night_rows: list[pl.DataFrame] = []  # every version of the night's changed keys
    hashed_from_table: pl.DataFrame | None = None
    late_keys: list[pl.DataFrame] = []
    moves = 0  # rows a replay wrote
    for d in days:
        inputs, n = day_inputs(model, cat, wh, landing, d)
        read += n
        # A replay dates each day's rows with that day's run, as the nightly build did.
        day_run = run_id_for(d) if replay else run_id
        batch = run_transform(model, inputs, BuildContext(d, day_run))
        for name in (c for c in batch.columns if c in schema):  # refused as a publish would
            refuse_lossy(batch[name], schema[name], model)  # (a replay's concat would round)
        if dim is None:
            live = None
            if spec.snapshot and wh.exists(model.name):  # only what can change goes on
                diff = snapshot_diff(wh, model.name, spec, batch, schema)
                batch, live = diff.records, diff.live
                hashed_from_table = diff.hashed_from_table
                if hashed_from_table is not None:  # stored hashes missing or made otherwise
                    totals["live_hashed"] = hashed_from_table.height
                existing, max_key = _existing(wh, model, spec, batch, schema, diff.keys)
                totals["unchanged"] = totals.get("unchanged", 0) + diff.unchanged
            else:
                existing, max_key = _existing(wh, model, spec, batch, schema,
                                              day=None if spec.snapshot else d)
            if spec.snapshot and spec.tracks_deletes:
                batch, held = guard_snapshot(model, cat, wh, existing, batch, d,
                                             accept=accept_changes, live_total=live)
                totals["closes_held"] = totals.get("closes_held", 0) + held
        else:
            dim = _seed(dim, seeds, spec, before=d)
            existing, max_key = dim, _own_max(dim, spec.surrogate_key)
            if spec.snapshot and spec.tracks_deletes:  # the same guards as the nightly build
                batch, held = guard_snapshot(model, cat, wh, existing, batch, d,
                                             accept=accept_changes)
                totals["closes_held"] = totals.get("closes_held", 0) + held
        placed = place_late(model, cat, wh, existing, batch, d, day_run, max_key)
        if placed is not None:  # late keys re-derived from their history; the rest as usual
            nk = list(spec.natural_key)
            batch, max_key = placed.rest, placed.issued
            existing = existing.join(placed.keys, on=nk, how="anti")
            rejects.append(placed.rejects.with_columns(logical_date=pl.lit(d)))
            totals["late_keys_placed"] = totals.get("late_keys_placed", 0) + placed.keys.height
        frames: SCDFrames = scd_changes(
            existing.lazy(), batch.lazy(), spec, batch_time=BuildContext(d, day_run).batch_time,
            run_id=day_run, max_key=max_key, narrowed=dim is None and not spec.snapshot,
        ).collect()
        for k, v in frames.stats.items():
            totals[k] = totals.get(k, 0) + v
        rejects.append(frames.rejects.with_columns(logical_date=pl.lit(d)))
        if dim is None:
            changed = frames.changes()
            night_rows.append(frames.rows)
            if placed is not None:
                changed = pl.concat([changed, placed.rows])
                night_rows.append(placed.rows)
                late_keys.append(placed.keys)
        else:
            moves += frames.changes().height + (placed.rows.height if placed is not None else 0)
            if log is not None:
                touched = frames.changes().select(spec.natural_key)
                log.before(dim, pl.concat([touched, placed.keys.cast(touched.schema)])
                           if placed is not None else touched, d)
            dim = frames.apply(dim, spec.surrogate_key)
            if placed is not None:
                dim = pl.concat([dim.join(placed.keys, on=list(spec.natural_key), how="anti"),
                                 placed.rows])
    # A range that changed nothing (a reference list landed before it) rewrites nothing.
    unchanged = bool(span) and not moves and wh.exists(model.name)
    replay = replay and not unchanged
    if unchanged:
        rows = changed
    elif dim is not None:
        # replayed day by day: put in key order once
        rows = _seed(dim, seeds, spec, before=day + timedelta(days=1)).sort(spec.surrogate_key)
    elif wh.exists(model.name):
        rows = changed
    else:  # the first publish creates the table with its reserved members
        rows = pl.concat([reserved, changed])
    counts = {COUNTS.get(k, k): v for k, v in totals.items() if k != "rejected"}
    # A late key's versions were re-derived: every stored row of it goes, even one whose
    # valid_from moved (its surrogate key is not among the staged rows).
    moved = (wh.stage(f"{model.name}__late_keys", run_id, pl.concat(late_keys))
             if late_keys else None)
    logged = log.frame() if log is not None else None
    if span and logged is not None:  # the run log says which range the states are for
        counts |= {LOGGED: logged.height, FIRST: span[0].toordinal()}

    def statements(target: str, staged: str) -> list[exp.Expr]:
        qualified = f"main.{target}"
        if replay:
            return sql.replace_all(qualified, staged)
        gone = [sql.replace_keys(qualified, moved, spec.natural_key, [])[0]] if moved else []
        return [sql.create_like(qualified, staged), *gone,
                *sql.replace_keys(qualified, staged, (spec.surrogate_key,), schema.names())]

    hashes = None  # a snapshot dimension's stored hashes (row_hashes.py): kept in step
    if spec.snapshot and wh.dialect == "duckdb":
        if replay or not wh.exists(model.name):
            hashes = row_hashes.whole(spec, schema, rows)
        elif unchanged or not night_rows:
            hashes = row_hashes.kept(spec, schema)
        else:
            night = pl.concat(night_rows, how="diagonal_relaxed").select(schema.names())
            hashes = row_hashes.after_night(spec, schema, night, hashed_from_table)
    quarantine = (pl.concat(rejects, how="diagonal_relaxed") if rejects
                  else pl.DataFrame({"reason": []}, schema={"reason": pl.String()}))
    # The staged rows' unique key hashed (~1 ms for a night's 87k rows): proven unique, the
    # audit's contract does not group them to count repeats (quality/contract.py).
    unique = bool(model.unique_key) and surely_unique(key_hashes(rows, model.unique_key))
    # In (natural key, valid_from) order, as the builder left them: deterministic, so a re-run
    # stages the same file.
    return StepOutput(rows, quarantine, statements, read, counts, days,
                      also_staged=[moved] if moved else [], asof=logged, hashes=hashes,
                      known_unique=unique)
