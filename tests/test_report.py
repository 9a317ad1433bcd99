"""The stewards' report in a real headless Chromium: summary, a failing rule, its sample."""

from __future__ import annotations

import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.quality.expect import Expect
from starsmith.quality.report import write_report
from tests.test_quality import catalogue, run

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed "
                    "(.ci/run installs it)")
def test_the_report_shows_the_summary_and_a_failing_rule_with_its_sample(
        landing: Path, tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    rules = (Expect("expect_column_values_to_be_between", column="store_id", min_value=1,
                    max_value=2, severity="warn"),
             Expect("expect_column_values_to_not_be_null", column="store_id"))
    for day in (date(2024, 1, 1), date(2024, 1, 2)):
        assert run(catalogue(*rules), landing, wh, day).ok  # type: ignore[attr-defined]
    site = tmp_path / "site"
    index = write_report(DuckDBWarehouse(wh), site)
    for page in site.glob("*.html"):  # offline: nothing is fetched from anywhere
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "<link" not in text
    summary = chromium(tmp_path, "--dump-dom", index.as_uri())
    assert "<td>staging</td>" in summary and ">stores_stg</a>" in summary
    assert "<td class=\"warn\">warn</td>" in summary
    detail = chromium(tmp_path, "--dump-dom", (site / "model_stores_stg.html").as_uri())
    assert "expect_column_values_to_be_between" in detail
    assert "<td class=\"sample\">3, 4, 5</td>" in detail
    docs = chromium(tmp_path, "--dump-dom", (site / "docs_stores_stg.html").as_uri())
    assert "expect_column_values_to_be_between" in docs or "store_id" in docs
    assert "Expectation Validation Result" in docs
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1300,700", f"--screenshot={shot}",
             (site / "model_stores_stg.html").as_uri())
    assert shot.stat().st_size > 10_000  # a rendered page, kept as the test's artifact
