"""Rows from the database to the source's contract, column by column; what does not fit is
set aside with the reason, never dropped and never silently changed.

ADBC hands PostgreSQL ``numeric`` over as an opaque Arrow extension type whose storage is the
value's text (``'12.50'``, ``'nan'``): it is cast here to the contract's Decimal. A value that
cannot be represented (``NaN`` or ``Infinity`` in a Decimal, more decimal places than the
declared scale, an integer too large for Int32, text that is not a date) fails the row: the row
goes to the dead letters with its raw values as text and a ``reason`` naming each column and
value, and the rest of the day lands. Casting with ``strict=False`` turns a value that does not
fit into NULL; a value that was not NULL before and is NULL after is exactly a failed conversion,
so one pass finds them all. NULLs stay NULLs.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from starsmith.contract import Source

REASON = "reason"


def plain(batch: pa.RecordBatch) -> pa.Table:
    """The batch with extension columns (``numeric``) replaced by their storage (text)."""
    columns, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(field.type, pa.BaseExtensionType):
            column = column.storage
            field = pa.field(field.name, column.type)
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


@dataclass
class Converted:
    good: pl.DataFrame  # the contract's columns and types
    dead: pl.DataFrame  # raw values as text, plus ``reason``


def _convert(raw: pl.Expr, got: pl.DataType, want: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """The converted column, and (for text to Decimal) an extra failure: more decimal places
    than the declared scale, which a cast would round."""
    if got == want:
        return raw, None
    if isinstance(want, pl.Datetime) and isinstance(got, pl.Datetime):
        moved = raw.dt.cast_time_unit(want.time_unit)
        if got.time_zone and want.time_zone:
            return moved.dt.convert_time_zone(want.time_zone), None
        if got.time_zone:  # an instant to a naive column: its UTC wall time
            return moved.dt.convert_time_zone("UTC").dt.replace_time_zone(None), None
        if want.time_zone:  # a naive timestamp read as UTC (the session's time zone)
            return moved.dt.replace_time_zone("UTC").dt.convert_time_zone(want.time_zone), None
        return moved, None
    if isinstance(want, pl.Datetime) and got == pl.String():
        return raw.str.to_datetime(time_unit=want.time_unit, time_zone=want.time_zone,
                                   strict=False), None
    if isinstance(want, pl.Date) and got == pl.String():
        return raw.str.to_date(strict=False), None
    if isinstance(want, pl.Decimal) and got == pl.String():
        digits = raw.str.extract(r"\.(\d*?)0*$", 1).str.len_chars().fill_null(0)
        return raw.cast(want, strict=False), digits > (want.scale or 0)
    return raw.cast(want, strict=False), None


def convert(table: pa.Table, source: Source) -> Converted:
    """Split a batch into rows that fit the contract (converted) and rows that do not."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    converted: list[pl.Expr] = []
    reasons: list[pl.Expr] = []
    for col in source.columns:
        got = frame.schema[col.name]
        raw = pl.col(col.name)
        value, rounds = _convert(raw, got, col.dtype)
        converted.append(value.alias(col.name))
        failed = raw.is_not_null() & value.is_null()
        text = raw.cast(pl.String)
        invalid = pl.format(f"{col.name}: {{}} is not a valid {col.dtype}", text)
        if rounds is None:
            reasons.append(pl.when(failed).then(invalid).otherwise(None))
        else:
            reasons.append(pl.when(failed).then(invalid).when(rounds).then(pl.format(
                f"{col.name}: {{}} has more decimal places than {col.dtype} keeps (it would be "
                "rounded)", text)).otherwise(None))
    marked = frame.with_columns(pl.concat_str(reasons, separator="; ", ignore_nulls=True)
                                .alias(REASON))
    marked = marked.with_columns(pl.when(pl.col(REASON) == "").then(None)
                                 .otherwise(pl.col(REASON)).alias(REASON))
    bad = marked.filter(pl.col(REASON).is_not_null())
    ok = marked.filter(pl.col(REASON).is_null()) if bad.height else marked
    good = ok.select(converted)
    dead = bad.select([pl.col(c.name).cast(pl.String) for c in source.columns]
                      + [pl.col(REASON)])
    return Converted(good, dead)


def dead_schema(source: Source) -> pa.Schema:
    return pa.schema([pa.field(c.name, pa.large_string()) for c in source.columns]
                     + [pa.field(REASON, pa.large_string())])


def contract_schema(source: Source) -> pa.Schema:
    """The Arrow schema the landed Parquet file has: the contract's columns and types."""
    return pl.DataFrame(schema=source.schema).to_arrow().schema
