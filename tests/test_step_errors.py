"""What a step's failure says, and whether Temporal retries it: a corrupt file, text in a number
column, a refused permission and a full disk fail at once, naming the file; compaction after a
commit never fails a step, and a publish retried after its commit is not recorded twice; paths
and sizes from the configuration never change the SQL they are placed in."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from starsmith.config import ProjectConfig
from starsmith.discover import load_catalogue
from starsmith.errors import ConfigError, DataError, RetryableError, StarsmithError
from starsmith.loaders import sql
from starsmith.loaders.connect import open_warehouse
from starsmith.loaders.duckdb import DuckDBWarehouse, records
from starsmith.loaders.landed import MANIFEST, MARKER
from starsmith.loaders.target import Publish
from starsmith.orchestration.local import run_plan
from starsmith.orchestration.messages import StepRequest, StepResult
from starsmith.orchestration.plan import make_plan
from starsmith.orchestration.step import run_step
from starsmith.registry import Catalogue
from starsmith.scaffold import init_project

D1, D2, D3 = date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)  # init's three sample days
NO_DAC = "STARSMITH_TEST_WITHOUT_DAC_OVERRIDE"  # set in the child run without root's override


@dataclass
class Shop:
    """``starsmith init``'s project (two sources, a dimension, a staging model, a fact)."""

    cfg: ProjectConfig
    cat: Catalogue

    def request(self, model: str, day: date, **kw: Any) -> StepRequest:
        return StepRequest(model, day.isoformat(), f"build-{day.isoformat()}",
                           str(self.cfg.landing), self.cfg.warehouse_ref,
                           staging=str(self.cfg.staging), **kw)

    def step(self, model: str, day: date, **kw: Any) -> StepResult:
        return run_step(self.request(model, day, **kw), self.cat)

    def day(self, source: str, day: date) -> Path:
        return self.cfg.landing / source / f"date={day.isoformat()}"

    def warehouse(self, **kw: Any) -> DuckDBWarehouse:
        return DuckDBWarehouse(self.cfg.warehouse, staging_dir=self.cfg.staging, **kw)


def shop(root: Path, *, csv: bool = False, batch_days: int | None = None) -> Shop:
    """The init project in ``root``; ``csv``: its sales land as CSV files; ``batch_days``: the
    fact is rebuilt that many partitions at a time (each batch staged to a file)."""
    project = init_project(root)
    if csv:
        sources = root / "models" / "sources.py"
        sources.write_text(sources.read_text().replace('"sales", "parquet"', '"sales", "csv"'))
        for folder in sorted((project.landing / "sales").iterdir()):
            part = folder / "part-0.parquet"
            pl.read_parquet(part).write_csv(folder / "part-0.csv")
            part.unlink()
            (folder / MANIFEST).unlink()
            (folder / MARKER).touch()
    if batch_days is not None:
        fact = root / "models" / "marts" / "fact_sales.py"
        fact.write_text(fact.read_text().replace(
            "measures=(", f"batch_days={batch_days},\n    measures=("))
    return Shop(ProjectConfig.load(project), load_catalogue(project))


def unmanifested(folder: Path) -> None:
    """The day's manifest replaced by a ``_SUCCESS`` marker: its files are not checksummed."""
    (folder / MANIFEST).unlink()
    (folder / MARKER).touch()


def run_log(s: Shop) -> pl.DataFrame:
    return s.warehouse().run_log()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
         ) -> pytest.LogCaptureFixture:
    """Project log lines from INFO up (propagated, whatever a CLI test configured before)."""
    monkeypatch.setattr(logging.getLogger("starsmith"), "propagate", True)
    caplog.set_level(logging.INFO, logger="starsmith")
    return caplog


# -- 1. corrupt or unreadable input: a DataError naming the file, never retried -------------------


@pytest.mark.parametrize("damage", ["garbage", "cut_short", "cut_short_in_a_full_refresh"])
def test_a_landed_parquet_file_that_is_not_parquet_is_a_data_error_naming_it(
        damage: str, tmp_path: Path) -> None:
    s = shop(tmp_path / "shop")
    day = D2 if damage.endswith("full_refresh") else D1
    folder = s.day("sales", day)
    part = folder / "part-0.parquet"
    if damage == "garbage":
        part.write_bytes(b"not parquet at all, " * 50)
    else:
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    unmanifested(folder)
    with pytest.raises(DataError) as caught:
        if damage.endswith("full_refresh"):  # every landed day is read: the damaged one is named
            s.step("stg_sales", D1)
            s.step("stg_sales", D3, full_refresh=True)
        else:
            s.step("stg_sales", day)
    err = caught.value
    assert not err.retryable
    assert err.where == str(part) and str(part) in str(err)
    assert "parquet" in str(err).lower() and "Land a corrected export" in str(err)
    failed = run_log(s).filter(pl.col("status") == "failed")
    assert failed["model"].to_list() == ["stg_sales"]  # recorded once: no retry follows


def test_text_in_an_integer_column_of_a_csv_is_a_data_error_naming_the_file_and_line(
        tmp_path: Path) -> None:
    s = shop(tmp_path / "shop", csv=True)
    part = s.day("sales", D2) / "part-0.csv"
    lines = part.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[4].split(",")
    cells[header.index("quantity")] = "lots"
    lines[4] = ",".join(cells)
    part.write_text("\n".join(lines) + "\n")
    s.step("stg_sales", D1)  # a clean day builds
    with pytest.raises(DataError) as caught:
        s.step("stg_sales", D2)
    err = caught.value
    assert not err.retryable and err.where == str(part)
    message = str(err)
    assert "could not parse `lots`" in message and "'quantity'" in message
    assert "line 5" in message  # the fifth line of the file (the header is the first)


# -- 2. a refused permission or a full disk: not retried, the path named -------------------------


def _denies(folder: Path) -> bool:
    """Does this process get refused writing in ``folder``? (root is not, whatever its mode)"""
    probe = folder / ".starsmith-probe"
    try:
        probe.touch()
    except PermissionError:
        return True
    probe.unlink()
    return False


def _without_dac_override(test: str) -> None:
    """Run this test again in a child process of root without CAP_DAC_OVERRIDE (capsh), where
    a folder's mode binds root too; skip if that cannot be done here."""
    capsh = shutil.which("capsh")
    drop = "--drop=cap_dac_override,cap_dac_read_search"
    if os.environ.get(NO_DAC) or os.geteuid() != 0 or capsh is None or subprocess.run(
            [capsh, drop, "--", "-c", "true"], capture_output=True).returncode:
        pytest.skip("chmod does not deny this user (root), and capsh cannot drop the override")
    done = subprocess.run(
        [capsh, drop, "--", "-c", f'exec "{sys.executable}" -m pytest -q -p no:cacheprovider '
                                  f'"{__file__}::{test}"'],
        env={**os.environ, NO_DAC: "1"}, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[1])
    if " skipped" in done.stdout and " passed" not in done.stdout:
        pytest.skip("chmod does not deny this user, even without the override")
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Make folders read-only for a test; their modes are restored after it (for cleanup)."""
    changed: list[Path] = []

    def chmod(folder: Path) -> None:
        folder.chmod(0o555)
        changed.append(folder)

    yield chmod
    for folder in changed:
        folder.chmod(0o755)


def test_a_read_only_warehouse_folder_is_a_config_error_naming_the_path(
        tmp_path: Path, read_only: Callable[[Path], None]) -> None:
    s = shop(tmp_path / "shop")
    s.step("stg_sales", D1)  # the warehouse exists; its folder turns read-only after
    state = s.cfg.warehouse.parent
    read_only(state)
    if not _denies(state):
        _without_dac_override(
            "test_a_read_only_warehouse_folder_is_a_config_error_naming_the_path")
        return
    with pytest.raises(ConfigError) as caught:
        s.step("stg_sales", D2)
    err = caught.value
    assert not err.retryable
    assert "permission denied" in str(err) and "another process holds it" not in str(err)
    assert err.where is not None and err.where.startswith(str(state))  # the WAL it cannot write
    fresh = state / "other.duckdb"  # and a warehouse that cannot even be created there
    with pytest.raises(ConfigError, match="permission denied") as caught:
        run_step(StepRequest("stg_sales", D1.isoformat(), "r", str(s.cfg.landing), str(fresh)),
                 s.cat)
    assert caught.value.where == str(fresh) and not caught.value.retryable
    assert "another process holds it" not in str(caught.value)


FAULTS: dict[str, tuple[BaseException, type[StarsmithError], bool, str, str]] = {
    # fault raised by the publish: the type it becomes, retryable, the path named, words said
    "permission": (PermissionError(errno.EACCES, "Permission denied", "/srv/wh/warehouse.wal"),
                   ConfigError, False, "/srv/wh/warehouse.wal", "permission denied"),
    "duckdb_permission": (duckdb.IOException('IO Error: Cannot open file "/srv/wh/x.duckdb": '
                                             "Permission denied"),
                          ConfigError, False, "/srv/wh/x.duckdb", "permission denied"),
    "disk_full": (OSError(errno.ENOSPC, "No space left on device"),
                  StarsmithError, False, "warehouse.duckdb", "Free space"),
    "duckdb_disk_full": (duckdb.IOException('IO Error: Could not write file "/srv/tmp/t.tmp": '
                                            "No space left on device"),
                         StarsmithError, False, "/srv/tmp/t.tmp", "Free space"),
    "polars_disk_full": (pl.exceptions.ComputeError(
        "parquet: File out of specification: underlying IO error: No space left on device "
        "(os error 28)"), StarsmithError, False, "warehouse.duckdb", "Free space"),
    "other_io": (OSError(errno.EIO, "Input/output error"), RetryableError, True, "stg_sales",
                 "I/O error"),
    "duckdb_io": (duckdb.IOException("IO Error: Connection reset"), RetryableError, True,
                  "stg_sales", "I/O error"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_refused_permission_or_a_full_disk_is_not_retried_and_names_the_path(
        fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raised, kind, retryable, named, says = FAULTS[fault]
    s = shop(tmp_path / "shop")

    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(DuckDBWarehouse, "_commit", fail)
    with pytest.raises(StarsmithError) as caught:
        s.step("stg_sales", D1)
    err = caught.value
    assert type(err) is kind and err.retryable is retryable
    assert named in str(err) and says in str(err)
    assert "another process holds it" not in str(err)


def test_a_warehouse_that_cannot_be_opened_for_permission_is_not_reported_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``connect`` reports every open failure but a lock as WarehouseBusy (retryable): one
    refused for permission becomes a ConfigError at the step's boundary."""
    s = shop(tmp_path / "shop")
    real = duckdb.connect

    def refused(database: str, **kw: Any) -> duckdb.DuckDBPyConnection:
        if database == s.cfg.warehouse_ref:
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": Permission denied')
        return real(database, **kw)

    monkeypatch.setattr(duckdb, "connect", refused)
    with pytest.raises(ConfigError, match="permission denied") as caught:
        s.step("stg_sales", D1)
    assert caught.value.where == s.cfg.warehouse_ref and not caught.value.retryable
    assert "another process holds it" not in str(caught.value)


# -- 3. after the commit: compaction is best effort, a retried publish is not recorded twice ------


@pytest.mark.parametrize("fault", [duckdb.IOException("IO Error: No space left on device"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_compaction_failing_after_the_commit_does_not_fail_the_step(
        fault: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        logs: pytest.LogCaptureFixture) -> None:
    s = shop(tmp_path / "shop")
    s.step("stg_sales", D1)
    tried: list[str] = []

    def full(con: duckdb.DuckDBPyConnection, target: str, schema: str = "main",
             **settings: float) -> None:
        tried.append(target)
        raise fault

    monkeypatch.setattr(records, "compact", full)
    result = s.step("stg_sales", D2)
    assert tried == ["stg_sales"] and result.status == "success" and result.rows_written > 0
    assert "compacting its table failed" in logs.text and "No space left" in logs.text
    wh = s.warehouse()
    days = wh.query("SELECT load_date, count(*) AS n FROM main.stg_sales GROUP BY 1 ORDER BY 1")
    assert days["load_date"].to_list() == [D1, D2]
    assert days["n"][1] == result.rows_written
    log = wh.run_log().filter(pl.col("logical_date") == D2)
    assert log["status"].to_list() == ["success"]  # one row: no failed row, nothing retried


def test_the_real_compaction_failing_inside_its_transaction_leaves_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", compact_min_rows=1)
    rows = pl.DataFrame({"k": range(100), "v": ["a"] * 100})
    original = records.count_deleted

    def full_when_compacting(con: duckdb.DuckDBPyConnection, target: str, deleted: int, *,
                             reset: bool) -> None:
        if reset and not deleted:  # the compaction's reset, after its rewrite
            raise duckdb.IOException("IO Error: No space left on device")
        original(con, target, deleted, reset=reset)

    with wh.session():
        publish(wh, rows, "r0", sql.replace_all)
        monkeypatch.setattr(records, "count_deleted", full_when_compacting)
        publish(wh, rows.head(60).with_columns(v=pl.lit("b")), "r1",
                lambda t, st: sql.replace_keys(t, st, ["k"], ["k", "v"]))
        assert wh.read("t").sort("k")["v"].to_list() == ["b"] * 60 + ["a"] * 40
        upkeep = wh.query("SELECT deleted_rows FROM _starsmith.table_upkeep WHERE model = 't'")
        assert upkeep["deleted_rows"].to_list() == [60]  # still counted: the next one tries
    assert sorted(wh.run_log()["run_id"].to_list()) == ["r0", "r1"]


def publish(wh: DuckDBWarehouse, frame: pl.DataFrame, run_id: str,
            statements: Callable[[str, str], list[Any]], *, day: date = D1,
            details: str | None = None) -> None:
    staged = wh.stage("t", run_id, frame)
    wh.publish(Publish("t", staged, statements("main.t", staged),
                       {"run_id": run_id, "model": "t", "logical_date": day,
                        "status": "success", "fingerprint": "f", "details": details},
                       watermark_dates=[day]))


def test_a_publish_retried_after_its_commit_with_the_same_job_key_is_not_recorded_twice(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "w.duckdb"
    rows = pl.DataFrame({"k": [1, 2, 3], "v": ["a", "b", "c"]})
    first = DuckDBWarehouse(path, job_key="workflow-run-1")
    publish(first, rows, "build-2024-01-01", sql.replace_all, details='{"batches": 2}')
    retry = DuckDBWarehouse(path, job_key="workflow-run-1")  # the step's next attempt
    publish(retry, rows.with_columns(v=pl.lit("retried")), "build-2024-01-01", sql.replace_all)
    assert "already committed" in logs.text
    assert retry.read("t").sort("k")["v"].to_list() == ["a", "b", "c"]  # not published again
    log = retry.run_log()
    assert log["status"].to_list() == ["success"]
    assert log["details"].to_list() == ['{"batches": 2, "job_key": "workflow-run-1"}']
    assert retry.staged_files() == []  # the retry's staged rows were released all the same
    marks = retry.watermarks()
    assert marks.select("run_id").rows() == [("build-2024-01-01",)]

    # A later build of the same day (the same run id, another job key) publishes, as a re-run
    # does; so does a warehouse without a job key (a step run on its own).
    later = DuckDBWarehouse(path, job_key="workflow-run-2")
    publish(later, rows.with_columns(v=pl.lit("rebuilt")), "build-2024-01-01", sql.replace_all)
    assert later.read("t")["v"].to_list() == ["rebuilt"] * 3
    plain = DuckDBWarehouse(path)
    publish(plain, rows.with_columns(v=pl.lit("again")), "build-2024-01-01", sql.replace_all)
    publish(plain, rows.with_columns(v=pl.lit("again")), "build-2024-01-01", sql.replace_all)
    assert plain.read("t")["v"].to_list() == ["again"] * 3
    assert plain.run_log().height == 4


def test_a_publish_of_the_same_job_key_publishes_if_its_commit_is_not_all_there(
        tmp_path: Path) -> None:
    """The run-log row alone does not prove the commit: its watermark must say the same run
    (a watermark replaced by another build, or a changed model, publishes again)."""
    path = tmp_path / "w.duckdb"
    rows = pl.DataFrame({"k": [1], "v": ["a"]})
    wh = DuckDBWarehouse(path, job_key="job")
    publish(wh, rows, "build-2024-01-01", sql.replace_all)
    with wh.connect() as con:
        con.execute("UPDATE _starsmith.watermarks SET run_id = 'elsewhere'")
    publish(wh, rows.with_columns(v=pl.lit("b")), "build-2024-01-01", sql.replace_all)
    assert wh.read("t")["v"].to_list() == ["b"] and wh.run_log().height == 2
    publish(wh, rows, "build-2024-01-02", sql.replace_all, day=D2)  # another day: published
    assert wh.run_log().height == 3


def test_re_running_a_day_through_the_step_publishes_again(tmp_path: Path) -> None:
    s = shop(tmp_path / "shop")
    s.step("stg_sales", D1)
    s.step("stg_sales", D1)  # a later build of the day: another job key
    assert run_log(s).filter(pl.col("status") == "success").height == 2


# -- 4. configuration values in SQL text: quoted, or refused ------------------------------------


def test_a_warehouse_folder_with_a_quote_stages_parts_and_reads_them_back(tmp_path: Path) -> None:
    s = shop(tmp_path / "o'brien" / "shop", batch_days=1)
    assert "'" in str(s.cfg.staging)
    plan = make_plan(s.cat, list(s.cat.order), [D1, D2, D3])
    outcomes = run_plan(plan, landing=str(s.cfg.landing), warehouse=s.cfg.warehouse_ref,
                        catalogue=s.cat, staging=str(s.cfg.staging))
    assert all(o.ok for o in outcomes), [(o.failed, o.skipped) for o in outcomes]
    nightly = s.warehouse().read("fact_sales").sort("sale_id")
    result = s.step("fact_sales", D3, full_refresh=True)  # one batch a day: staged to files
    assert result.details["batches"] == 3
    wh = s.warehouse()
    assert wh.read("fact_sales").sort("sale_id").equals(nightly)
    assert wh.staged_files() == []  # published, then released: the quoted paths were found

    frame = pl.DataFrame({"k": [1, 2], "v": ["x", "y'z"]})
    with wh.session():
        parts = [wh.stage("m", f"run{i}", frame) for i in range(2)]
        assert all(p.startswith("read_parquet('") and "o''brien" in p for p in parts)
        both = wh.union(parts)
        assert wh.read_staged(both).equals(pl.concat([frame, frame]))
        kept = wh.keep_staged(parts[0]).split(", ")
        assert kept == [str(wh.staged_path("m", "run0"))] and Path(kept[0]).is_file()
        wh.publish(Publish("m", both, sql.replace_all("main.m", both),
                           {"run_id": "r", "model": "m", "logical_date": D1}))
        assert wh.read("m").height == 4
    assert wh.staged_files() == []


@pytest.mark.parametrize("limit", ["1GB'; DROP TABLE x; --", "lots", "1 GB; SET threads = 1",
                                   "80%", "", "-1GB"])
def test_a_memory_limit_that_is_not_a_size_is_refused(limit: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the memory limit"):
        DuckDBWarehouse(tmp_path / "w.duckdb", memory_limit=limit)
    with pytest.raises(ConfigError, match="cannot read the memory limit"):
        open_warehouse(str(tmp_path / "w.duckdb"), memory_limit=limit)
    assert not (tmp_path / "w.duckdb").exists()


@pytest.mark.parametrize("limit", ["512MiB", "1.5 GB", "2gb", "1000000B"])
def test_memory_limits_in_duckdbs_units_are_taken(limit: str, tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", memory_limit=limit)
    keys = pl.DataFrame({"k": [1]})
    with wh.session():
        wh.query("CREATE TABLE main.t AS SELECT range AS k FROM range(10)")
        assert wh.read_keys("t", keys)["k"].to_list() == [1]  # its SET statements run
        assert wh.query("SELECT current_setting('memory_limit') AS m")["m"][0]
