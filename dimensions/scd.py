"""The SCD builder: current dimension + one batch of source records -> the versions to write.

One engine serves types 0, 1 and 2 and any per-column mix. It works on the keys the batch touches
only, so a nightly run costs what the day changed, not what the dimension holds. What it does
better than a snapshot tool:

- every change of a key in one batch becomes its own version, in order (not only the last one);
- a change dated no later than the key's latest version is never dropped: if the dimension already
  shows that state at that time it is a replay (counted, no-op), otherwise it is quarantined with
  the reason or versioned at the batch time, as the spec says (a snapshot re-sends every record,
  so there a record whose state is already the key's current state is a replay too);
- with ``DuplicatePolicy.LATEST`` the highest sequence at an instant wins; records that tie on it
  with different values are never picked: all are quarantined and the key keeps its state;
- a change is detected null-safely (NULL to NULL is no change, NULL to a value or back is);
- deletes close, flag or ignore; a key that comes back opens a new version without overlap;
- inferred members are completed in place and keep their surrogate key.

Everything here is lazy; :meth:`SCDResult.collect` runs it and raises on duplicate conflicts or
broken invariants before anything can be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from starsmith.dimensions.invariants import invariant_violations
from starsmith.dimensions.keyed import (
    at_key_end,
    at_key_start,
    key_ends,
    key_starts,
    key_total,
    last_in_key,
    same_as,
)
from starsmith.dimensions.spec import (
    OPEN_END,
    DeletePolicy,
    DimensionSpec,
    DuplicatePolicy,
    LatePolicy,
    SCDType,
)
from starsmith.dimensions.spec import ChangeDetection as Detect
from starsmith.errors import DataError, InvariantViolation

TS = pl.Datetime("us")
REJECT_COLUMNS = ("updated_at", "is_delete", "reason")
"""The builder's own columns of the rejects frame, beside the natural key and the attributes:
the record's time, whether it deletes, and why it was held back. Where a natural key column or an
attribute already has one of these names, the builder's column takes a leading underscore (as
many as it needs to be unique): see :func:`reject_columns` and :func:`reason_column`."""


def reject_columns(spec: DimensionSpec) -> tuple[str, str, str]:
    """The names of the rejects frame's (updated_at, is_delete, reason) columns for ``spec``:
    :data:`REJECT_COLUMNS`, each prefixed with ``_`` until it names no natural key column or
    attribute of the dimension."""
    taken = {*spec.natural_key, *spec.attributes}
    names: list[str] = []
    for name in REJECT_COLUMNS:
        while name in taken:
            name = f"_{name}"
        names.append(name)
    return names[0], names[1], names[2]


def reason_column(spec: DimensionSpec) -> str:
    """The rejects frame's column holding why each record was held back: ``reason`` unless the
    dimension has a column of that name (then ``_reason``, ``__reason``...)."""
    return reject_columns(spec)[2]


@dataclass(frozen=True)
class SCDFrames:
    """Collected output of one SCD step."""

    rows: pl.DataFrame  # every version of every key that changed (the invariants held on them)
    rejects: pl.DataFrame  # batch records held back, with the reason
    stats: dict[str, int]
    changed: pl.Series  # per row of ``rows``: a new version, or a stored one whose values change

    def changes(self) -> pl.DataFrame:
        """The rows a publish writes: replacing the stored rows of these surrogate keys with them
        gives ``rows`` for every changed key. A key's other versions stay as they are, so a change
        costs its own rows, not the key's whole history."""
        return self.rows.filter(self.changed)

    def apply(self, dim: pl.DataFrame, surrogate_key: str) -> pl.DataFrame:
        """``dim`` with these changes applied as a publish applies them: the stored rows of the
        changed surrogate keys replaced (a full refresh replays its days this way in memory)."""
        changes = self.changes()
        return pl.concat([dim.join(changes.select(surrogate_key), on=surrogate_key, how="anti"),
                          changes])


@dataclass(frozen=True)
class SCDResult:
    """Lazy output of :func:`scd_changes`; call :meth:`collect` to run and check it."""

    spec: DimensionSpec
    rows: pl.LazyFrame  # the new versions plus _new, _changed, valid_to_o to count from
    rejects: pl.LazyFrame
    conflicts: pl.LazyFrame
    stats: pl.LazyFrame

    def collect(self) -> SCDFrames:
        # The in-memory engine: a nightly batch is small, and this plan (joins, windows, unions)
        # ran ~3x faster there than on the streaming default (benchmarks/scd2_merge.py).
        rows, rejects, conflicts, stats = pl.collect_all(
            [self.rows, self.rejects, self.conflicts, self.stats], engine="in-memory"
        )
        counts = rows.select(
            inserted=pl.col("_new").sum().cast(pl.Int64),
            updated=(pl.col("_changed") & ~pl.col("_new")).sum().cast(pl.Int64),
            closed=(~pl.col("_new") & (pl.col("valid_to_o") == OPEN_END)
                    & (pl.col("valid_to") < OPEN_END)).sum().cast(pl.Int64),
            keys_changed=key_starts(list(self.spec.natural_key)).sum().cast(pl.Int64),
        )
        stats = pl.concat([counts, stats], how="horizontal")
        changed = rows["_changed"]
        rows = rows.select(self.spec.output_columns)
        nk = list(self.spec.natural_key)
        if conflicts.height:
            keys = _name_keys(conflicts, nk)
            raise DataError(
                f"{conflicts.height} natural key(s) have two different records at the same instant:"
                f" {keys}",
                where=f"the batch for {self.spec.name}",
                fix="Fix the source, or declare duplicates=DuplicatePolicy.LATEST with a sequence",
            )
        bad = invariant_violations(rows.lazy(), self.spec, presorted=True).collect(
            engine="in-memory")
        if bad.height:
            detail = "; ".join(
                f"{_name_keys(bad.filter(pl.col('problem') == p), nk)}: {p}"
                for p in bad["problem"].unique(maintain_order=True)
            )
            raise InvariantViolation(
                f"the new versions break the SCD2 invariants: {detail}",
                where=f"dimension {self.spec.name}",
                fix="Nothing was written; report this with the batch that caused it",
            )
        return SCDFrames(rows, rejects, stats.row(0, named=True), changed)


def _name_keys(frame: pl.DataFrame, nk: list[str], limit: int = 10) -> str:
    keys = frame.select(nk).unique(maintain_order=True)
    shown = [", ".join(f"{c}={v!r}" for c, v in zip(nk, row, strict=True))
             for row in keys.head(limit).iter_rows()]
    more = f" and {keys.height - limit} more" if keys.height > limit else ""
    return "[" + "; ".join(shown) + "]" + more


def _differs(cols: list[str], other: str) -> pl.Expr:
    """True where any column differs null-safely from its counterpart ``<other>`` expression."""
    if not cols:
        return pl.lit(False)
    return pl.any_horizontal([~pl.col(c).eq_missing(pl.col(f"{c}{other}")) for c in cols])


def _normalize(batch: pl.LazyFrame, spec: DimensionSpec, batch_time: datetime) -> pl.LazyFrame:
    """Batch records as events: key, attributes, ``_ts``, ``_dead``, ``_seq``."""
    nk, attrs = list(spec.natural_key), spec.attributes
    ts = (pl.col(spec.updated_at).cast(TS) if spec.detection is Detect.TIMESTAMP and spec.updated_at
          else pl.lit(batch_time, dtype=TS))
    dead = (pl.col(spec.deleted_flag).cast(pl.Boolean).fill_null(False) if spec.deleted_flag
            else pl.lit(False))
    seq = pl.col(spec.sequence).cast(pl.Int64) if spec.sequence else pl.col("_row").cast(pl.Int64)
    return batch.with_row_index("_row").select(
        *nk, *attrs, _ts=ts, _dead=dead, _seq=seq, _row=pl.col("_row").cast(pl.Int64)
    )


def _reject(frame: pl.LazyFrame, spec: DimensionSpec, reason: pl.Expr) -> pl.LazyFrame:
    at, dead, why = reject_columns(spec)
    return frame.select(
        *spec.natural_key, *spec.attributes,
        pl.col("_ts").alias(at), pl.col("_dead").alias(dead), reason.alias(why),
    )


def scd_changes(
    existing: pl.LazyFrame,
    batch: pl.LazyFrame,
    spec: DimensionSpec,
    *,
    batch_time: datetime,
    run_id: str,
    max_key: int,
    narrowed: bool = False,
) -> SCDResult:
    """Apply one batch to a dimension.

    ``existing`` holds the dimension's rows (at least every version of every key in the batch; the
    whole current dimension for a snapshot source, whose absent keys count as deleted).
    ``batch`` holds source records: natural key, attributes, and the spec's updated_at,
    deleted_flag and sequence columns where declared. ``max_key`` is the largest surrogate key
    ever issued; new versions are numbered after it in (natural key, valid_from) order, so a re-run
    issues the same keys and no key is ever reused.

    ``narrowed``: ``existing`` holds only rows of keys in the batch (the build step reads just
    those), so the builder need not select them again (a semi-join over every row of them).

    Returns every version of every key whose rows change, with a mask of the rows that are new or
    changed (write those: delete the stored rows of their surrogate keys, insert them), the
    rejected records with reasons, and counts.

    How: the touched keys' stored versions and the batch's records are put in one sequence, in
    (key, time, sequence) order, sorted once. Everything after is a pass over that sequence (masked
    shifts, fills and gathers within each key's run of rows), so there is no join back, no window
    and no second sort; the versions come out in (key, valid_from) order.
    """
    nk, attrs = list(spec.natural_key), spec.attributes
    sk = spec.surrogate_key
    existing = existing.filter(pl.col(sk) >= 0)  # reserved members never change
    ev = _normalize(batch, spec, batch_time)
    null_key = ev.filter(pl.any_horizontal([pl.col(c).is_null() for c in nk]) | pl.col("_ts").is_null())
    ev = ev.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in nk]) & pl.col("_ts").is_not_null())
    if spec.snapshot and spec.tracks_deletes:
        gone = (
            existing.filter(pl.col("is_current") & ~pl.col("is_deleted"))
            .select(nk)
            .join(ev.select(nk).unique(), on=nk, how="anti")
            .with_columns(_ts=pl.lit(batch_time, dtype=TS), _dead=pl.lit(True),
                          _seq=pl.lit(2**62, dtype=pl.Int64),
                          _row=-pl.int_range(1, pl.len() + 1, dtype=pl.Int64))  # one each
        )
        ev = pl.concat([ev, gone], how="diagonal_relaxed")
    if not spec.tracks_deletes:
        ev = ev.filter(~pl.col("_dead"))
    # .cache() marks frames read by several branches: computed once per collect, not per use.
    old = (existing if narrowed else existing.join(ev.select(nk).unique(), on=nk, how="semi"))
    if not spec.tracks_deletes:
        old = old.with_columns(is_deleted=pl.lit(False))
    old = old.cache()
    seq = _sequence(old, ev, spec)

    # Exact repeats (same key, time and state) collapse to the first to arrive, or with a
    # sequence to the copy with the highest one (the copy that competes with the key's other
    # records at that instant). Only records sharing a (key, time) can repeat one, and in this
    # order those are neighbours: only they are compared whole, so a batch of distinct instants
    # never hashes its string attributes.
    every, group = [*nk, *attrs, "_ts", "_dead"], [*nk, "_ts", "_old"]
    cand = ~pl.col("_old") & (same_as(group, 1) | same_as(group, -1))
    seq = seq.with_columns(_cand=cand)
    shared = pl.col("_row").filter(pl.col("_cand"))
    if spec.sequence:
        order = [pl.col("_seq").filter(pl.col("_cand")), shared]
        kept_first = pl.int_range(shared.len(), dtype=pl.get_index_type()).sort_by(
            order, descending=[True, False], nulls_last=True)
    else:
        kept_first = shared.arg_sort()
    repeats = shared.gather(kept_first).filter(
        ~pl.struct(every).filter(pl.col("_cand")).gather(kept_first).is_first_distinct())
    # A membership test, not an anti-join: the join copied every column (~50 ms for 350k rows).
    seq = seq.with_columns(_repeat=pl.col("_row").is_in(repeats.implode()).fill_null(False)
                           ).cache()
    exact_dups = seq.select(exact_duplicates=pl.col("_repeat").sum().cast(pl.Int64))

    # A record dated no later than the last instant the dimension knows for its key is late.
    fresh = pl.col("_last").is_null() | (pl.col("_ts") > pl.col("_last"))
    late = _replay_check(seq.filter(~pl.col("_old") & ~fresh & ~pl.col("_repeat")), old, spec)
    seq = seq.filter(pl.col("_old") | (fresh & ~pl.col("_repeat")))
    replayed = late.filter(pl.col("_applied"))
    late = late.filter(~pl.col("_applied"))
    rejects = [_reject(null_key, spec, pl.lit("natural key or updated_at is NULL"))]
    if spec.late_changes is LatePolicy.BATCH_TIME:
        movable = pl.lit(batch_time, dtype=TS) > pl.col("_last")
        moved = late.filter(movable).with_columns(_ts=pl.lit(batch_time, dtype=TS))
        seq = pl.concat([seq, moved.select(seq.collect_schema().names())]).sort(
            [*nk, "_ts", "_seq"], maintain_order=True)
        late = late.filter(~movable)
    rejects.append(_reject(late, spec, pl.format(
        "late change: dated {} but the dimension already has a version from {} for this key",
        pl.col("_ts").dt.to_string("%Y-%m-%d %H:%M:%S"),
        pl.col("_last").dt.to_string("%Y-%m-%d %H:%M:%S"))))

    # Two different records of one key at one instant: a declared policy decides. They are
    # neighbours in this order; a stored version never shares an instant with a fresh record.
    seq = seq.with_columns(_same_next=same_as(group, -1), _same_prev=same_as(group, 1)).cache()
    conflicts = (seq.filter(pl.col("_same_next") | pl.col("_same_prev"))
                 .select(nk).unique(maintain_order=True))
    if spec.duplicates is DuplicatePolicy.LATEST:
        # The highest sequence wins. Records sharing it (different values: exact repeats are
        # gone) tie, and a tie is never picked: each is held back and the key keeps its state.
        # In this order they are the last rows of their (key, time) run.
        same_seq = [*group, "_seq"]
        tied = ((same_as(same_seq, 1) | same_as(same_seq, -1))
                & pl.col("_seq").eq_missing(at_key_end(pl.col("_seq"), group)))
        seq = seq.with_columns(_tied=tied)
        instant = (spec.updated_at if spec.detection is Detect.TIMESTAMP and spec.updated_at
                   else "batch time")
        rejects.append(_reject(seq.filter(pl.col("_same_next") & ~pl.col("_tied")), spec, pl.lit(
            f"superseded: another record of this key at the same instant has a higher"
            f" {spec.sequence}")))
        rejects.append(_reject(seq.filter(pl.col("_tied")), spec, pl.lit(
            f"tie: another record of this key has the same {instant} and {spec.sequence}"
            f" with different values")))
        seq = seq.filter(~pl.col("_same_next") & ~pl.col("_tied"))
        conflicts = seq.filter(pl.lit(False)).select(nk)

    rows, ignored = _versions(seq, spec, run_id=run_id, max_key=max_key)
    reject_frame = pl.concat(rejects, how="vertical_relaxed")
    stats = pl.concat(
        [
            ignored,
            exact_dups,
            replayed.select(replayed=pl.len().cast(pl.Int64)),
            reject_frame.select(rejected=pl.len().cast(pl.Int64)),
        ],
        how="horizontal",
    )
    return SCDResult(spec, rows, reject_frame, conflicts, stats)


def _sequence(old: pl.LazyFrame, ev: pl.LazyFrame, spec: DimensionSpec) -> pl.LazyFrame:
    """Stored versions and batch records in one frame, in (key, time, sequence) order, each row
    with ``_last``: the last instant the dimension knows for its key (its latest version's
    start, or its end if a delete closed it; NULL for a new key).

    A stored version sorts before a record at the same instant (its ``_seq`` is the smallest);
    records at one (key, time, sequence) keep their arrival order.
    """
    nk, attrs = list(spec.natural_key), spec.attributes
    closed_at = pl.when(pl.col("valid_to") < OPEN_END).then(pl.col("valid_to"))
    stored = old.select(
        *nk, *attrs, _ts="valid_from",
        _dead=pl.col("is_deleted") | (pl.col("valid_to") < OPEN_END),
        _seq=pl.lit(-(2**63), dtype=pl.Int64), _row=pl.lit(None, dtype=pl.Int64),
        _old=pl.lit(True), _inferred="is_inferred",
        _sk=spec.surrogate_key, _vt="valid_to", _cur="is_current", _del="is_deleted",
        _run="run_id", _known=pl.max_horizontal("valid_from", closed_at),
    )
    records = ev.select(*nk, *attrs, "_ts", "_dead", "_seq", "_row", _old=pl.lit(False),
                        _inferred=pl.lit(False))
    seq = pl.concat([stored, records], how="diagonal_relaxed").sort(
        [*nk, "_ts", "_seq"], maintain_order=True)
    # Versions never overlap, so the key's last stored row knows the latest instant: carry it
    # forward to the key's last row, then read it from there on every row of the key.
    never = pl.lit(datetime(1, 1, 1), dtype=TS)
    known = (pl.when(pl.col("_old")).then(pl.col("_known")).when(key_starts(nk)).then(never)
             .forward_fill())
    last = at_key_end(known, nk)
    return seq.with_columns(_last=pl.when(last > never).then(last)).drop("_known")


def _replay_check(late: pl.LazyFrame, old: pl.LazyFrame, spec: DimensionSpec) -> pl.LazyFrame:
    """Late records, each with ``_applied``: the dimension already shows that state at that time
    (a replay, counted and otherwise ignored). Late records are rare: joins are fine here.

    A snapshot re-sends every record every time, so a record dated before its key's latest
    version would be held back again on every later batch although nothing changed. There a late
    record whose state is the key's current state (its type-2 and type-1 values, alive; or, for a
    delete, a key already deleted or closed) is no change either: counted as a replay."""
    nk, t2 = list(spec.natural_key), spec.of_type(SCDType.VERSIONED)
    if spec.snapshot:
        late = _same_as_current(late, old, spec)
    valid_then = late.join(
        old.select(*nk, *[pl.col(c).alias(f"{c}_v") for c in t2],
                   "valid_from", "valid_to", "is_deleted"),
        on=nk, how="inner",
    ).filter((pl.col("valid_from") <= pl.col("_ts")) & (pl.col("_ts") < pl.col("valid_to")))
    valid_then = valid_then.select(
        "_row", "_ts",
        _same=pl.when(pl.col("_dead")).then(pl.col("is_deleted"))
        .otherwise(~pl.col("is_deleted") & ~_differs(t2, "_v")),
    )
    applied = (pl.when(pl.col("_dead")).then(pl.col("_same").fill_null(True))
               .otherwise(pl.col("_same").fill_null(False)))
    if spec.snapshot:
        applied = applied | pl.col("_unchanged")
    return late.join(valid_then, on=["_row", "_ts"], how="left", maintain_order="left"
                     ).with_columns(_applied=applied)


def _same_as_current(late: pl.LazyFrame, old: pl.LazyFrame, spec: DimensionSpec) -> pl.LazyFrame:
    """Late records with ``_unchanged``: the record's state is its key's current state. A key
    has at most one current version; one with none was closed by a delete."""
    nk = list(spec.natural_key)
    compared = [*spec.of_type(SCDType.VERSIONED), *spec.of_type(SCDType.OVERWRITE)]
    current = old.filter(pl.col("is_current")).select(
        *nk, *[pl.col(c).alias(f"{c}_now") for c in compared],
        _del_now=pl.col("is_deleted"), _has_now=pl.lit(True))
    dead_now = pl.col("_has_now").is_null() | pl.col("_del_now")
    unchanged = (pl.when(pl.col("_dead")).then(dead_now)
                 .otherwise(~dead_now & ~_differs(compared, "_now")))
    return (late.join(current, on=nk, how="left", maintain_order="left")
            .with_columns(_unchanged=unchanged.fill_null(False))
            .drop([f"{c}_now" for c in compared], "_del_now", "_has_now"))


def _versions(seq: pl.LazyFrame, spec: DimensionSpec, *, run_id: str, max_key: int
              ) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Turn the sequence of the touched keys' stored versions and fresh records (every fresh
    record is later than every stored version of its key) into the keys' rows to write."""
    nk, attrs, sk = list(spec.natural_key), spec.attributes, spec.surrogate_key
    t2, t1, t0 = (spec.of_type(SCDType.VERSIONED), spec.of_type(SCDType.OVERWRITE),
                  spec.of_type(SCDType.FIXED))
    carried = [c for c in attrs if c not in t1]
    stored, dead = pl.col("_old"), pl.col("_dead")
    # "The previous row of the same key" is a global shift masked at key changes: window
    # functions evaluated per group cost ~10 us a key, which dominates a nightly batch.
    first = key_starts(nk)
    prev = {f"{c}_p": pl.when(first).then(None).otherwise(pl.col(c).shift(1))
            for c in [*attrs, "_dead", "_inferred", "_old"]}
    seq = seq.with_columns(
        _first=first, **prev,
        _last_stored=stored & (key_ends(nk) | ~stored.shift(-1).fill_null(False)),
        _live=last_in_key(~stored & ~dead, nk),  # the key's last live record: its type-1 values
    )
    # A record right after an inferred member (and alive) completes it in place.
    fill = ~stored & ~pl.col("_first") & pl.col("_inferred_p") & pl.col("_old_p") & ~dead
    boundary = (
        pl.when(stored).then(False)
        .when(pl.col("_first")).then(~dead)
        .when(fill).then(False)
        .when(dead & pl.col("_dead_p")).then(False)
        .when(dead != pl.col("_dead_p")).then(True)
        .otherwise(_differs(t2, "_p"))
    )
    seq = seq.with_columns(_fill=fill, _boundary=boundary)
    filled = pl.col("_last_stored") & pl.col("_fill").shift(-1).fill_null(False)
    has = pl.col("_live").is_not_null()
    own = {c: pl.when(~stored & dead).then(pl.col(f"{c}_p")).otherwise(pl.col(c)) for c in attrs}
    latest = {c: pl.col(c).gather(pl.col("_live")) for c in t1}  # the key's last live values
    seq = seq.with_columns(
        *[pl.when(filled).then(pl.col(c).shift(-1)).otherwise(own[c]).alias(c) for c in carried],
        *[pl.when(has).then(latest[c]).otherwise(own[c]).alias(c) for c in t1],
        _t1_changed=(stored & has & pl.any_horizontal(
            [~latest[c].eq_missing(pl.col(c)) for c in t1])) if t1 else pl.lit(False),
        _filled=filled,
    ).cache()
    ignored = seq.filter(dead & ~stored & ~pl.col("_boundary")).select(
        ignored_deletes=pl.len().cast(pl.Int64))

    versions = seq.filter(stored | pl.col("_boundary")).with_columns(
        _next=pl.when(key_ends(nk)).then(None).otherwise(pl.col("_ts").shift(-1)))
    if spec.deletes is DeletePolicy.INVALIDATE:
        versions = versions.filter(stored | ~dead)
    # The latest stored version closes at the next new one, unless a delete closed it already.
    reopened = (pl.col("_vt") == OPEN_END) & pl.col("_next").is_not_null() & pl.col("_last_stored")
    valid_to = pl.when(stored).then(pl.when(reopened).then(pl.col("_next")).otherwise(pl.col("_vt"))
                                    ).otherwise(pl.coalesce("_next", pl.lit(OPEN_END, dtype=TS)))
    rows = versions.select(
        pl.when(stored).then(pl.col("_sk"))
        .otherwise((~stored).cast(pl.Int64).cum_sum() + max_key).alias(sk),
        *nk, *attrs,
        valid_from="_ts",
        valid_to=valid_to,
        is_deleted=pl.when(stored).then(pl.col("_del")).otherwise(dead),
        is_inferred=stored & pl.col("_inferred") & ~pl.col("_filled"),
        run_id=pl.when(stored).then(pl.col("_run")).otherwise(pl.lit(run_id)),
        valid_to_o=pl.when(stored).then(pl.col("_vt")),
        _current_o=pl.when(stored).then(pl.col("_cur")),
        _new=~stored,
        _changed=~stored | pl.col("_filled") | reopened | pl.col("_t1_changed"),
    )
    if t0:  # a fixed column keeps the key's first value (rows are in (key, valid_from) order)
        first_value = {c: at_key_start(pl.col(c), nk) for c in t0}
        rows = rows.with_columns(
            *[v.alias(c) for c, v in first_value.items()],
            _changed=pl.col("_changed") | pl.any_horizontal(
                [~v.eq_missing(pl.col(c)) for c, v in first_value.items()]),
        )
    current = pl.col("valid_to") == OPEN_END
    changed = pl.col("_changed") | (current != pl.col("_current_o")).fill_null(False)
    rows = rows.with_columns(
        is_current=current, _changed=changed,
        run_id=pl.when(changed).then(pl.lit(run_id)).otherwise(pl.col("run_id")),
    )
    rows = rows.filter(key_total(pl.col("_changed"), nk) > 0)  # every row of a changed key
    keep = [*spec.output_columns, "_new", "_changed", "valid_to_o"]
    return rows.select(keep), ignored
