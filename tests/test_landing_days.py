"""A full refresh reads a chunk of daily Parquet landings in one scan and runs the days'
transforms in one engine call (loaders/landing_days.py, orchestration/many_days.py); a nightly
build reads and transforms one day. Both must give the same tables and the same errors.

The project is a user's, written as text and built through the installed command: a daily
source, a staging model that dedupes each day and stamps its logical date, and a model reading
the staging model's day partition. Its landing is messy on purpose: two files on some days, a
day without a nullable column, a day with a column the contract does not declare, a day with a
narrower integer type, columns in another order, an empty day (the source allows it), a file
with no rows, rows repeated within a day and across days, days judged by their files, by a
``_SUCCESS`` marker or by a manifest. Then the errors of one old day (a manifest's row count, a
checksum, a changed type, a missing required column, an empty day) and a transform that fails on
one day must read as the nightly build of that day says them.

The staging transform notes in the project's folder when it is called and when its rows are
computed: a full refresh that fell back to reading and transforming day by day would still pass
the comparisons, so the test checks that the shared path ran."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from starsmith.loaders.landed import MANIFEST, MARKER, write_manifest
from tests.user_projects import STARSMITH, starsmith_toml

FIRST = date(2024, 3, 1)
DAYS = 12

MODELS = '''\
"""Orders as landed each day, and each customer's day."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path

import polars as pl

from starsmith import BuildContext, Column, Guard, Input, Kind, Model, Source, Strategy
from starsmith import quarantine_when

BROKEN = @BROKEN@  # a logical date the staging transform fails on (None: none)
FAILS = "@FAILS@"  # how: "raise" when called, "engine" when its rows are computed
CALLS = Path(__file__).resolve().parents[1] / "calls.log"  # when the transform ran

ORDERS = Source("orders", "parquet", (
    Column("order_id", pl.Int64(), "order number", nullable=False),
    Column("customer", pl.String(), "who ordered", nullable=False),
    Column("qty", pl.Int64(), "units, NULL when not known"),
    Column("amount", pl.Float64(), "value, NULL when not priced"),
    Column("note", pl.String(), "free text, added to the export later"),
), guard=Guard(allow_empty=@EMPTY@))


def _note(line: str) -> None:
    with CALLS.open("a") as fh:
        fh.write(line + "\\n")


def _computed(ids: pl.Series) -> pl.Series:
    _note("computed")
    return ids


def stage(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    if ctx.logical_date == BROKEN and FAILS == "raise":
        raise ValueError(f"no prices for {ctx.logical_date}")
    _note(f"called {ctx.logical_date}")
    rows = inputs["landing.orders"].unique(maintain_order=True)  # a re-sent row, once a day
    if ctx.logical_date == BROKEN:  # fails in the engine, on this day's rows only
        rows = rows.with_columns(pl.col("customer").cast(pl.Int64))
    rows = rows.with_columns(load_date=pl.lit(ctx.logical_date),
                             order_id=pl.col("order_id").map_batches(_computed,
                                                                     return_dtype=pl.Int64()))
    return quarantine_when(rows, [(pl.col("amount").is_null(), "order {order_id} has no amount")])


STG = Model(
    name="stg_orders", kind=Kind.STAGING, inputs=(Input("landing.orders"),),
    columns=(*ORDERS.columns, Column("load_date", pl.Date(), "landing day", nullable=False)),
    transform=stage, strategy=Strategy.PARTITION, partition_by="load_date",
    description="orders as landed, each once a day")


def by_customer(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    days = inputs["stg_orders"].group_by("load_date", "customer").agg(
        orders=pl.len().cast(pl.Int64), qty=pl.col("qty").sum(), top=pl.col("amount").max(),
        counted=pl.col("qty").count())
    return quarantine_when(days.with_columns(built_for=pl.lit(ctx.logical_date)),
                           [(pl.col("counted") == 0, "{customer} has no quantity")])


CUSTOMER_DAY = Model(
    name="customer_day", kind=Kind.STAGING, inputs=(Input("stg_orders"),),
    columns=(Column("load_date", pl.Date(), "landing day", nullable=False),
             Column("built_for", pl.Date(), "the run's logical date", nullable=False),
             Column("customer", pl.String(), "who ordered"),
             Column("orders", pl.Int64(), "orders that day"),
             Column("qty", pl.Int64(), "units that day"),
             Column("top", pl.Float64(), "largest order")),
    transform=by_customer, strategy=Strategy.PARTITION, partition_by="load_date",
    description="each customer's day")
'''


def models(*, broken: date | None = None, fails: str = "raise", empty: bool = True) -> str:
    return (MODELS.replace("@BROKEN@", f"date({broken.year}, {broken.month}, {broken.day})"
                           if broken else "None")
            .replace("@FAILS@", fails).replace("@EMPTY@", str(empty)))


def project(root: Path, text: str) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "starsmith.toml").write_text(starsmith_toml("orders"))
    (root / "models" / "orders.py").write_text(text)
    return root


def folder(root: Path, n: int) -> Path:
    path = root / "landing" / "orders" / f"date={(FIRST + timedelta(n)).isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def land(root: Path, n: int, files: dict[str, pl.DataFrame], mark: str = "") -> Path:
    """Day ``n``'s files; ``mark``: "manifest", "success" or "" (none: judged by its files)."""
    path = folder(root, n)
    for name, frame in files.items():
        frame.write_parquet(path / name)
    if mark == "manifest":
        write_manifest(path, {name: frame.height for name, frame in files.items()})
    elif mark == "success":
        (path / MARKER).touch()
    return path


def orders(n: int, rows: int = 9) -> pl.DataFrame:
    """Day ``n``'s orders (in the contract's types), its first three rows sent twice."""
    rng = np.random.default_rng(n)
    frame = pl.DataFrame({
        "order_id": np.arange(rows) + 100 * n,
        "customer": rng.choice(["ann", "bob", "cy", "dee"], rows),
        "qty": [None if x < 0.2 else int(x * 10) for x in rng.random(rows)],
        "amount": [None if x < 0.2 else round(x * 100, 2) for x in rng.random(rows)],
        "note": [None if x < 0.5 else f"note {n}" for x in rng.random(rows)],
    }, schema={"order_id": pl.Int64, "customer": pl.String, "qty": pl.Int64,
               "amount": pl.Float64, "note": pl.String})
    eve = pl.DataFrame({"order_id": [100 * n + 99], "customer": ["eve"], "qty": [None],
                        "amount": [n + 0.5], "note": [None]}, schema=frame.schema)
    return pl.concat([frame, eve, frame.head(3)])  # eve's day: no quantity known


def messy(root: Path) -> None:
    """Twelve days that differ in every way a day-by-day read accepts."""
    land(root, 0, {"part-0.parquet": orders(0)})  # no marker: judged by its files
    land(root, 1, {"part-0.parquet": orders(1).head(6), "part-1.parquet": orders(1).tail(7)})
    land(root, 2, {"part-0.parquet": orders(2).drop("note")})  # a nullable column missing
    three = orders(3)  # a row in both files: one order that day
    land(root, 3, {"a.parquet": three.head(7), "b.parquet": three.tail(7)}, "manifest")
    land(root, 4, {"part-0.parquet": orders(4).with_columns(channel=pl.lit("web"))}, "success")
    land(root, 5, {"part-0.parquet": orders(5).with_columns(pl.col("qty").cast(pl.Int32)),
                   "part-1.parquet": orders(55).with_columns(pl.col("qty").cast(pl.Int32))},
         "manifest")
    (folder(root, 6) / MARKER).touch()  # an empty day: the export had nothing
    land(root, 7, {"part-0.parquet": orders(7).clear(), "part-1.parquet": orders(7)}, "manifest")
    land(root, 8, {"part-0.parquet": orders(0)}, "success")  # day 0 again, order for order
    land(root, 9, {"part-0.parquet": orders(9).drop("note").with_columns(
        pl.col("qty").cast(pl.Int16), channel=pl.lit(9)).select(
        "channel", "amount", "qty", "customer", "order_id")}, "manifest")
    land(root, 10, {"part-0.parquet": orders(10).with_columns(
        pl.col("amount").cast(pl.Float32)).select(
        "note", "amount", "qty", "customer", "order_id")}, "success")
    land(root, 11, {"x.parquet": orders(11), "y.parquet": orders(12)}, "manifest")


def build(root: Path, *args: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STARSMITH), *(["-v"] if verbose else []), "build", "--in-process",
                           *args], cwd=root, capture_output=True, text=True, timeout=300)


def day(n: int) -> str:
    return (FIRST + timedelta(n)).isoformat()


def tables(root: Path) -> dict[str, pl.DataFrame]:
    """Every published table, sorted; when a quarantine ran (and by which run) left out."""
    con = duckdb.connect(str(root / ".state" / "warehouse.duckdb"), read_only=True)
    try:
        names = [r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() WHERE "
                                       "schema_name = 'main' ORDER BY 1").fetchall()]
        return {n: con.sql(f'SELECT * EXCLUDE (run_id, quarantined_at) FROM "{n}" ORDER BY ALL'
                           if n.endswith("__quarantine")
                           else f'SELECT * FROM "{n}" ORDER BY ALL').pl() for n in names}
    finally:
        con.close()


def calls(root: Path) -> list[str]:
    """What the staging transform noted: "called <day>" when it was called, "computed" when its
    rows were computed."""
    return (root / "calls.log").read_text().splitlines()


def assert_shared(done: subprocess.CompletedProcess[str], root: Path, days: int) -> None:
    """The full refresh (run with --verbose) read the landings in one scan and called every
    day's transform before any was computed, and never again (a nightly build computes each day
    before it calls the next; a fallback calls them again, one by one)."""
    assert "read day by day" not in done.stderr
    noted = calls(root)
    assert noted[:days] == [f"called {day(n)}" for n in range(days)], noted
    assert "computed" in noted and not any(x.startswith("called") for x in noted[days:]), noted


def test_a_full_refresh_of_messy_days_equals_the_nightly_builds(tmp_path: Path) -> None:
    """Every table and quarantine table a full refresh writes equals what the days' builds
    wrote, one night at a time (a build each)."""
    nightly = project(tmp_path / "nightly", models())
    messy(nightly)
    refreshed = tmp_path / "refreshed"
    shutil.copytree(nightly, refreshed)

    for n in range(DAYS):  # the nights, one build each (a range would share reads too)
        done = build(nightly, "--date", day(n))
        assert done.returncode == 0, done.stdout + done.stderr
    done = build(refreshed, "--full-refresh", "--date", day(DAYS - 1), verbose=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_shared(done, refreshed, DAYS)
    noted = calls(nightly)  # the probe tells the two apart
    assert noted[:2] == [f"called {day(0)}", "computed"] and f"called {day(1)}" in noted, noted

    got, want = tables(refreshed), tables(nightly)
    assert set(want) == {"stg_orders", "stg_orders__quarantine", "customer_day",
                         "customer_day__quarantine"}
    assert got.keys() == want.keys()
    for name, rows in want.items():
        assert got[name].equals(rows), (name, got[name].join(rows, on=rows.columns, how="anti",
                                                             nulls_equal=True),
                                        rows.join(got[name], on=rows.columns, how="anti",
                                                  nulls_equal=True))
    stg, quarantined = want["stg_orders"], want["stg_orders__quarantine"]
    # the messy days were read as the contract says, and the test meant what it says
    assert stg.filter(pl.col("load_date") == FIRST + timedelta(6)).height == 0  # the empty day
    assert stg.group_by("load_date").agg(pl.col("order_id").n_unique() == pl.len())[
        "order_id"].all()  # deduped within each day
    assert stg.filter(pl.col("load_date") == FIRST + timedelta(8))["order_id"].to_list() == \
        stg.filter(pl.col("load_date") == FIRST)["order_id"].to_list()  # kept across days
    assert stg.filter(pl.col("load_date").is_in([FIRST + timedelta(2), FIRST + timedelta(9)]))[
        "note"].null_count() > 0
    assert quarantined.height >= 5 and quarantined["logical_date"].n_unique() >= 4
    assert (quarantined["logical_date"] == quarantined["load_date"]).all()
    customers, held = want["customer_day"], want["customer_day__quarantine"]
    assert (customers["built_for"] == customers["load_date"]).all()
    assert customers["load_date"].n_unique() == DAYS - 1
    assert held["customer"].unique().to_list() == ["eve"] and held.height == DAYS - 1


def failure(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The failed step's model and message, as the build logged them."""
    found = re.findall(r"ERROR starsmith\.orchestration\.local: (\S+) \d{4}-\d{2}-\d{2} failed: "
                       r"(.*)", done.stderr)
    assert len(found) == 1, done.stdout + done.stderr
    model, message = found[0]
    return str(model), str(message)


def good_days(root: Path, days: int = 4) -> None:
    for n in range(days):
        land(root, n, {"part-0.parquet": orders(n), "part-1.parquet": orders(n + 50)}, "manifest")


def miscount(path: Path) -> None:
    write_manifest(path, {"part-0.parquet": 13, "part-1.parquet": 15})


def resum(path: Path) -> None:
    text = (path / MANIFEST).read_text()
    (path / MANIFEST).write_text(re.sub(r'"sha256": "[0-9a-f]{8}', '"sha256": "00000000',
                                        text, count=1))


def relanded(path: Path, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    """Land the day of ``path`` again, each of its files changed."""
    n = (date.fromisoformat(path.name.removeprefix("date=")) - FIRST).days
    for part in [*path.glob("*.parquet"), path / MANIFEST]:
        part.unlink()
    land(path.parents[2], n, {"part-0.parquet": change(orders(n)),
                              "part-1.parquet": change(orders(n + 50))}, "manifest")


def retype(path: Path) -> None:
    relanded(path, lambda rows: rows.with_columns(pl.col("qty").cast(pl.String)))


def unrequire(path: Path) -> None:
    relanded(path, lambda rows: rows.drop("customer"))


def empty(path: Path) -> None:
    relanded(path, lambda rows: rows.clear())


def nothing(path: Path) -> None:
    for part in [*path.glob("*.parquet"), path / MANIFEST]:
        part.unlink()
    (path / MARKER).touch()


@pytest.mark.parametrize(("broken", "says"), [
    (miscount, "part-1.parquet holds 13 rows, its manifest says 15"),
    (resum, "does not match its manifest's sha256"),
    (retype, "column 'qty' changed type: declared Int64, found String"),
    (unrequire, "missing column 'customer' (String)"),
    (empty, f"extract for {day(1)} has no rows"),
    (nothing, f"extract for {day(1)} has no rows"),
], ids=["row count", "checksum", "changed type", "required column", "no rows", "no files"])
def test_an_old_days_bad_landing_fails_a_full_refresh_as_its_nightly_build(
        tmp_path: Path, broken: Callable[[Path], None], says: str) -> None:
    """Read in one pass with the days after it, a bad old day still fails with the message,
    the file or folder and the exit code its own nightly build gives."""
    root = project(tmp_path / "p", models(empty=False))
    good_days(root)
    broken(folder(root, 1))

    nightly = build(root, "--date", day(1))
    refreshed = build(root, "--full-refresh", "--date", day(3))
    assert nightly.returncode == refreshed.returncode == 1, nightly.stdout + refreshed.stdout
    model, message = failure(refreshed)
    assert (model, message) == failure(nightly)
    assert model == "stg_orders" and says in message, message
    assert f"date={day(1)}" in message, message  # names the day's folder or file


@pytest.mark.parametrize("fails", ["raise", "engine"])
def test_a_transform_failing_on_one_old_day_fails_a_full_refresh_as_its_nightly_build(
        tmp_path: Path, fails: str) -> None:
    """A transform that raises when called, or whose rows fail in the engine, on one day only:
    the full refresh names the model and its inputs as the nightly build of that day does."""
    root = project(tmp_path / "p", models(broken=FIRST + timedelta(1), fails=fails))
    good_days(root)

    nightly = build(root, "--date", day(1))
    refreshed = build(root, "--full-refresh", "--date", day(3))
    assert nightly.returncode == refreshed.returncode == 1, nightly.stdout + refreshed.stdout
    model, message = failure(refreshed)
    assert (model, message) == failure(nightly)
    assert message.startswith("the transform of stg_orders failed: "
                              + ("ValueError: no prices for 2024-03-02" if fails == "raise"
                                 else "InvalidOperationError: conversion from `str` to `i64`")
                              ), message
    assert "(in model stg_orders (inputs landing.orders: order_id, customer" in message, message


def test_a_model_that_quarantines_nothing_refreshes_as_its_nightly_builds(
        tmp_path: Path) -> None:
    """A transform without a quarantine reason column (most models) holds nothing back: the
    chunk's quarantine split has no logical dates to carry (it once failed on that)."""
    text = models().replace('return quarantine_when(rows, [(pl.col("amount").is_null(), '
                            '"order {order_id} has no amount")])', "return rows")
    assert text != models()
    nightly = project(tmp_path / "nightly", text)
    good_days(nightly, 3)
    refreshed = tmp_path / "refreshed"
    shutil.copytree(nightly, refreshed)

    assert build(nightly, "--from", day(0), "--to", day(2)).returncode == 0
    done = build(refreshed, "--full-refresh", "--date", day(2), verbose=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_shared(done, refreshed, 3)
    got, want = tables(refreshed), tables(nightly)
    assert want["stg_orders"].height == 3 * 20 and want["customer_day"].height == 3 * 4
    assert got.keys() == want.keys() and all(got[n].equals(want[n]) for n in want)


# The shared path's errors name what the nightly build names: the first bad day, and a day's
# own count of values that do not fit (found by these tests, then fixed).


def test_the_first_of_two_bad_days_is_the_one_a_full_refresh_names(tmp_path: Path) -> None:
    """Day by day, the first bad day stops the read, whatever is wrong with it."""
    root = project(tmp_path / "p", models(empty=False))
    good_days(root)
    miscount(folder(root, 1))
    retype(folder(root, 2))

    nightly = build(root, "--date", day(1))
    refreshed = build(root, "--full-refresh", "--date", day(3))
    assert "its manifest says 15" in failure(nightly)[1]
    assert failure(refreshed) == failure(nightly)


def test_a_value_that_does_not_fit_fails_a_full_refresh_as_its_nightly_build(
        tmp_path: Path) -> None:
    """The output contract refuses a value its declared type cannot hold, counting the day's
    values as the nightly build does."""
    text = models().replace('Column("qty", pl.Int64(), "units that day")',
                            'Column("qty", pl.Int16(), "units that day")')
    assert text != models()
    root = project(tmp_path / "p", text)
    good_days(root)
    land(root, 1, {"part-0.parquet": orders(1).with_columns(qty=pl.lit(40_000, pl.Int64)),
                   "part-1.parquet": orders(51)}, "manifest")

    nightly = build(root, "--date", day(1))
    refreshed = build(root, "--full-refresh", "--date", day(3))
    assert nightly.returncode == refreshed.returncode == 1
    model, message = failure(nightly)
    assert model == "customer_day" and "does not fit its declared type Int16" in message, message
    assert failure(refreshed) == failure(nightly)


def test_a_first_file_with_a_new_column_is_warned_of_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The one-pass read checks the first file's schema for drift; a later file of another
    type (narrower, which the contract allows) makes the scan refuse them, and the read falls
    back to grouping the files by each day's schema. That must read each day as its own schema
    says, and not check (and warn of) the first schema twice."""
    from starsmith import Cadence, Column, Source
    from starsmith.loaders.landing_days import listing, read_days

    source = Source("orders", "parquet", (Column("order_id", pl.Int64(), "order", nullable=False),
                                          Column("qty", pl.Int64(), "units")),
                    "orders", cadence=Cadence.DAILY)
    land(tmp_path, 0, {"part-0.parquet": pl.DataFrame(
        {"order_id": [1, 2], "qty": [3, 4], "note": ["a", "b"]})}, "success")
    land(tmp_path, 1, {"part-0.parquet": pl.DataFrame(  # a narrower integer: the scan refuses
        {"order_id": [5], "qty": [6]}, schema={"order_id": pl.Int64, "qty": pl.Int32})}, "success")
    root, days = tmp_path / "landing", [FIRST, FIRST + timedelta(1)]
    with caplog.at_level("WARNING"):
        got = read_days(root, source, days, listing(root, source))
    assert got is not None
    assert got[days[0]].to_dicts() == [{"order_id": 1, "qty": 3}, {"order_id": 2, "qty": 4}]
    assert got[days[1]].to_dicts() == [{"order_id": 5, "qty": 6}]
    assert len([r for r in caplog.records if "new column 'note'" in r.getMessage()]) == 1
