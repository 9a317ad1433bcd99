"""A dimension as each night of a catch-up's range left it, for the facts the range keys.

A range builds a dimension for all its days before the facts: a fact keyed against the result
would see versions its nights had not seen yet (a key that arrived later, a version a later
record opened, a late record that re-derived a key's history). The nights keyed each partition
against the dimension as it stood that night.

So the dimension's range replay logs, for every key a night after the first changes, the key's
versions as they stood before that night (surrogate key and validity only: what a lookup reads),
and "absent" for a key that did not exist yet. The log is published with the dimension (one
metadata table, ``_starsmith.asof``, holds every dimension's) and the run log says which range
it is for. The fact's range
keys a partition whose night is before a key's change against the logged versions, every other
fact against the dimension as it is: a lookup whose natural key is extended by the state
(``_state``: the last night a logged state held, or FINAL), so the usual rules (exact, nearest,
missing) apply to each state unchanged. The log grows with the range's changes, not with the
dimension.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import polars as pl

from starsmith.dimensions.spec import DimensionSpec
from starsmith.facts.keys import Lookup, lookup_key
from starsmith.facts.spec import KeyLookup
from starsmith.loaders.target import ASOF_SCHEMA, Warehouse

FINAL = date(9999, 12, 31)  # the state of a key the range did not change after the fact's night
STATE = "_state"
UNTIL = "_until"  # a logged state held until the end of this night
LOGGED = "asof_rows"  # the dimension's run-log detail: how many states it logged
FIRST = "range_first"  # and the range they are for (its first day's ordinal)


class NightLog:
    """The states a range's replay replaced, collected night by night."""

    def __init__(self, spec: DimensionSpec, schema: pl.Schema, first: date) -> None:
        self.spec, self.first = spec, first
        self.parts: list[pl.DataFrame] = []
        self.schema = pl.Schema({c: schema[c] for c in (*spec.natural_key, spec.surrogate_key,
                                                          "valid_from", "valid_to")})
        self.schema[UNTIL] = pl.Date()

    def before(self, dim: pl.DataFrame, touched: pl.DataFrame, night: date) -> None:
        """Log ``touched`` keys' versions in ``dim`` (the dimension before ``night`` applies)."""
        if night <= self.first or not touched.height:
            return  # the range's first night is what every fact of the range saw at least
        nk, sk = list(self.spec.natural_key), self.spec.surrogate_key
        keys = touched.select(nk).drop_nulls().unique()
        old = dim.filter(pl.col(sk) >= 0).join(keys, on=nk, how="semi").select(
            *nk, sk, "valid_from", "valid_to")
        absent = keys.join(old.select(nk), on=nk, how="anti")  # not in the dimension yet
        frame = pl.concat([old, absent], how="diagonal_relaxed").with_columns(
            pl.lit(night - timedelta(days=1)).alias(UNTIL))
        self.parts.append(frame.cast(dict(self.schema)).select(self.schema.names()))  # type: ignore[arg-type]

    def frame(self) -> pl.DataFrame:
        """The states, as the warehouse keeps every dimension's (``ASOF_SCHEMA``: the natural
        key as JSON, so one table holds every dimension's, whatever its key)."""
        states = pl.concat(self.parts) if self.parts else pl.DataFrame(schema=self.schema)
        return states.select(
            dimension=pl.lit(self.spec.name, dtype=pl.String()),
            natural_key=pl.struct(list(self.spec.natural_key)).struct.json_encode(),
            surrogate_key=pl.col(self.spec.surrogate_key).cast(pl.Int64()),
            valid_from=pl.col("valid_from").cast(pl.Datetime("us")),
            valid_to=pl.col("valid_to").cast(pl.Datetime("us")),
            until=pl.col(UNTIL)).cast(dict(ASOF_SCHEMA))  # type: ignore[arg-type]


def night_log(wh: Warehouse, spec: DimensionSpec, schema: pl.Schema, first: date, last: date
              ) -> pl.DataFrame | None:
    """The states the dimension's last build, a range's replay, logged, when that range holds
    the nights ``first``..``last`` (a fact's range, or a night of it built on its own: after a
    failure, or a key in two partitions), with the dimension's key columns and types
    (``schema``); None otherwise (nothing changed after the range's first night, or the
    dimension's last build was not such a range: it stands as those nights left it)."""
    done = wh.query("SELECT logical_date, details FROM _starsmith.run_log WHERE model = ? AND "
                    "status = 'success' ORDER BY finished_at DESC LIMIT 1", [spec.name])
    if not done.height or done["logical_date"][0] < last or done["details"][0] is None:
        return None
    details = json.loads(done["details"][0])
    if not details.get(LOGGED) or details.get(FIRST, first.toordinal() + 1) > first.toordinal():
        return None
    nk = list(spec.natural_key)
    found = wh.query("SELECT natural_key, surrogate_key, valid_from, valid_to, until "
                     "FROM _starsmith.asof WHERE dimension = ?", [spec.name])
    key = pl.Struct({c: schema[c] for c in nk})
    return found.select(
        pl.col("natural_key").str.json_decode(key).struct.unnest(),
        pl.col("surrogate_key").cast(schema[spec.surrogate_key]).alias(spec.surrogate_key),
        pl.col("valid_from").cast(schema["valid_from"]),
        pl.col("valid_to").cast(schema["valid_to"]),
        pl.col("until").cast(pl.Date()).alias(UNTIL))


def keyed_as_of(facts: pl.DataFrame, lk: KeyLookup, versions: pl.DataFrame, log: pl.DataFrame,
                nights: pl.DataFrame, event_date: str) -> Lookup:
    """Key facts as their nights did: ``versions`` (the dimension now, at least the facts'
    keys), ``log`` (:class:`NightLog`), ``nights`` (partition ``_p`` -> its ``_night``)."""
    spec = lk.dimension
    nk = list(spec.natural_key)
    cols = list(lk.fact_columns)
    rows = facts.with_row_index("_fid").join(nights, left_on=event_date, right_on="_p",
                                             how="left", maintain_order="left")
    wanted = rows.select(*[pl.col(a).cast(log.schema[b]).alias(b)
                           for a, b in zip(cols, nk, strict=True)], "_night").unique()
    states = wanted.join(log.select(*nk, UNTIL).unique(), on=nk).filter(
        pl.col(UNTIL) >= pl.col("_night")).group_by(*nk, "_night").agg(
        pl.col(UNTIL).min().alias(STATE)).cast(
        {b: rows.schema[a] for a, b in zip(cols, nk, strict=True)})
    rows = rows.join(states, left_on=[*cols, "_night"], right_on=[*nk, "_night"], how="left",
                     maintain_order="left").with_columns(pl.col(STATE).fill_null(FINAL))
    now = versions.select(spec.surrogate_key, *nk, "valid_from", "valid_to").with_columns(
        pl.lit(FINAL).alias(STATE))
    then = log.filter(pl.col(spec.surrogate_key).is_not_null()).rename({UNTIL: STATE}).select(
        now.columns)
    extended = replace(lk, dimension=replace(spec, natural_key=(*nk, STATE)),
                       fact_columns=(*cols, STATE))
    found = lookup_key(rows.lazy(), pl.concat([now, then], how="vertical_relaxed").lazy(),
                       extended)
    keyed = found.facts.sort("_fid").drop("_fid", "_night", STATE)
    return Lookup(keyed, found.missing_keys.drop(STATE).unique().sort(nk))
