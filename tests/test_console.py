"""What the person reading a build's output sees: one line per failure with where and what to
do, no tracebacks unless asked, data never read as console markup, a summary at the end, and a
non-zero exit when there is nothing to build because nothing landed."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from starsmith.loaders.landed import write_manifest
from starsmith.scaffold import init_project
from tests.test_projects import out, starsmith


def test_a_build_ends_with_a_summary_line(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    proc = starsmith("build", "--in-process", cwd=tmp_path / "shop")
    assert proc.returncode == 0, out(proc)
    assert "success: 9 step(s) built (0 with warnings), 0 failed, 0 skipped" in proc.stdout, \
        out(proc)
    assert "rows written" in proc.stdout and "warehouse.duckdb" in proc.stdout


def test_a_failure_is_one_line_and_data_is_not_markup(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root)
    folder = root / "landing" / "customers" / "date=2024-01-01"
    customers = pl.read_parquet(folder / "part-0.parquet")
    twice = pl.concat([customers, customers.head(1).with_columns(name=pl.lit("Someone Else"))])
    twice.write_parquet(folder / "part-0.parquet")
    write_manifest(folder, {"part-0.parquet": twice.height})
    proc = starsmith("build", "--in-process", cwd=root)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, out(proc)
    assert "[customer_id=1]" in text, out(proc)  # shown as written, not eaten as markup
    assert "Traceback" not in text
    assert "failed: 0 step(s) built" in proc.stdout or "failed:" in proc.stdout, out(proc)


def test_an_unexpected_error_is_one_line_unless_verbose(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    proc = starsmith("plan", "--target", "nosuchtarget", cwd=tmp_path / "shop")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, out(proc)
    assert "error:" in text


def test_an_empty_landing_zone_says_what_is_missing(tmp_path: Path) -> None:
    init_project(tmp_path / "shop", sample=False)
    proc = starsmith("build", "--in-process", cwd=tmp_path / "shop")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, out(proc)
    assert "nothing has landed for customers, sales" in text, out(proc)
    assert "date=YYYY-MM-DD" in text and "Traceback" not in text
