"""The fault suite's harness: the demo as a user's project, built through the installed command.

Each case lands the demo's days, builds, breaks or corrects the landing zone the way real feeds
do, builds again, and compares every table with a clean build of the landing zone as it ends up
(a fresh project, built once from the same files).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
from polars.testing import assert_frame_equal

from starsmith.demo_data import write_landing
from starsmith.loaders.landed import MANIFEST, write_manifest
from starsmith.scaffold import ensure_demo
from tests.test_projects import STARSMITH, cli_env, out

START = date(2024, 1, 1)
SCALE = 0.3


def day(n: int) -> date:
    """The n-th landed day (1-based), as the demo lands them."""
    return START + timedelta(days=n - 1)


class Demo:
    """A demo project in a folder, with its landing zone and warehouse."""

    def __init__(self, root: Path, days: int, scale: float = SCALE) -> None:
        self.root = root
        ensure_demo(root)
        self.landing = root / "landing"
        self.days = days
        write_landing(self.landing, days=days, scale=scale)
        self.warehouse = root / ".state" / "warehouse.duckdb"

    def copy(self, dest: Path) -> Demo:
        """The same project, landing and warehouse in another folder (a test's own copy)."""
        shutil.copytree(self.root, dest, symlinks=True)
        twin = Demo.__new__(Demo)
        twin.root, twin.landing, twin.days = dest, dest / "landing", self.days
        twin.warehouse = dest / ".state" / "warehouse.duckdb"
        return twin

    def build(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(STARSMITH), "build", "--in-process", *args], cwd=self.root,
                              env=cli_env(), capture_output=True, text=True, timeout=600)
        if ok:
            assert proc.returncode == 0, out(proc)
        return proc

    def folder(self, source: str, n: int) -> Path:
        return self.landing / source / f"date={day(n)}"

    def file(self, source: str, n: int) -> Path:
        return next(p for p in self.folder(source, n).iterdir() if p.name.startswith("part-"))

    def reland(self, source: str, n: int, frame: pl.DataFrame) -> None:
        """Land a corrected export of a day: the data file, then its manifest."""
        path = self.file(source, n)
        if path.suffix == ".csv":
            frame.write_csv(path)
        elif path.suffix == ".ndjson":
            frame.write_ndjson(path)
        else:
            frame.write_parquet(path)
        write_manifest(path.parent, {path.name: frame.height})

    def read(self, source: str, n: int) -> pl.DataFrame:
        path = self.file(source, n)
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)
        if path.suffix == ".ndjson":
            return pl.read_ndjson(path, infer_schema_length=None)
        return pl.read_parquet(path)

    def backup(self, source: str, n: int) -> Path:
        saved = self.root / "saved" / source / str(n)
        shutil.copytree(self.folder(source, n), saved, dirs_exist_ok=True)
        return saved

    def restore(self, source: str, n: int, saved: Path) -> None:
        shutil.rmtree(self.folder(source, n), ignore_errors=True)
        shutil.copytree(saved, self.folder(source, n))

    def query(self, sql: str) -> pl.DataFrame:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.sql(sql).pl()

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every published table (star and quarantine), rows in a canonical order, minus the
        moment a row was quarantined."""
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            names = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "ORDER BY 1").fetchall()]
            found = {}
            for name in names:
                frame = con.sql(f'SELECT * FROM main."{name}"').pl()
                frame = frame.drop([c for c in ("quarantined_at", "run_id")
                                    if c in frame.columns and name.endswith("__quarantine")])
                found[name] = frame.sort(frame.columns, nulls_last=True)
        return found


def clean_build(landing: Path, root: Path) -> Demo:
    """A fresh project built once from a copy of ``landing``: what every case must converge to."""
    fresh = Demo.__new__(Demo)
    fresh.root = root
    ensure_demo(root)
    fresh.landing = root / "landing"
    shutil.rmtree(fresh.landing, ignore_errors=True)
    shutil.copytree(landing, fresh.landing)
    fresh.days = 0
    fresh.warehouse = root / ".state" / "warehouse.duckdb"
    fresh.build()
    return fresh


def assert_same_tables(got: Demo, want: Demo) -> None:
    """Every table equal, row for row (surrogate keys included)."""
    mine, theirs = got.tables(), want.tables()
    assert sorted(mine) == sorted(theirs)
    for name, frame in theirs.items():
        try:
            assert_frame_equal(mine[name], frame, check_dtypes=True)
        except AssertionError as err:
            raise AssertionError(f"table {name} differs from a clean build: {err}") from err


__all__ = ["MANIFEST", "Demo", "assert_same_tables", "clean_build", "day"]
