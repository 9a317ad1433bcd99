"""Reserved and inferred members: the rows that let every fact find a dimension key.

-1 "Unknown" takes facts whose natural key is not found, -2 "Not applicable" takes facts whose
natural key is NULL. Inferred members are placeholders for natural keys seen in facts before the
dimension row arrived (Kimball's late-arriving dimension); the SCD builder completes them in place.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from starsmith.dimensions.spec import (
    BEGINNING,
    INFERRED_BASE,
    NOT_APPLICABLE_KEY,
    OPEN_END,
    UNKNOWN_KEY,
    DimensionSpec,
)

TS = pl.Datetime("us")


def dimension_schema(spec: DimensionSpec, attributes: pl.Schema | dict[str, pl.DataType]) -> pl.Schema:
    """The table schema of a dimension, from the types of its natural key and attributes."""
    types = dict(attributes)
    schema: dict[str, pl.DataType] = {spec.surrogate_key: pl.Int64()}
    for col in (*spec.natural_key, *spec.attributes):
        schema[col] = types[col]
    schema |= {"valid_from": TS, "valid_to": TS, "is_current": pl.Boolean()}
    if spec.tracks_deletes:
        schema["is_deleted"] = pl.Boolean()
    schema |= {"is_inferred": pl.Boolean(), "run_id": pl.String()}
    return pl.Schema(schema)


def empty_dimension(schema: pl.Schema) -> pl.LazyFrame:
    return pl.LazyFrame(schema=schema)


def reserved_members(spec: DimensionSpec, schema: pl.Schema) -> pl.LazyFrame:
    """The -1 Unknown and -2 Not applicable rows, labelled in every text attribute."""
    rows = []
    for key, label in ((UNKNOWN_KEY, "Unknown"), (NOT_APPLICABLE_KEY, "Not applicable")):
        row: dict[str, object] = {spec.surrogate_key: key}
        for col in (*spec.natural_key, *spec.attributes):
            row[col] = label if schema[col] == pl.String() and col not in spec.natural_key else None
        row |= {"valid_from": BEGINNING, "valid_to": OPEN_END, "is_current": True,
                "is_inferred": False, "run_id": "reserved"}
        if spec.tracks_deletes:
            row["is_deleted"] = False
        rows.append(row)
    return pl.LazyFrame(rows, schema=schema)


INFERRED_DAY_BITS = 20  # up to a million inferred members a day


def inferred_slot(day: date) -> int:
    """The first inferred key a build of ``day`` may issue, less one: keys say which day's facts
    inferred them, so a replay re-creates each placeholder when the nightly build did."""
    return INFERRED_BASE + (day.toordinal() << INFERRED_DAY_BITS)


def inferred_day(key: int) -> date:
    """The day whose facts inferred this key (see :func:`inferred_slot`)."""
    return date.fromordinal((key - INFERRED_BASE) >> INFERRED_DAY_BITS)


def inferred_members(
    spec: DimensionSpec,
    schema: pl.Schema,
    existing_keys: pl.LazyFrame,
    seen_keys: pl.LazyFrame,
    *,
    max_key: int,
    run_id: str,
) -> pl.LazyFrame:
    """New inferred rows for natural keys in ``seen_keys`` that the dimension does not hold.

    Keys are numbered after ``max_key`` in natural-key order, so a re-run assigns the same keys.
    A build step numbers them in their own range (:func:`inferred_slot`): the dimension's own
    versions are then numbered by its record history alone, so a replay of that history (a full
    refresh, a restatement) gives them the keys a nightly build gave.
    Attributes stay NULL until the real row arrives and completes the member in place.
    """
    nk = list(spec.natural_key)
    missing = (
        seen_keys.select(nk)
        .drop_nulls()
        .unique()
        .join(existing_keys.select(nk), on=nk, how="anti")
        .sort(nk)
    )
    fill = {
        col: pl.lit(None, dtype=schema[col]) for col in spec.attributes
    }
    system: dict[str, pl.Expr] = {
        "valid_from": pl.lit(BEGINNING, dtype=TS),
        "valid_to": pl.lit(OPEN_END, dtype=TS),
        "is_current": pl.lit(True),
        "is_inferred": pl.lit(True),
        "run_id": pl.lit(run_id),
    }
    if spec.tracks_deletes:
        system["is_deleted"] = pl.lit(False)
    return missing.with_columns(
        (pl.int_range(1, pl.len() + 1, dtype=pl.Int64) + max_key).alias(spec.surrogate_key),
        **fill,
        **system,
    ).select([pl.col(c).cast(t) for c, t in schema.items()])
