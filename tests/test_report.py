"""The stewards' report in a real headless Chromium: summary, a failing rule, its sample.

The helpers here (Chromium, the page parser, the offline and link checks) are shared by the
other ``tests/test_report_*.py`` files.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.quality.expect import Expect
from starsmith.quality.report import write_report
from tests.test_quality import catalogue, run

CHROMIUM = shutil.which("chromium")
# no network at all: every host name fails to resolve, so a remote reference could not load
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not "
                                    "installed (.ci/run installs it)")


def chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Page(HTMLParser):
    """A page's elements (tag and attributes), its ids and its visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._hidden = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.elements.append((tag, found))
        if "id" in found:
            self.ids.add(found["id"])
        if tag in ("script", "style", "title"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return "".join(self.text)

    def refs(self) -> list[tuple[str, str]]:
        return [(tag, attrs[a]) for tag, attrs in self.elements for a in ("href", "src")
                if a in attrs]


def assert_offline(site: Path) -> None:
    """Nothing in the site refers to another origin: every page and asset is self-contained."""
    files = [p for p in site.rglob("*") if p.is_file()]
    assert any(p.suffix == ".css" for p in files)
    for f in files:
        text = f.read_text()
        for remote in ("http://", "https://", "//cdn", "url(", "@import"):
            assert remote not in text, (f.name, remote)


def assert_links_resolve(site: Path) -> int:
    """Every href and src of every page is an in-page anchor that exists, or a file inside the
    site (and its anchor, if it names one, exists there). Returns how many were checked."""
    pages = {p.resolve(): Page(p.read_text()) for p in site.glob("*.html")}
    checked = 0
    for path, page in pages.items():
        for tag, ref in page.refs():
            parts = urlsplit(ref)
            assert not parts.scheme and not parts.netloc, (path.name, tag, ref)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            assert target.is_relative_to(site.resolve()) and target.is_file(), (path.name, ref)
            if parts.fragment:
                assert target in pages, (path.name, ref)
                assert parts.fragment in pages[target].ids, (path.name, ref)
            checked += 1
    return checked


@needs_chromium
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
    assert_offline(site)  # nothing is fetched from anywhere
    assert assert_links_resolve(site) > 10
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
