"""The SCD builder: current dimension + one batch of source records -> the versions to write.

One engine serves types 0, 1 and 2 and any per-column mix. It works on the keys the batch touches
only, so a nightly run costs what the day changed, not what the dimension holds. What it does
better than a snapshot tool:

- every change of a key in one batch becomes its own version, in order (not only the last one);
- a change dated no later than the key's latest version is never dropped: if the dimension already
  shows that state at that time it is a replay (counted, no-op), otherwise it is quarantined with
  the reason or versioned at the batch time, as the spec says;
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

from dimensions.invariants import invariant_violations
from dimensions.keyed import key_ends, key_starts, key_total, same_as
from dimensions.spec import (
    OPEN_END,
    DeletePolicy,
    DimensionSpec,
    DuplicatePolicy,
    LatePolicy,
    SCDType,
)
from dimensions.spec import ChangeDetection as Detect
from starsmith.errors import DataError, InvariantViolation

TS = pl.Datetime("us")
REJECT_COLUMNS = ("updated_at", "is_delete", "reason")


@dataclass(frozen=True)
class SCDFrames:
    """Collected output of one SCD step."""

    rows: pl.DataFrame  # every version of every key that changed: replaces those keys' rows
    rejects: pl.DataFrame  # batch records held back, with the reason
    stats: dict[str, int]


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
        return SCDFrames(rows, rejects, stats.row(0, named=True))


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


def _drop_exact_duplicates(ev: pl.LazyFrame, every: list[str], instant: list[str]
                           ) -> pl.LazyFrame:
    """The events without repeats of an earlier one (same key, time, state), in arrival order.

    Only records sharing a (key, time) with another can repeat one, so only those are hashed
    whole: a batch of distinct instants (the usual case) never hashes its string attributes.
    """
    ev = ev.with_columns(_cand=pl.struct(instant).is_duplicated())
    return pl.concat([
        ev.filter(~pl.col("_cand")),
        ev.filter(pl.col("_cand")).unique(subset=every, keep="first", maintain_order=True),
    ]).sort("_row", maintain_order=True).drop("_cand")


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
    return frame.select(
        *spec.natural_key, *spec.attributes,
        updated_at=pl.col("_ts"), is_delete=pl.col("_dead"), reason=reason,
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

    Returns every version of every key whose rows change (write them by deleting those keys'
    rows and inserting these), the rejected records with reasons, and counts.
    """
    nk, attrs, t2 = list(spec.natural_key), spec.attributes, spec.of_type(SCDType.VERSIONED)
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
                          _seq=pl.lit(2**62, dtype=pl.Int64), _row=pl.lit(-1, dtype=pl.Int64))
        )
        ev = pl.concat([ev, gone], how="diagonal_relaxed")
    if not spec.tracks_deletes:
        ev = ev.filter(~pl.col("_dead"))
    before = ev
    # .cache() marks frames read by several branches: computed once per collect, not per use
    # (without it the plan recomputed them, ~2x slower on a 200k-key batch).
    ev = _drop_exact_duplicates(ev, [*nk, *attrs, "_ts", "_dead"], [*nk, "_ts"]).cache()
    exact_dups = pl.concat(
        [before.select(_a=pl.len()), ev.select(_b=pl.len())], how="horizontal"
    ).select(exact_duplicates=(pl.col("_a") - pl.col("_b")).cast(pl.Int64))

    old = (existing if narrowed else existing.join(ev.select(nk).unique(), on=nk, how="semi")
           ).cache()
    if not spec.tracks_deletes:
        old = old.with_columns(is_deleted=pl.lit(False))
    # Each touched key's latest version (versions never overlap, so the latest start, or its
    # end if a delete closed it, is the last instant the dimension knows about for the key).
    latest = old.sort([*nk, "valid_from"]).filter(key_ends(nk)).cache()
    last = latest.select(*nk, _last=pl.max_horizontal(
        "valid_from", pl.when(pl.col("valid_to") < OPEN_END).then(pl.col("valid_to"))))
    ev = ev.join(last, on=nk, how="left", nulls_equal=False).cache()
    fresh = ev.filter(pl.col("_last").is_null() | (pl.col("_ts") > pl.col("_last")))
    late = ev.filter(pl.col("_ts") <= pl.col("_last"))

    # A late record whose state the dimension already shows at that time is a replay.
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
    late = late.join(valid_then, on=["_row", "_ts"], how="left").with_columns(
        _applied=pl.when(pl.col("_dead")).then(pl.col("_same").fill_null(True))
        .otherwise(pl.col("_same").fill_null(False))
    )
    replayed = late.filter(pl.col("_applied"))
    late = late.filter(~pl.col("_applied"))
    rejects = [
        _reject(null_key, spec, pl.lit("natural key or updated_at is NULL")),
    ]
    if spec.late_changes is LatePolicy.BATCH_TIME:
        movable = pl.lit(batch_time, dtype=TS) > pl.col("_last")
        fresh = pl.concat(
            [fresh, late.filter(movable).with_columns(_ts=pl.lit(batch_time, dtype=TS))],
            how="diagonal_relaxed",
        )
        late = late.filter(~movable)
    rejects.append(_reject(late, spec, pl.format(
        "late change: dated {} but the dimension already has a version from {} for this key",
        pl.col("_ts").dt.to_string("%Y-%m-%d %H:%M:%S"),
        pl.col("_last").dt.to_string("%Y-%m-%d %H:%M:%S"))))

    # Two different records of one key at one instant: a declared policy decides. In (key, time,
    # sequence) order a record shares its instant with a neighbour or with nobody, so shifts
    # find them (windows over (key, time) cost ~3x more on a 200k-record batch).
    group = [*nk, "_ts"]
    fresh = fresh.sort([*group, "_seq"], maintain_order=True).with_columns(
        _same_next=same_as(group, -1), _same_prev=same_as(group, 1)).cache()
    shared = pl.col("_same_next") | pl.col("_same_prev")
    conflicts = fresh.filter(shared).select(nk).unique(maintain_order=True)
    if spec.duplicates is DuplicatePolicy.LATEST:
        superseded = fresh.filter(pl.col("_same_next"))
        rejects.append(_reject(superseded, spec, pl.lit(
            f"superseded: another record of this key at the same instant has a higher"
            f" {spec.sequence}")))
        fresh = fresh.filter(~pl.col("_same_next"))
        conflicts = fresh.filter(pl.lit(False)).select(nk)

    rows, counts = _versions(old, latest, fresh, spec, run_id=run_id, max_key=max_key)
    reject_frame = pl.concat(rejects, how="vertical_relaxed")
    stats = pl.concat(
        [
            counts,
            exact_dups,
            replayed.select(replayed=pl.len().cast(pl.Int64)),
            reject_frame.select(rejected=pl.len().cast(pl.Int64)),
        ],
        how="horizontal",
    )
    return SCDResult(spec, rows, reject_frame, conflicts, stats)


def _versions(
    old: pl.LazyFrame, latest: pl.LazyFrame, fresh: pl.LazyFrame, spec: DimensionSpec, *,
    run_id: str, max_key: int,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Turn the touched keys' old versions (``latest``: each key's last) plus their fresh events
    into the keys' new versions."""
    nk, attrs, sk = list(spec.natural_key), spec.attributes, spec.surrogate_key
    t2, t1, t0 = (spec.of_type(SCDType.VERSIONED), spec.of_type(SCDType.OVERWRITE),
                  spec.of_type(SCDType.FIXED))
    seeds = latest.select(
        *nk, *attrs, _ts="valid_from",
        _dead=pl.col("is_deleted") | (pl.col("valid_to") < OPEN_END),
        _inferred="is_inferred", _seed=pl.lit(True), _seq=pl.lit(-1, dtype=pl.Int64),
        _sk=sk, _vt="valid_to",
    )
    events = fresh.select(
        *nk, *attrs, "_ts", "_dead", "_seq",
        _inferred=pl.lit(False), _seed=pl.lit(False),
    )
    seq = pl.concat([seeds, events], how="diagonal_relaxed").sort([*nk, "_ts", "_seq"])
    # Sorted by key, so "previous row of the same key" is a global shift masked at key changes:
    # window functions evaluated per group cost ~10 us a key, which dominates a nightly batch.
    first = key_starts(nk)
    prev = {f"{c}_p": pl.when(first).then(None).otherwise(pl.col(c).shift(1))
            for c in [*attrs, "_dead", "_inferred", "_seed"]}
    seq = seq.with_columns(_first=first, **prev)
    fill = ~pl.col("_seed") & ~pl.col("_first") & pl.col("_inferred_p") & pl.col("_seed_p") & ~pl.col("_dead")
    boundary = (
        pl.when(pl.col("_seed")).then(False)
        .when(pl.col("_first")).then(~pl.col("_dead"))
        .when(fill).then(False)
        .when(pl.col("_dead") & pl.col("_dead_p")).then(False)
        .when(pl.col("_dead") != pl.col("_dead_p")).then(True)
        .otherwise(_differs(t2, "_p"))
    )
    seq = seq.with_columns(_fill=fill, _boundary=boundary).cache()
    ignored_deletes = seq.filter(pl.col("_dead") & ~pl.col("_seed") & ~pl.col("_boundary"))

    versions = seq.filter(pl.col("_seed") | pl.col("_boundary")).with_columns(
        _next=pl.when(key_ends(nk)).then(None).otherwise(pl.col("_ts").shift(-1))
    )
    # The batch's last live record per key (seq is in (key, time, sequence) order) gives every
    # row of the key its type-1 values; joined to what each key's other rows are patched by, not
    # to every row afterwards (that join cost ~15% of the builder).
    carried = [c for c in attrs if c not in t1]
    last_live = seq.filter(~pl.col("_seed") & ~pl.col("_dead")).filter(key_ends(nk)).select(
        *nk, *[pl.col(c).alias(f"{c}_l") for c in t1], _has=pl.lit(True))
    has = pl.col("_has").fill_null(False)
    # The seed (latest old version) closes at the next boundary, unless a delete closed it already.
    fills = seq.filter(pl.col("_fill")).select(*nk, **{f"{c}_f": pl.col(c) for c in carried},
                                               _filled=pl.lit(True))
    patch = versions.filter(pl.col("_seed")).join(fills, on=nk, how="left")
    if t1:
        patch = patch.join(last_live, on=nk, how="left")
    patch = patch.select(
        *nk, "_sk", "_filled", *[f"{c}_f" for c in carried],
        *([*[f"{c}_l" for c in t1], "_has"] if t1 else []),
        _vt_new=pl.when((pl.col("_vt") == OPEN_END) & pl.col("_next").is_not_null())
        .then(pl.col("_next")).otherwise(pl.col("_vt")),
    )
    # Each row says whether it changes as it is made (a join back to the old rows to compare
    # every column cost ~10% of the builder): old rows by patch, type-1 or type-0 overwrite;
    # new rows always. Stored nk, valid_from and is_deleted never change.
    seed = pl.col(sk) == pl.col("_sk")
    filled = pl.col("_filled").fill_null(False) & seed
    vt_new = pl.when(seed).then(pl.coalesce("_vt_new", "valid_to")).otherwise(pl.col("valid_to"))
    t1_changed = (has & _differs(t1, "_l")) if t1 else pl.lit(False)
    old_rows = old.join(patch, on=nk, how="left").with_columns(
        *[pl.when(filled).then(pl.col(f"{c}_f")).otherwise(pl.col(c)).alias(c) for c in carried],
        *[pl.when(has).then(pl.col(f"{c}_l")).otherwise(pl.col(c)).alias(c) for c in t1],
        valid_to=vt_new,
        is_inferred=pl.when(filled).then(False).otherwise(pl.col("is_inferred")),
        valid_to_o="valid_to", _current_o="is_current", _new=pl.lit(False),
        _changed=filled | ~vt_new.eq_missing(pl.col("valid_to")) | t1_changed,
    )

    new = versions.filter(~pl.col("_seed"))
    if spec.deletes is DeletePolicy.INVALIDATE:
        new = new.filter(~pl.col("_dead"))
    if t1:
        new = new.join(last_live, on=nk, how="left", maintain_order="left")
    dead = pl.col("_dead")
    own = {c: pl.when(dead).then(pl.col(f"{c}_p")).otherwise(pl.col(c)) for c in attrs}
    new_rows = new.select(  # seq is in (key, time) order, and filters keep it
        *nk,
        *[own[c].alias(c) for c in carried],
        *[pl.when(has).then(pl.col(f"{c}_l")).otherwise(own[c]).alias(c) for c in t1],
        valid_from="_ts",
        valid_to=pl.coalesce("_next", pl.lit(OPEN_END, dtype=TS)),
        is_deleted="_dead",
        is_inferred=pl.lit(False),
        run_id=pl.lit(run_id),
        valid_to_o=pl.lit(None, dtype=TS), _current_o=pl.lit(None, dtype=pl.Boolean),
        _new=pl.lit(True), _changed=pl.lit(True),
    ).with_columns((pl.int_range(1, pl.len() + 1, dtype=pl.Int64) + max_key).alias(sk))

    cols = [sk, *nk, *attrs, "valid_from", "valid_to", "is_deleted", "is_inferred", "run_id",
            "valid_to_o", "_current_o", "_new", "_changed"]
    rows = pl.concat([old_rows.select(cols), new_rows.select(cols)], how="vertical_relaxed")
    if t0:
        rows = rows.with_columns(
            pl.col(c).sort_by("valid_from").first().over(nk).alias(f"{c}_0") for c in t0
        ).with_columns(
            *[pl.col(f"{c}_0").alias(c) for c in t0],
            _changed=pl.col("_changed") | _differs(t0, "_0"),
        )
    current = pl.col("valid_to") == OPEN_END
    changed = pl.col("_changed") | (current != pl.col("_current_o")).fill_null(False)
    rows = rows.with_columns(
        is_current=current, _changed=changed,
        run_id=pl.when(changed).then(pl.lit(run_id)).otherwise(pl.col("run_id")),
    ).sort([*nk, "valid_from"])
    rows = rows.filter(key_total(pl.col("_changed"), nk) > 0)  # every row of a changed key
    side = ignored_deletes.select(ignored_deletes=pl.len().cast(pl.Int64))
    keep = [*spec.output_columns, "_new", "_changed", "valid_to_o"]
    return rows.select(keep), side
