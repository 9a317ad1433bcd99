"""Extracts from a real PostgreSQL server, started by the tests, through the installed command.

A project that is not the demo declares an ``orders`` source extracted from a PostgreSQL table
(incremental by ``updated_at``) and a model that keeps each order's latest version. The days are
extracted with ``starsmith extract`` and built with ``starsmith build --in-process``, with
updates in the database between the days. Bad input is refused typed, with nothing landed:
a column dropped in the database, a wrong password, a server that is down (retryable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from starsmith.orchestration.server import LocalServer
from tests.pg_server import PASSWORD, PgServer, pg_bindir, pg_server
from tests.test_projects import out, starsmith

pytestmark = [pytest.mark.skipif(pg_bindir() is None, reason="PostgreSQL is not installed (no "
                                 "pg_config or /usr/lib/postgresql/*/bin/initdb); .ci/run "
                                 "installs it")]
D1, D2, D3 = date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)

STARSMITH_TOML = """\
name = "pgshop"
models = "models"
landing = "landing"
state = ".state"
{extra}
"""

SOURCES_PY = '''\
import polars as pl

from starsmith import Cadence, Column, Postgres, Source

ORDERS = Source(
    "orders", "parquet",
    (
        Column("id", pl.Int64(), "order number", nullable=False),
        Column("customer", pl.String(), "who ordered"),
        Column("note", pl.String(), "free text"),
        Column("amount", pl.Decimal(12, 2), "order total"),
        Column("qty", pl.Int32(), "items"),
        Column("updated_at", pl.Datetime("us", "UTC"), "last change"),
    ),
    "Orders, extracted from the shop's database.",
    cadence=Cadence.CHANGE_FEED,
    extract=Postgres(connection="shop", table="orders", cursor="updated_at"),
)
'''

MODEL_PY = '''\
import polars as pl

from starsmith import Column, Input, Kind, Model, Strategy

from .sources import ORDERS


def transform(inputs, ctx):
    return inputs["landing.orders"]


MODEL = Model(
    name="orders_current", kind=Kind.STAGING, inputs=(Input("landing.orders"),),
    columns=ORDERS.columns, transform=transform, strategy=Strategy.MERGE, unique_key=("id",),
    description="Each order as it is now.")
'''

TABLE = """
CREATE TABLE orders (id int8 PRIMARY KEY, customer text, note text, amount numeric(12,2),
                     qty int4, updated_at timestamptz NOT NULL);
ALTER TABLE orders OWNER TO starsmith;
INSERT INTO orders VALUES
  (1, 'ana',   'gift wrap', 12.50,  2, '2024-01-01 09:00+00'),
  (2, 'bruno', NULL,        99.99,  1, '2024-01-01 10:30+00'),
  (3, 'carla', NULL,        NULL,   NULL, '2024-01-01 11:00+00'),
  (4, 'dora',  'urgent',    -3.10,  7, '2024-01-01 23:59:59.999999+00');
"""
CONTRACT = {"id": pl.Int64(), "customer": pl.String(), "note": pl.String(),
            "amount": pl.Decimal(12, 2), "qty": pl.Int32(),
            "updated_at": pl.Datetime("us", "UTC")}


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


@dataclass
class Shop:
    root: Path
    pg: PgServer
    database: str

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    def uri(self, password: str = PASSWORD) -> str:
        return self.pg.uri(password=password, database=self.database)

    def sql(self, statement: str) -> str:
        return self.pg.psql(statement, database=self.database)

    def run(self, *args: str, uri: str | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        env = {"STARSMITH_CONN_SHOP": uri} if uri != "" else {}
        if uri is None:
            env["STARSMITH_CONN_SHOP"] = self.uri()
        return starsmith(*args, "--project", str(self.root), cwd=self.root, timeout=timeout,
                         **env)

    def folder(self, day: date) -> Path:
        return self.landing / "orders" / f"date={day.isoformat()}"

    def manifest(self, day: date) -> dict[str, object]:
        found: dict[str, object] = json.loads((self.folder(day) / "_manifest.json").read_text())
        return found

    def landed(self, day: date) -> pl.DataFrame:
        return pl.read_parquet(self.folder(day) / "part-0.parquet")

    def table(self, name: str) -> pl.DataFrame:
        with duckdb.connect(str(self.root / ".state" / "warehouse.duckdb"), read_only=True) as c:
            return c.sql(f"SELECT * FROM main.{name}").pl()

    def run_log(self) -> pl.DataFrame:
        with duckdb.connect(str(self.root / ".state" / "warehouse.duckdb"), read_only=True) as c:
            return c.sql("SELECT model, logical_date, status, details FROM _starsmith.run_log "
                         "ORDER BY logical_date").pl()


def make_project(root: Path, extra: str = "") -> Path:
    (root / "models").mkdir(parents=True)
    (root / "starsmith.toml").write_text(STARSMITH_TOML.format(extra=extra))
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "sources.py").write_text(SOURCES_PY)
    (root / "models" / "orders_current.py").write_text(MODEL_PY)
    return root


@pytest.fixture
def shop(pg: PgServer, tmp_path: Path) -> Shop:
    """A fresh database with the orders table, and a project reading it."""
    database = f"shop_{uuid.uuid4().hex[:8]}"
    pg.psql(f"CREATE DATABASE {database} OWNER starsmith", database="postgres")
    made = Shop(make_project(tmp_path / "pgshop"), pg, database)
    made.sql(TABLE)
    return made


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_days_land_typed_and_incremental_and_build(shop: Shop) -> None:
    done = shop.run("extract", "--date", str(D1))
    assert done.returncode == 0, out(done)
    assert "orders 2024-01-01: landed 4 row(s)" in done.stdout, out(done)
    day1 = shop.landed(D1)
    assert dict(day1.schema) == CONTRACT  # exact types: Decimal(12,2), Datetime(us, UTC)
    assert day1.sort("id").rows() == [
        (1, "ana", "gift wrap", Decimal("12.50"), 2, datetime(2024, 1, 1, 9, tzinfo=UTC)),
        (2, "bruno", None, Decimal("99.99"), 1, datetime(2024, 1, 1, 10, 30, tzinfo=UTC)),
        (3, "carla", None, None, None, datetime(2024, 1, 1, 11, tzinfo=UTC)),
        (4, "dora", "urgent", Decimal("-3.10"), 7,
         datetime(2024, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)),
    ]
    window = shop.manifest(D1)["extract"]
    assert isinstance(window, dict)
    assert (window["cursor"], window["low"], window["high"]) == (
        "updated_at", None, "2024-01-01T23:59:59.999999+00:00")
    assert shop.manifest(D1)["dead_letter"] == {"file": None, "rows": 0}

    # re-running a landed day is a no-op; --force lands byte-identical data from the same window
    first = sha(shop.folder(D1) / "part-0.parquet")
    again = shop.run("extract", "--date", str(D1))
    assert again.returncode == 0 and "already landed" in again.stdout, out(again)
    forced = shop.run("extract", "--date", str(D1), "--force")
    assert forced.returncode == 0 and "landed 4 row(s)" in forced.stdout, out(forced)
    assert sha(shop.folder(D1) / "part-0.parquet") == first

    # day 2: one order changed, one new, one row dated day 3 already (it waits for day 3)
    shop.sql("UPDATE orders SET amount = 120.00, qty = 2, updated_at = '2024-01-02 08:00+00' "
             "WHERE id = 2; INSERT INTO orders VALUES (5, 'eva', NULL, 7.05, 1, "
             "'2024-01-02 12:00+00'), (6, 'fred', NULL, 1.00, 1, '2024-01-03 00:00+00')")
    done = shop.run("extract", "--date", str(D2))
    assert done.returncode == 0, out(done)
    day2 = shop.landed(D2)
    assert day2["id"].to_list() == [2, 5]  # only the changes, in cursor order
    assert day2.filter(pl.col("id") == 2)["amount"].to_list() == [Decimal("120.00")]
    assert shop.manifest(D2)["extract"]["low"] == "2024-01-01T23:59:59.999999+00:00"  # type: ignore[index]

    shop.sql("UPDATE orders SET note = 'call first', updated_at = '2024-01-03 09:00+00' "
             "WHERE id = 3")
    done = shop.run("extract", "--date", str(D3))
    assert done.returncode == 0, out(done)
    assert sorted(shop.landed(D3)["id"].to_list()) == [3, 6]

    built = shop.run("build", "--in-process", "--from", str(D1), "--to", str(D3))
    assert built.returncode == 0, out(built)
    current = shop.table("orders_current").sort("id")
    assert current.select(list(CONTRACT)).rows() == [
        (1, "ana", "gift wrap", Decimal("12.50"), 2, datetime(2024, 1, 1, 9, tzinfo=UTC)),
        (2, "bruno", None, Decimal("120.00"), 2, datetime(2024, 1, 2, 8, tzinfo=UTC)),
        (3, "carla", "call first", None, None, datetime(2024, 1, 3, 9, tzinfo=UTC)),
        (4, "dora", "urgent", Decimal("-3.10"), 7,
         datetime(2024, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)),
        (5, "eva", None, Decimal("7.05"), 1, datetime(2024, 1, 2, 12, tzinfo=UTC)),
        (6, "fred", None, Decimal("1.00"), 1, datetime(2024, 1, 3, tzinfo=UTC)),
    ]
    details = [json.loads(d) for d in shop.run_log()["details"].to_list()]
    assert [d.get("dead_letters") for d in details] == [0, 0, 0]


def test_build_extracts_the_day_it_builds(shop: Shop) -> None:
    built = shop.run("build", "--in-process", "--date", str(D1))
    assert built.returncode == 0, out(built)
    assert "extract orders 2024-01-01: landed 4 row(s)" in built.stdout, out(built)
    assert shop.table("orders_current").height == 4


def test_a_value_that_does_not_convert_goes_to_the_dead_letters(shop: Shop) -> None:
    shop.sql("INSERT INTO orders VALUES (7, 'gus', 'bad amount', 'NaN', 1, "
             "'2024-01-01 12:00+00')")
    done = shop.run("extract", "--date", str(D1))
    assert done.returncode == 0, out(done)
    assert "landed 4 row(s)" in done.stdout and "1 dead letter(s)" in done.stdout, out(done)
    assert 7 not in shop.landed(D1)["id"].to_list()
    dead = pl.read_parquet(shop.folder(D1) / "_dead_letter.parquet")
    assert dead.columns == [*CONTRACT, "reason"]
    assert dead.select("id", "customer", "amount", "reason").rows() == [
        ("7", "gus", "nan", "amount: nan is not a valid Decimal(precision=12, scale=2)")]
    assert shop.manifest(D1)["dead_letter"] == {"file": "_dead_letter.parquet", "rows": 1}

    built = shop.run("build", "--in-process", "--date", str(D1))
    assert built.returncode == 0, out(built)
    assert json.loads(shop.run_log()["details"][0])["dead_letters"] == 1
    assert shop.table("orders_current").height == 4


def test_a_dropped_column_is_a_data_error_and_lands_nothing(shop: Shop) -> None:
    shop.sql("ALTER TABLE orders DROP COLUMN note")
    done = shop.run("extract", "--date", str(D1))
    assert done.returncode == 2, out(done)
    text = " ".join(done.stdout.split())
    assert "(not retryable)" in text and "'note' not in table orders" in text, out(done)
    assert not shop.folder(D1).exists()


def test_a_wrong_password_is_a_config_error_that_shows_no_password(shop: Shop) -> None:
    wrong = "Wr0ng-pa55word"
    done = shop.run("extract", "--date", str(D1), uri=shop.uri(password=wrong))
    assert done.returncode == 2, out(done)
    text = " ".join((done.stdout + done.stderr).split())
    assert "(not retryable)" in text and "password authentication failed" in text, out(done)
    assert "connection 'shop'" in text
    assert wrong not in done.stdout + done.stderr and PASSWORD not in done.stdout + done.stderr
    assert not shop.folder(D1).exists()


def test_the_connection_comes_from_the_secrets_file(shop: Shop) -> None:
    (shop.root / "secrets.toml").write_text(f'[connections]\nshop = "{shop.uri()}"\n')
    missing = shop.run("extract", "--date", str(D1), uri="")
    assert missing.returncode == 2 and "connection 'shop' is not configured" in missing.stdout
    assert "STARSMITH_CONN_SHOP" in missing.stdout, out(missing)
    config = shop.root / "starsmith.toml"
    config.write_text(config.read_text() + 'secrets_file = "secrets.toml"\n')
    done = shop.run("extract", "--date", str(D1), uri="")
    assert done.returncode == 0 and "landed 4 row(s)" in done.stdout, out(done)


def test_a_server_that_is_down_is_retried_with_backoff(shop: Shop) -> None:
    shop.pg.stop()
    try:
        down = shop.run("extract", "--date", str(D1))
        assert down.returncode == 2, out(down)
        text = " ".join(down.stdout.split())
        assert "(retryable)" in text and "cannot reach the database" in text, out(down)
        assert not shop.folder(D1).exists()

        # with attempts to spare, the extract waits out the outage (1 s, 2 s, 4 s apart)
        restart = threading.Timer(4.0, shop.pg.start)
        restart.start()
        began = time.monotonic()
        retried = shop.run("extract", "--date", str(D1), "--attempts", "5")
        restart.join()
    finally:
        if not (shop.pg.folder / "data" / "postmaster.pid").exists():
            shop.pg.start()
    assert retried.returncode == 0, out(retried)
    assert "retrying in 1 s" in retried.stderr and "landed 4 row(s)" in retried.stdout, out(retried)
    assert time.monotonic() - began >= 4.0


@pytest.mark.temporal
@pytest.mark.slow
def test_the_workflow_extracts_before_it_builds(shop: Shop, temporal_server: LocalServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from starsmith.project import load_project
    from tests.temporal_helpers import request, run_build

    project = load_project(shop.root)
    warehouse = shop.root / ".state" / "warehouse.duckdb"
    monkeypatch.setenv("STARSMITH_CONN_SHOP", shop.uri())
    req = request(shop.landing, warehouse, [D1])
    report, _ = asyncio.run(run_build(temporal_server.address, req, project=project))
    assert report.ok, report
    assert [r.model for r in report.days[0].built] == ["orders_current"]
    assert shop.manifest(D1)["files"][0]["rows"] == 4  # type: ignore[index]
    assert shop.table("orders_current").height == 4

    # bad credentials: not retried, reported on the day as a failed extract; the day waits
    monkeypatch.setenv("STARSMITH_CONN_SHOP", shop.uri(password="nope-nope"))
    report, handle = asyncio.run(run_build(temporal_server.address, request(
        shop.landing, warehouse, [D2]), project=project))
    assert not report.ok
    extract = report.days[0]
    assert extract.logical_date == str(D2)
    assert "password authentication failed" in extract.failed["extract orders"]
    assert "nope-nope" not in extract.failed["extract orders"]
    assert not shop.folder(D2).exists()

    async def attempts() -> list[int]:
        from temporalio.api.enums.v1 import EventType
        from temporalio.client import Client

        client = await Client.connect(temporal_server.address)
        history = await client.get_workflow_handle(handle.id).fetch_history()
        scheduled = {e.event_id for e in history.events
                     if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                     and e.activity_task_scheduled_event_attributes.activity_type.name
                     == "extract_source"}
        return [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                and e.activity_task_started_event_attributes.scheduled_event_id in scheduled]

    assert asyncio.run(attempts()) == [1]  # a ConfigError is not retried
