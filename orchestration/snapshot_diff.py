"""A full snapshot, narrowed to what changed before the SCD builder sees it.

A snapshot source sends every record every day, so to the builder every key looks touched: it
would sort and pass over the whole dimension and the whole snapshot (20M rows for a 10M-row
dimension) to find the ~1% that changed. Here the warehouse engine finds them first, in one
join of the snapshot's keys and compared columns with the current versions:

- a record is *unchanged* when its key's current version is alive (not deleted, not an inferred
  placeholder) and every type-2 and type-1 attribute equals the record's, null-safely. Such a
  record can change nothing: the builder would see no boundary and no type-1 update (a type-0
  column keeps the key's first value anyway). It is dropped, and counted;
- every other record goes to the builder: new keys, changed values, keys coming back from a
  delete, placeholders to complete, records with a NULL key or time (the builder quarantines
  them), records flagged as deletes, and every record of a key the snapshot holds more than once
  (the builder decides duplicates as a whole);
- the keys the snapshot lacks are read too (their current versions close), and the count of the
  dimension's own live keys is what the snapshot guard measures closes against.

On DuckDB each record is reduced to (key, one 64-bit hash of its compared values), hashed by
Polars, and compared with the hashes stored for the live versions (``row_hashes.py``): the night
reads two integers a key, not every current version's attributes, and hands the engine no text.
One integer key over a dense range is compared by direct addressing (the stored hashes in an
array a key: ~0.3 s for 10M); other keys join (key, hash) in the engine (~1 s). A hash that
differs is a change for certain; equal hashes with different values (odds about 2^-64 per changed
record) would keep the old version for that day. Other engines compare the columns
(``IS DISTINCT FROM``). Only the changed keys' versions are then read into memory, so the
builder's cost grows with the day's changes, not with the dimension.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from starsmith.dimensions import DimensionSpec
from starsmith.dimensions.spec import INFERRED_BASE, ChangeDetection
from starsmith.facts.packed import CHUNK, DENSE
from starsmith.loaders.target import Warehouse, hashes_table
from starsmith.orchestration import row_hashes
from starsmith.orchestration.row_hashes import HASH, compared_columns


@dataclass(frozen=True)
class SnapshotDiff:
    """What of a snapshot can change the dimension."""

    records: pl.DataFrame  # the batch's records the builder must see
    keys: pl.DataFrame  # natural keys whose stored versions it needs: the records' and the gone
    live: int  # the dimension's own live keys (current, alive, not inferred)
    unchanged: int  # records dropped: their key's current version already says the same
    # the live versions' hashes, when the stored ones were missing and the table was read
    hashed_from_table: pl.DataFrame | None = None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _on(nk: list[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{_q(c)} = {right}.{_q(c)}" for c in nk)


def snapshot_diff(wh: Warehouse, table: str, spec: DimensionSpec, batch: pl.DataFrame,
                  schema: pl.Schema) -> SnapshotDiff:
    """Narrow ``batch`` (a whole snapshot) to the records that can change ``table``.

    Each record's key and hash (or compared columns) against the live current versions': a
    record with no live match, or matched by an inferred placeholder, or with any value
    different, is kept; a live version with no record is a key the snapshot lacks."""
    nk = list(spec.natural_key)
    if wh.dialect == "duckdb":
        found, base, maybe_twice = _by_hash(wh, table, spec, batch, schema)
    else:
        found, base, maybe_twice = _by_columns(wh, table, spec, batch), None, True
    sent = found.filter(pl.col("_i").is_not_null())
    keep = pl.zeros(batch.height, pl.Boolean, eager=True).scatter(sent["_i"], True)
    # Every record of a key sent twice goes on: the builder judges duplicates as a whole.
    # (Counting distinct keys first is ~3x cheaper than marking duplicates, and most days
    # have none.)
    side = batch.select(nk)
    if maybe_twice and side.n_unique() < side.height:
        twice = pl.struct(nk).is_duplicated() if len(nk) > 1 else pl.col(nk[0]).is_duplicated()
        keep = keep | side.select(twice).to_series()
    records = batch.filter(keep)
    needed = [records.select(nk).drop_nulls()]
    live = 0
    if spec.tracks_deletes:  # a snapshot's absent keys are deleted: their versions close
        gone = found.filter(pl.col("_i").is_null()).select(nk)
        needed.append(gone)
        sk = spec.surrogate_key
        live = int(wh.query(
            f"SELECT count(*) AS n FROM main.{_q(table)} c WHERE c.is_current AND NOT"
            f" c.is_deleted AND NOT c.is_inferred AND c.{_q(sk)} >= 0 AND c.{_q(sk)} < ?",
            [INFERRED_BASE])["n"][0])
    wanted = pl.concat(needed, how="vertical_relaxed").unique()
    return SnapshotDiff(records, wanted, live, batch.height - records.height, base)


def _forced(spec: DimensionSpec) -> pl.Expr | None:
    """Records that go to the builder whatever they hold: no update time to order them by, or
    flagged as deletes (read as the builder reads the flag). None: no such record."""
    force = []
    if spec.detection is ChangeDetection.TIMESTAMP and spec.updated_at:
        force.append(pl.col(spec.updated_at).is_null())
    if spec.deleted_flag:
        force.append(pl.col(spec.deleted_flag).cast(pl.Boolean).fill_null(False))
    return pl.any_horizontal(force) if force else None


def _by_hash(wh: Warehouse, table: str, spec: DimensionSpec, batch: pl.DataFrame,
             schema: pl.Schema) -> tuple[pl.DataFrame, pl.DataFrame | None, bool]:
    """(the batch's row, or NULL for a live key it lacks; the key) of what differs, from the
    stored hashes; with the live versions hashed from the table when those are missing; and
    whether a stored key may have been sent twice."""
    nk, sk = list(spec.natural_key), spec.surrogate_key
    rebuilt = None if row_hashes.stored(wh, table, spec, schema) else row_hashes.from_table(
        wh, table, spec, schema)
    sent = row_hashes.hashed(batch, spec, schema).with_columns(
        _i=pl.int_range(pl.len(), dtype=pl.get_index_type()))
    force = _forced(spec)
    if force is not None:
        sent = sent.with_columns(_f=batch.select(force).to_series())
    table_ref = f"_starsmith.{_q(hashes_table(table))}"
    key = nk[0]
    stored, addressed = rebuilt, None
    if len(nk) == 1 and schema[key].is_integer():  # read the stored side (0.05 s for 10M)
        if stored is None:
            stored = wh.query(f"SELECT * FROM {table_ref}").cast({key: schema[key]})
        addressed = _addressed(sent, stored, key)
    if addressed is not None:
        found, maybe_twice = addressed
    else:
        found, maybe_twice = _joined(wh, sent, stored, table_ref, nk, force is not None)
    # Inferred members (which facts insert) have no stored hash: a record of one goes on, and
    # one the snapshot lacks is a key it lacks (read apart: a handful, not a join's side).
    alive = " AND NOT c.is_deleted" if spec.tracks_deletes else ""
    inferred = wh.query(f"SELECT {', '.join(f'c.{_q(c)}' for c in nk)} FROM main.{_q(table)} c "
                        f"WHERE c.is_current AND c.is_inferred AND c.{_q(sk)} >= 0{alive}")
    if inferred.height:
        inferred = inferred.cast({k: schema[k] for k in nk})
        theirs = sent.select(*nk, "_i").join(inferred.unique(), on=nk, how="semi")
        lacked = inferred.join(theirs.select(nk), on=nk, how="anti").with_columns(
            _i=pl.lit(None, dtype=sent.schema["_i"]))
        found = pl.concat([found, theirs.select("_i", *nk), lacked.select("_i", *nk)],
                          how="vertical_relaxed")
    return found, rebuilt, maybe_twice


def _addressed(sent: pl.DataFrame, stored: pl.DataFrame, key: str
               ) -> tuple[pl.DataFrame, bool] | None:
    """The diff by direct addressing, for one integer key over a dense range (up to DENSE x the
    keys, as the facts' lookups do): each stored hash goes to its key's slot of an array, and a
    record is compared with the slot of its key; no join. 10M keys: ~0.3 s against ~1 s for
    the engine's join of the two sides. None when the keys are not dense."""
    low, high = (pl.concat([sent.select(key), stored.select(key)], how="vertical_relaxed")
                 .select(lo=pl.col(key).min(), hi=pl.col(key).max()).row(0))
    if low is None or not stored.height:
        return None
    span = int(high) - int(low) + 1
    if span > DENSE * max(stored.height, sent.height) or int(high) > np.iinfo(np.int64).max:
        return None
    present, hashes = np.zeros(span, dtype=bool), np.zeros(span, dtype=np.uint64)
    slots = stored[key].cast(pl.Int64).to_numpy() - int(low)
    present[slots] = True
    hashes[slots] = stored[HASH].to_numpy()
    keys = sent[key]
    at = sent.select((pl.col(key).cast(pl.Int64) - int(low)).fill_null(-1)).to_series().to_numpy()
    sent_hashes = sent[HASH].to_numpy()
    forced = sent["_f"].to_numpy() if "_f" in sent.columns else None

    def compare(part: slice) -> tuple[np.ndarray, np.ndarray]:
        # (matched a stored key, and its hash): random reads of arrays of one value a key,
        # so chunks on two threads (numpy lets go of the GIL) take about half the time
        where = at[part]
        valid = where >= 0
        where = np.where(valid, where, 0)
        matched = valid & present[where]
        same = matched & (hashes[where] == sent_hashes[part])
        if forced is not None:
            same &= ~forced[part]
        return matched, same

    chunks = [slice(i, i + CHUNK) for i in range(0, len(at), CHUNK)]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(compare, chunks))
    matched = np.concatenate([m for m, _ in done]) if done else np.zeros(0, dtype=bool)
    same = np.concatenate([s for _, s in done]) if done else np.zeros(0, dtype=bool)
    seen = np.zeros(span, dtype=bool)
    seen[at[matched]] = True
    # each stored key is in one slot: more records matched than slots matched is a key sent twice
    maybe_twice = int(matched.sum()) > int(seen.sum())
    rows = np.flatnonzero(~same)
    gone = np.flatnonzero(present & ~seen) + int(low)
    index = sent.schema["_i"]
    found = pl.concat([
        pl.DataFrame({"_i": pl.Series(rows, dtype=index), key: keys.gather(rows)}),
        pl.DataFrame({"_i": pl.Series([None] * len(gone), dtype=index),
                      key: pl.Series(gone, dtype=pl.Int64).cast(keys.dtype)})])
    return found, maybe_twice


def _joined(wh: Warehouse, sent: pl.DataFrame, base: pl.DataFrame | None, table_ref: str,
            nk: list[str], forced: bool) -> tuple[pl.DataFrame, bool]:
    """The diff by the engine's join of (key, hash) on both sides."""
    # (Polars' join of the two took as long, holding ~200 MiB more at 10M keys)
    stored = "_base" if base is not None else table_ref
    keys = ", ".join(f"coalesce(b.{_q(c)}, c.{_q(c)}) AS {_q(c)}" for c in nk)
    frames = {"_b": sent, **({"_base": base} if base is not None else {})}
    found = wh.query(
        f"SELECT b._i, {keys}, c.{_q(nk[0])} IS NULL AS _new FROM _b b FULL JOIN {stored} c "
        f"ON {_on(nk, 'b', 'c')} "
        f"WHERE b._i IS NULL OR c.{_q(nk[0])} IS NULL OR b.{_q(HASH)} <> c.{_q(HASH)}"
        + (" OR b._f" if forced else ""), None, **frames)
    # Each record matches one stored key at most (they are unique): more records matched than
    # keys matched is a key sent twice. Counted from what was found, this spares a count of the
    # snapshot's distinct keys (0.2 s for 10M) on every day that has none.
    stored_n = base.height if base is not None else int(
        wh.query(f"SELECT count(*) AS n FROM {stored}")["n"][0])
    new = int(found.select((pl.col("_i").is_not_null() & pl.col("_new")).sum()).item())
    missing = int(found["_i"].null_count())
    return found.drop("_new"), sent.height - new > stored_n - missing


def _by_columns(wh: Warehouse, table: str, spec: DimensionSpec, batch: pl.DataFrame
                ) -> pl.DataFrame:
    """The same, comparing the compared columns themselves (BigQuery)."""
    nk, sk = list(spec.natural_key), spec.surrogate_key
    compared = compared_columns(spec)
    force = _forced(spec)
    side = batch.select(*nk, *compared).with_columns(
        _i=pl.int_range(pl.len(), dtype=pl.get_index_type()),
        _f=batch.select(pl.repeat(False, pl.len()) if force is None else force).to_series())
    alive = "NOT c.is_deleted" if spec.tracks_deletes else "TRUE"
    differs = " OR ".join(f"b.{_q(a)} IS DISTINCT FROM c.{_q(a)}" for a in compared) or "FALSE"
    cols = ", ".join(f"c.{_q(c)}" for c in [*nk, *compared])
    current = (f"SELECT {cols}, c.is_inferred AS _inferred FROM main.{_q(table)} c"
               f" WHERE c.is_current AND {alive} AND c.{_q(sk)} >= 0")
    keys = ", ".join(f"coalesce(b.{_q(c)}, c.{_q(c)}) AS {_q(c)}" for c in nk)
    return wh.query(
        f"SELECT b._i, {keys} FROM _b b FULL JOIN ({current}) c ON {_on(nk, 'b', 'c')} "
        f"WHERE b._i IS NULL OR c.{_q(nk[0])} IS NULL OR c._inferred OR b._f OR {differs}",
        _b=side)
