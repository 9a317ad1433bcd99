"""Avro sources: the schema each file carries, checked against the source's contract from its
header alone, and its rows read by Polars one file at a time.

An Avro file says its own types (decimal precision and scale, timestamps in UTC, nullable
unions), so the contract is checked before any data is decoded, file by file, naming the file and
the column. The header is read with fastavro (it returns the whole JSON schema); the rows with
``pl.read_avro``, which is fast, keeps those types and refuses a file cut short. fastavro also
counts a file's rows from its block headers, without decoding them, for manifest checks.

Polars' reader (2.1) has gaps, met here rather than as a confusing failure:

- A field with a ``default`` (common where schemas evolve) fails with the same ``OutOfSpec`` a
  corrupt file gives. Defaults only matter to a reader resolving one schema into another, not to
  data written with that schema, so the header is re-encoded without them.
- A type referred to by name, or an enum in a union, make it fail or panic: the header is
  rewritten (see _Types). Maps, unions of several types, ``null`` columns, durations, decimals
  wider than 38 digits, enums nested in arrays or records and recursive types are refused from
  the header, naming the column.

Other readers (polars-avro, DuckDB's) are not used: they return part of a truncated file as if
it were whole.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import polars as pl
from polars.io.plugins import register_io_source

from starsmith.errors import DataError
from starsmith.loaders.store import Landing

MAGIC = b"Obj\x01"
CODECS = ("null", "deflate", "snappy")  # the codecs pl.read_avro decodes
_HEADER = fastavro.parse_schema({
    "type": "record", "name": "org.apache.avro.file.Header", "fields": [
        {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
        {"name": "meta", "type": {"type": "map", "values": "bytes"}},
        {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": 16}},
    ]})
_RELAND = ("Land a corrected export of that day (the data files first, then its _SUCCESS marker "
           "or manifest) and build the day again; a retry alone will not help")
_PRIMITIVE: dict[str, pl.DataType] = {
    "boolean": pl.Boolean(), "int": pl.Int32(), "long": pl.Int64(), "float": pl.Float32(),
    "double": pl.Float64(), "bytes": pl.Binary(), "string": pl.String(),
}
_LOGICAL: dict[tuple[str, str], pl.DataType] = {  # (logicalType, underlying type)
    ("date", "int"): pl.Date(),
    ("time-millis", "int"): pl.Time(),
    ("time-micros", "long"): pl.Time(),
    ("timestamp-millis", "long"): pl.Datetime("ms", "UTC"),  # an instant, stored in UTC
    ("timestamp-micros", "long"): pl.Datetime("us", "UTC"),
    ("timestamp-nanos", "long"): pl.Datetime("ns", "UTC"),
    ("local-timestamp-millis", "long"): pl.Datetime("ms"),  # a wall-clock time, no zone
    ("local-timestamp-micros", "long"): pl.Datetime("us"),
    ("local-timestamp-nanos", "long"): pl.Datetime("ns"),
    ("uuid", "string"): pl.String(),
}
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000}


class Unsupported(ValueError):
    """An Avro type that has no Polars column type here (the message says which and why)."""


@dataclass(frozen=True)
class _Type:
    dtype: pl.DataType  # what the column holds in Polars
    node: Any  # the Avro type as Polars' reader is handed it (see _Types)
    symbols: tuple[str, ...] | None = None  # an enum's, read as its index


class _Types:
    """The one mapping of Avro types to Polars types, for one file's schema; used for the
    contract check and to read the rows.

    It also rewrites each type into one Polars' reader decodes: a field's ``default`` dropped
    (see the module's docstring), a type referred to by name written out in full, and an enum
    read as the index it is encoded as (Polars cannot read an enum in a union), turned back into
    its symbol after the read. Polars cannot read an enum nested in an array or record: that is
    refused.

    A union ``["null", T]`` reads as T. Its nullability is not held against a not-null column
    of the contract, as for Parquet (whose writers mark most columns optional): a NULL that
    arrives fails the model's contract check on its staged rows, naming the column."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}  # named types (records, enums, fixed) by name
        self.open: set[str] = set()  # records being defined: a reference to one is recursion

    def define(self, avro: dict[str, Any], space: str | None) -> tuple[str, str | None]:
        """Register a named type under its short and full name; its name and namespace."""
        name = str(avro["name"])
        space = str(avro.get("namespace") or space or "") or None
        short = name.rsplit(".", 1)[-1]
        if "." in name:
            space = name.rsplit(".", 1)[0]
        self.named[short] = avro
        if space:
            self.named[f"{space}.{short}"] = avro
        return f"{space}.{short}" if space else short, space

    def convert(self, avro: Any, *, column: bool = False, space: str | None = None) -> _Type:
        """``column``: the type is a column's own (or its nullable union's), not nested."""
        if isinstance(avro, list):  # a union: ["null", T] is a nullable T
            branches = [b for b in avro if b != "null"]
            if len(branches) != 1:
                raise Unsupported(f"a union of {json.dumps(avro)}: only a type or "
                                  '["null", type] maps to one column type')
            inner = self.convert(branches[0], column=column, space=space)
            return _Type(inner.dtype, [b if b == "null" else inner.node for b in avro],
                         inner.symbols)
        if isinstance(avro, str):
            if avro in _PRIMITIVE:
                return _Type(_PRIMITIVE[avro], avro)
            if avro == "null":
                raise Unsupported("type 'null' (a column that is always NULL)")
            full = f"{space}.{avro}" if space and "." not in avro else avro
            definition = self.named.get(full, self.named.get(avro))
            if definition is None:
                raise Unsupported(f"type {avro!r}, which is not defined before it is used")
            if full in self.open or avro in self.open:
                raise Unsupported(f"the recursive type {avro!r}")
            return self.convert(definition, column=column, space=space)
        if not isinstance(avro, dict):
            raise Unsupported(f"type {json.dumps(avro)}")
        kind, logical = avro.get("type"), avro.get("logicalType")
        name = None
        if kind in ("record", "enum", "fixed") and "name" in avro:
            name, space = self.define(avro, space)
        if logical == "decimal" and kind in ("bytes", "fixed"):
            precision, scale = int(avro.get("precision", 0)), int(avro.get("scale", 0))
            if not 0 < precision <= 38 or not 0 <= scale <= precision:
                raise Unsupported(f"decimal({precision},{scale}): Polars holds 1 to 38 digits")
            return _Type(pl.Decimal(precision, scale), avro)
        if logical == "duration":
            raise Unsupported("duration (months, days, milliseconds)")
        if isinstance(logical, str) and (logical, kind) in _LOGICAL:
            return _Type(_LOGICAL[(logical, str(kind))], avro)
        if kind == "record":
            self.open.add(name or "")
            try:
                fields = [(str(f["name"]), f, self.convert(f["type"], space=space))
                          for f in avro.get("fields") or []]
            finally:
                self.open.discard(name or "")
            return _Type(pl.Struct({n: t.dtype for n, _, t in fields}), {**avro, "fields": [
                {**_plain(f), "type": t.node} for _, f, t in fields]})
        if kind == "array":
            items = self.convert(avro.get("items"), space=space)
            return _Type(pl.List(items.dtype), {**avro, "items": items.node})
        if kind == "enum":
            if not column:
                raise Unsupported("an enum inside an array or record (Polars cannot read it "
                                  "there; export it as a string)")
            return _Type(pl.String(), "int", tuple(str(s) for s in avro.get("symbols") or ()))
        if kind == "fixed":
            return _Type(pl.Binary(), avro)
        if kind == "map":
            raise Unsupported("a map (Polars cannot read Avro maps)")
        if isinstance(kind, str | list | dict):  # {"type": "long"}, a union or a nested type
            return self.convert(kind, column=column, space=space)
        raise Unsupported(f"type {json.dumps(avro)}")


def _plain(field: dict[str, Any]) -> dict[str, Any]:
    """A record's field without its ``default`` (only a reader resolving schemas uses it)."""
    return {k: v for k, v in field.items() if k != "default"}


@dataclass(frozen=True)
class AvroFile:
    """One landed Avro file, known from its header."""

    path: Landing  # a local file, or an object (read whole: loaders/store.py)
    schema: pl.Schema  # its columns, as Polars types (see _Types)
    header: bytes | None  # the header as Polars' reader is handed it, if it differs (see _Types)
    body: int  # where its blocks start (after the header)
    enums: dict[str, tuple[str, ...]]  # columns read as an enum's index: the symbols


def _bad(path: Landing, what: str, fix: str = _RELAND) -> DataError:
    return DataError(f"{path.name} {what}", where=str(path), fix=fix)


def open_file(path: Landing) -> AvroFile:
    """Read a file's header: its columns and types. A file that is not Avro, is cut short in its
    header, or uses a codec or type Polars cannot read is a DataError naming the file (and the
    column); an I/O error is raised as it is (a retry may help)."""
    with path.open("rb") as fh:
        try:
            found_header = fastavro.schemaless_reader(fh, _HEADER, None)
        except OSError:
            raise
        except Exception as err:  # any refusal of the decoder: these bytes are no Avro header
            raise _bad(path, f"is not an Avro file or its header is cut short ({err})") from err
        body = fh.tell()
    if not isinstance(found_header, dict) or found_header.get("magic") != MAGIC:
        raise _bad(path, "is not an Avro object container file (no Obj\\x01 magic)")
    meta = found_header["meta"]
    codec = meta.get("avro.codec", b"null").decode(errors="replace")
    if codec not in CODECS:
        raise _bad(path, f"is compressed with {codec!r}, which cannot be read",
                   fix=f"Export with codec {', '.join(CODECS)}, and land the day again")
    try:
        schema = json.loads(meta["avro.schema"])
    except (KeyError, ValueError) as err:
        raise _bad(path, "has no readable schema in its header") from err
    if not isinstance(schema, dict) or schema.get("type") != "record" \
            or not schema.get("fields"):
        raise _bad(path, "holds no records with columns (its schema is not a record with fields)",
                   fix="Export one record per row, one field per column")
    types = _Types()
    columns: dict[str, pl.DataType] = {}
    enums: dict[str, tuple[str, ...]] = {}
    nodes: list[dict[str, Any]] = []
    top, space = types.define(schema, None) if "name" in schema else ("", None)
    types.open.add(top)
    for field in schema["fields"]:
        name = str(field.get("name", "")) if isinstance(field, dict) else ""
        try:
            found = types.convert(field["type"], column=True, space=space)
        except Unsupported as err:
            raise _bad(path, f"has column {name!r} of {err}, which cannot be read",
                       fix=f"Export {name!r} as a plain Avro type (a long, string, decimal, "
                           "timestamp...) or a nullable union [\"null\", type]") from err
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # not Avro's grammar
            raise _bad(path, f"has a schema that is not valid Avro at column {name!r} ({err!r})"
                       ) from err
        columns[name] = found.dtype
        nodes.append({**_plain(field), "type": found.node})
        if found.symbols is not None:
            enums[name] = found.symbols
    plain = {**schema, "fields": nodes}
    header = None
    if plain != schema:  # handed to Polars as it reads it (see _Types)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, _HEADER, {
            "magic": MAGIC, "meta": {**meta, "avro.schema": json.dumps(plain).encode()},
            "sync": found_header["sync"]})
        header = buffer.getvalue()
    return AvroFile(path, pl.Schema(columns), header, body, enums)


def columns(path: Landing) -> set[str]:
    """The file's column names, from its header."""
    return set(open_file(path).schema)


def count_rows(path: Landing) -> int:
    """The file's rows, summed from its block headers (no record is decoded). A file cut short
    inside a block, or whose blocks lose their sync markers, is a DataError naming it."""
    try:
        with path.open("rb") as fh:
            return sum(block.num_records for block in fastavro.block_reader(fh))
    except OSError:
        raise
    except Exception as err:  # any refusal of the decoder: the bytes are not whole Avro blocks
        raise _bad(path, f"is corrupt or cut short: its blocks cannot be read ({err})") from err


def read(file: AvroFile, columns: Sequence[str] | None = None,
         n_rows: int | None = None) -> pl.DataFrame:
    """The file's rows (of ``columns``), typed as its header says (see _Types). A corrupt or cut
    short file is a DataError naming it; an I/O error is raised as it is (a retry may help)."""
    path, wanted = file.path, list(columns) if columns is not None else None
    try:
        if file.header is None:
            frame = pl.read_avro(path if isinstance(path, Path) else io.BytesIO(
                path.read_bytes()), columns=wanted, n_rows=n_rows)
        else:
            with path.open("rb") as fh:
                fh.seek(file.body)
                data = io.BytesIO(file.header + fh.read())
            frame = pl.read_avro(data, columns=wanted, n_rows=n_rows)
        frame = frame.with_columns(  # an index beyond the symbols: the bytes are broken
            pl.col(c).replace_strict(range(len(symbols)), symbols, return_dtype=pl.String())
            for c, symbols in file.enums.items() if c in frame.columns)
    except pl.exceptions.PolarsError as err:
        if "(os error" in str(err):  # the disk or the network, not the bytes
            raise
        raise _bad(path, f"is corrupt or cut short: it cannot be read as Avro ({_first(err)})"
                   ) from err
    except pl.exceptions.PanicException as err:  # the reader gave up on what it was handed
        raise _bad(path, f"cannot be read as Avro ({_first(err)})") from err
    differ = [c for c in frame.columns if frame.schema[c] != file.schema[c]]
    if not differ:
        return frame
    return frame.with_columns(pl.col(c).cast(file.schema[c]) for c in differ)  # nanoseconds


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def scan(files: Sequence[Landing], contract: pl.Schema,
         check: Callable[[AvroFile], None]) -> pl.LazyFrame:
    """The files' rows cast to ``contract``, read lazily one file at a time (only the columns a
    query uses). Every file's header is read and ``check``-ed first (once per distinct schema),
    so a file that contradicts the contract stops the read before any row is decoded."""
    opened = [open_file(p) for p in files]
    seen: set[tuple[tuple[str, pl.DataType], ...]] = set()
    for file in opened:
        key = tuple(file.schema.items())
        if key not in seen:
            seen.add(key)
            check(file)
    frames = [_lazy(file, contract) for file in opened]
    return frames[0] if len(frames) == 1 else pl.concat(frames)


def _lazy(file: AvroFile, contract: pl.Schema) -> pl.LazyFrame:
    """One file as a LazyFrame of the contract's columns: a column the file lacks (nullable,
    the contract check saw to that) reads as NULL."""
    def rows(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
             _batch_size: int | None) -> Iterator[pl.DataFrame]:
        wanted = with_columns if with_columns is not None else contract.names()
        present = [c for c in wanted if c in file.schema] or [next(iter(file.schema))]
        frame = read(file, present, n_rows if predicate is None else None)
        frame = frame.select(pl.col(c).cast(contract[c]) if c in file.schema
                             else pl.lit(None, dtype=contract[c]).alias(c) for c in wanted)
        if predicate is not None:
            frame = frame.filter(predicate)
            frame = frame if n_rows is None else frame.head(n_rows)
        yield frame
    return register_io_source(rows, schema=contract, explain_name="read_avro",
                              explain_detail=str(file.path))


def narrowing(want: pl.DataType, got: pl.DataType) -> str | None:
    """Why a column of type ``got`` cannot hold every value of the contract's ``want`` without
    loss, for the types the general drift check lets through (decimals into decimals, times into
    times); None when it can. An Avro file states its types exactly, so they are held to them."""
    if isinstance(want, pl.Decimal) and isinstance(got, pl.Decimal):
        w_scale, g_scale = want.scale or 0, got.scale or 0
        w_prec, g_prec = want.precision or 38, got.precision or 38
        if g_scale > w_scale:
            return f"its scale {g_scale} would be rounded to {w_scale}"
        if g_prec - g_scale > w_prec - w_scale:
            return (f"its {g_prec - g_scale} integer digits do not fit in "
                    f"{w_prec - w_scale}")
        return None
    if not (want.is_temporal() and got.is_temporal()):
        return None
    if isinstance(want, pl.Datetime):
        if isinstance(got, pl.Date):
            return None  # a day is midnight of that day
        if not isinstance(got, pl.Datetime):
            return f"a {got} is not a point in time"
        if _UNIT_NS[got.time_unit or "us"] < _UNIT_NS[want.time_unit or "us"]:
            return f"its {got.time_unit} precision would be cut to {want.time_unit}"
        if got.time_zone is None and want.time_zone is not None:
            return ("a local timestamp has no time zone to convert from (export a "
                    "timestamp-* instant, or declare the column without a time zone)")
        return None  # an instant in UTC into a zone-less column: its UTC wall time
    if type(want) is not type(got):
        return f"a {got} is not a {want}"
    return None
