"""Avro sources as a user meets them: a project of their own whose payments feed lands as Avro
files written by fastavro, built with the installed ``starsmith build --in-process``.

The file's embedded schema is the contract's evidence: decimals keep their scale, UTC timestamps
their zone; a file cut short, a schema that contradicts the contract, or a file holding other
than its manifest's row count is refused naming the file, and the warehouse keeps what it had.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from starsmith.loaders import avro
from starsmith.loaders.landed import MARKER, write_manifest
from tests.test_projects import STARSMITH, cli_env, out
from tests.user_projects import starsmith_toml

FIRST = date(2024, 3, 1)
DAYS = 3  # landed and built by the module's project; each case lands day 4 its own way

STARSMITH_TOML = starsmith_toml("payments", memory_limit="512MB")

SOURCES_PY = '''\
"""The card processor's daily settlement export, in Avro."""

import polars as pl

from starsmith import Cadence, Column, Source

PAYMENTS = Source(
    "payments", "avro",
    (
        Column("payment_id", pl.Int64(), "payment number", nullable=False),
        Column("amount", pl.Decimal(12, 2), "amount settled"),
        Column("paid_at", pl.Datetime("us", "UTC"), "when it was paid"),
        Column("note", pl.String(), "the payer's note, if any"),
        Column("quantity", pl.Int64(), "items paid for"),
        Column("channel", pl.String(), "web or store"),
    ),
    "Settled payments, one export a day.",
    cadence=Cadence.DAILY,
)
'''

STG_PY = '''\
"""The payments as landed, one partition per landing day."""

from collections.abc import Mapping

import polars as pl

from starsmith import BuildContext, Column, Input, Kind, Model, Strategy

from ..sources import PAYMENTS


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["landing.payments"].with_columns(load_date=pl.lit(ctx.logical_date))


MODEL = Model(
    name="stg_payments",
    kind=Kind.STAGING,
    inputs=(Input("landing.payments"),),
    columns=(*PAYMENTS.columns, Column("load_date", pl.Date(), "the landing day", nullable=False)),
    transform=transform,
    strategy=Strategy.PARTITION,
    partition_by="load_date",
)
'''

AVRO_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Payment", "namespace": "com.example.settlement", "fields": [
        {"name": "payment_id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12,
                                    "scale": 2}},
        {"name": "paid_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "quantity", "type": "int"},  # 32 bits into the contract's Int64: a widening
        {"name": "channel", "type": "string", "default": "web"},  # Polars refuses defaults
        {"name": "terminal", "type": "string"},  # not in the contract: ignored with a warning
    ]}


def day(n: int) -> date:
    return FIRST + timedelta(days=n - 1)


def records(n: int) -> list[dict[str, Any]]:
    """Day n's payments: exact cents, microseconds, NULL notes, store and web."""
    return [{
        "payment_id": n * 1000 + i,
        "amount": Decimal(f"{(i * 37 + n) % 500}.{(i * 7) % 100:02d}") * (-1 if i == 3 else 1),
        "paid_at": datetime(2024, 3, n, 9, i, 0, i * 1001 + 7, tzinfo=UTC),
        "note": None if i % 3 == 0 else f"order {i} - café",
        "quantity": i + 1,
        "channel": "store" if i % 2 else "web",
        "terminal": f"T{i % 4}",
    } for i in range(4 + n)]


def expected(days: list[int]) -> pl.DataFrame:
    """What stg_payments must hold after those days: every value and type kept."""
    rows = [{**{k: v for k, v in r.items() if k != "terminal"}, "load_date": day(n)}
            for n in days for r in records(n)]
    return pl.DataFrame(rows, schema={
        "payment_id": pl.Int64(), "amount": pl.Decimal(12, 2),
        "paid_at": pl.Datetime("us", "UTC"), "note": pl.String(), "quantity": pl.Int64(),
        "channel": pl.String(), "load_date": pl.Date()}).sort("payment_id")


def write_avro(path: Path, rows: list[dict[str, Any]], schema: dict[str, Any] = AVRO_SCHEMA,
               *, sync_interval: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), rows, codec="deflate",
                        sync_interval=sync_interval)
    return path


def land(root: Path, n: int, rows: list[dict[str, Any]] | None = None, *,
         manifest_rows: int | None = None, marker: bool = False,
         schema: dict[str, Any] = AVRO_SCHEMA) -> Path:
    """Land day n as an exporter does: the data file first, then its manifest (or marker)."""
    rows = records(n) if rows is None else rows
    path = write_avro(root / "landing" / "payments" / f"date={day(n)}" / "part-0.avro", rows,
                      schema)
    if marker:
        (path.parent / MARKER).touch()
    else:
        write_manifest(path.parent, {path.name: len(rows) if manifest_rows is None
                                     else manifest_rows})
    return path


def build(root: Path) -> tuple[int, str]:
    proc = subprocess.run([str(STARSMITH), "build", "--in-process"], cwd=root, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, out(proc)


def table(root: Path) -> pl.DataFrame:
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql("SELECT * FROM stg_payments ORDER BY payment_id").pl()


def built_days(root: Path) -> list[date]:
    with duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True) as con:
        return [r[0] for r in con.execute(
            "SELECT DISTINCT logical_date FROM _starsmith.watermarks WHERE model = "
            "'stg_payments' ORDER BY 1").fetchall()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project with days 1 to 3 landed and built, once."""
    root = tmp_path_factory.mktemp("avro") / "payments"
    (root / "models" / "staging").mkdir(parents=True)
    (root / "starsmith.toml").write_text(STARSMITH_TOML)
    (root / "models" / "sources.py").write_text(SOURCES_PY)
    (root / "models" / "staging" / "stg_payments.py").write_text(STG_PY)
    for n in range(1, DAYS + 1):
        land(root, n)
    code, text = build(root)
    assert code == 0, text
    return root


@pytest.fixture
def shop(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built project."""
    copy = tmp_path / "payments"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def test_avro_days_build_with_their_types_kept(built: Path) -> None:
    got = table(built)
    assert got.schema["amount"] == pl.Decimal(12, 2)
    assert got.schema["paid_at"] == pl.Datetime("us", "UTC")
    assert_frame_equal(got, expected([1, 2, 3]), check_dtypes=True)
    assert built_days(built) == [day(1), day(2), day(3)]


def _refused(root: Path, *words: str) -> str:
    before = table(root)
    code, text = build(root)
    assert code == 1, text  # the day's step failed (a DataError: not retried)
    assert "1 failed" in text and "0 rows written" in text, text
    for word in words:
        assert word in text, f"{word!r} missing:\n{text}"
    assert_frame_equal(table(root), before)  # nothing published from the refused day
    assert built_days(root) == [day(1), day(2), day(3)]
    return text


def test_a_truncated_avro_file_is_refused_naming_it_then_the_fixed_day_builds(
        shop: Path) -> None:
    path = land(shop, 4, records(4) * 300, marker=True)  # several blocks; _SUCCESS, no manifest
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # cut inside a block
    _refused(shop, "part-0.avro", "corrupt or cut short", f"date={day(4)}")

    land(shop, 4, marker=True)  # the corrected export
    code, text = build(shop)
    assert code == 0, text
    assert_frame_equal(table(shop), expected([1, 2, 3, 4]), check_dtypes=True)


def test_an_embedded_schema_contradicting_the_contract_names_the_column(shop: Path) -> None:
    fields = {f["name"]: f for f in AVRO_SCHEMA["fields"]}
    fields["payment_id"] = {"name": "payment_id", "type": "string"}
    fields["amount"] = {"name": "amount", "type": {
        "type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}}
    rows = [{**r, "payment_id": str(r["payment_id"])} for r in records(4)]
    land(shop, 4, rows, schema={**AVRO_SCHEMA, "fields": list(fields.values())})
    text = _refused(shop, "drifted from its contract", "part-0.avro",
                    "column 'payment_id' changed type: declared Int64, found String",
                    "column 'amount' cannot hold its declared Decimal(precision=12, scale=2)",
                    "scale 3 would be rounded to 2", "Fix the export")
    assert text.count("'terminal'") == 1, text  # an extra column: a warning, not a problem
    assert "has a new column 'terminal' (String)" in text


def test_a_missing_required_column_is_refused(shop: Path) -> None:
    schema = {**AVRO_SCHEMA, "fields": [f for f in AVRO_SCHEMA["fields"]
                                        if f["name"] != "payment_id"]}
    land(shop, 4, schema=schema)
    _refused(shop, "missing column 'payment_id' (Int64)", "part-0.avro")


def test_a_nullable_union_for_a_required_column_is_read_and_its_nulls_refused(
        shop: Path) -> None:
    """As for Parquet, a union with "null" is no drift by itself (exporters mark columns
    optional); a NULL that arrives in a not-null column fails the model's contract on its staged
    rows, and nothing is published."""
    fields = [{**f, "type": ["null", "long"]} if f["name"] == "payment_id" else f
              for f in AVRO_SCHEMA["fields"]]
    rows = records(4)
    land(shop, 4, [{**r, "payment_id": None} if i == 1 else r for i, r in enumerate(rows)],
         schema={**AVRO_SCHEMA, "fields": fields})
    _refused(shop, "break the model contract", "1 row(s) with null payment_id")


def test_a_file_holding_other_than_its_manifests_rows_is_refused(shop: Path) -> None:
    rows = records(4)
    land(shop, 4, rows[:-2], manifest_rows=len(rows))  # bytes and sha256 match: rows do not
    _refused(shop, f"part-0.avro holds {len(rows) - 2} rows, its manifest says {len(rows)}")


def test_the_avro_type_mapping_is_what_polars_reads(tmp_path: Path) -> None:
    """The one mapping (avro.polars_type) read from the header agrees with the rows Polars
    decodes, for every type it accepts; what Polars cannot read is refused from the header."""
    schema = {"type": "record", "name": "All", "fields": [
        {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"},
        {"name": "l", "type": "long"}, {"name": "f", "type": "float"},
        {"name": "d", "type": "double"}, {"name": "s", "type": "string"},
        {"name": "by", "type": "bytes"},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "dec", "type": {"type": "fixed", "name": "D8", "size": 8,
                                 "logicalType": "decimal", "precision": 18, "scale": 3}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
        {"name": "lts", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "tm", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "blue"]}},
        {"name": "e2", "type": ["null", "Colour"]},
        {"name": "arr", "type": {"type": "array", "items": "long"}},
        {"name": "rec", "type": {"type": "record", "name": "In", "fields": [
            {"name": "x", "type": "int"}]}},
        {"name": "n", "type": ["null", "long"]},
        {"name": "n2", "type": ["long", "null"], "default": 5},
    ]}
    stamp = datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)
    row = {"b": True, "i": 7, "l": 1 << 40, "f": 1.5, "d": 2.25, "s": "é", "by": b"\x00\x01",
           "fx": b"abcd", "dec": Decimal("-12.345"), "day": date(2024, 3, 1), "tms": stamp,
           "tns": 1_709_296_215_250_000_123, "lts": datetime(2024, 3, 1, 12, 30),
           "tm": datetime(2024, 3, 1, 1, 2, 3, 4).time(), "e": "blue", "e2": None,
           "arr": [1, 2], "rec": {"x": 3}, "n": None, "n2": 9}
    path = write_avro(tmp_path / "all.avro", [row, {**row, "e": "red", "e2": "blue"}], schema)
    found = avro.open_file(path)
    frame = avro.read(found)
    assert frame.schema == found.schema
    assert frame["e"].to_list() == ["blue", "red"] and frame["e2"].to_list() == [None, "blue"]
    assert found.schema["dec"] == pl.Decimal(18, 3)
    assert found.schema["tns"] == pl.Datetime("ns", "UTC")
    assert found.schema["e"] == found.schema["e2"] == pl.String()
    got = frame.row(0, named=True)
    assert got["dec"] == Decimal("-12.345") and got["tms"] == stamp and got["e"] == "blue"
    assert got["tns"] == datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)  # ns kept below
    assert frame["tns"].dt.nanosecond()[0] == 250_000_123
    assert got["n"] is None and got["n2"] == 9 and got["arr"] == [1, 2]
    assert avro.count_rows(path) == 2

    for bad, words in [({"type": "map", "values": "long"}, "a map"),
                       (["null", "long", "string"], "a union"),
                       ({"type": "bytes", "logicalType": "decimal", "precision": 40},
                        "1 to 38 digits"),
                       ({"type": "array", "items": {"type": "enum", "name": "E",
                                                    "symbols": ["a"]}}, "an enum inside"),
                       ({"type": "record", "name": "Node", "fields": [
                           {"name": "next", "type": ["null", "Node"]}]}, "recursive type")]:
        odd = write_avro(tmp_path / "odd.avro", [], {"type": "record", "name": "Odd",
                                                    "fields": [{"name": "c", "type": bad}]})
        with pytest.raises(avro.DataError) as err:
            avro.open_file(odd)
        assert "column 'c'" in err.value.what and words in err.value.what, err.value.what
        assert err.value.where == str(odd)


def test_a_file_cut_short_fails_its_lazy_read_naming_it(tmp_path: Path) -> None:
    """The rows are decoded when the frame is collected: a file whose blocks break there is a
    DataError naming it, raised through Polars' collect as it is (not an engine error)."""
    path = write_avro(tmp_path / "part-0.avro", records(4) * 300, sync_interval=2000)
    path.write_bytes(path.read_bytes()[:-700])
    contract = pl.Schema({"payment_id": pl.Int64(), "channel": pl.String()})
    checked: list[Path] = []
    frame = avro.scan([path], contract, lambda f: checked.append(f.path))
    assert checked == [path]  # the header is whole: checked before any row is read
    with pytest.raises(avro.DataError) as err:
        frame.collect()
    assert err.value.where == str(path) and "cut short" in err.value.what
    assert not err.value.retryable


def test_polars_own_avro_error_is_typed_as_bad_input_naming_the_file(shop: Path) -> None:
    """An Avro error from Polars reaching the step's boundary (orchestration/failures.py) is a
    DataError naming the landed file it comes from, found by reading the step's files again."""
    from starsmith.config import ProjectConfig
    from starsmith.discover import load_catalogue
    from starsmith.orchestration.failures import typed
    from starsmith.orchestration.messages import StepRequest
    from starsmith.project import load_project

    path = land(shop, 4, records(4) * 300, marker=True)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(pl.exceptions.ComputeError) as raw:
        pl.read_avro(path)
    cfg, cat = ProjectConfig.load(shop), load_catalogue(load_project(shop))
    req = StepRequest("stg_payments", day(4).isoformat(), "run", str(cfg.landing),
                      cfg.warehouse_ref, staging=str(cfg.staging))
    err = typed(raw.value, cat.models["stg_payments"], req, cat)
    assert isinstance(err, avro.DataError) and not err.retryable, err
    assert err.where == str(path) and "part-0.avro cannot be read" in err.what, err
