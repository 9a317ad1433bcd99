"""What the stewards' report shows, in a real headless Chromium with no network.

Every model of the project is listed (one with no rule marked "unmonitored"), each model's
quarantined rows are counted by reason with a sample, and great-expectations' Data Docs pages
are styled and work from the report's own files: every link stays inside the report, and GX's
newsletter footer is gone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from starsmith.contract import BuildContext, Input, Model
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.quality.expect import Expect
from starsmith.quality.report import SAMPLE_PER_REASON, write_report
from starsmith.registry import Catalogue, build_catalogue
from tests.test_quality import SOURCES, catalogue, run
from tests.test_report import (
    Page,
    assert_links_resolve,
    assert_offline,
    chromium,
    needs_chromium,
)

D1, D2 = date(2024, 1, 1), date(2024, 1, 2)
RULES = (
    Expect("expect_column_values_to_be_between", column="store_id", min_value=1, max_value=3,
           mostly=0.5),  # stores 4 and 5 are quarantined every day
    Expect("expect_column_values_to_not_be_null", column="store_name", severity="warn"),
    Expect("expect_table_row_count_to_be_between", min_value=100, severity="warn"),
)
HELD = "failed " + RULES[0].describe()
DUPLICATE = "key (store_id) already published in partition 2024-01-01"


def _copy(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return inputs["stores_stg"]


def project() -> Catalogue:
    """The built models plus two never built: one with a rule, one without."""
    built = catalogue(*RULES)
    stg, copy = built.models["stores_stg"], built.models["stores_copy"]
    later = Model("stores_later", stg.kind, (Input("stores_stg"),), stg.columns, _copy,
                  stg.strategy, partition_by="load_date",
                  expectations=(Expect("expect_column_values_to_not_be_null",
                                       column="store_id"),))
    plain = Model("stores_plain", stg.kind, (Input("stores_stg"),), stg.columns, _copy,
                  stg.strategy, partition_by="load_date")
    return build_catalogue([stg, copy, later, plain], SOURCES)


@pytest.fixture
def built(landing: Path, tmp_path: Path) -> DuckDBWarehouse:
    """Two days built; a second reason in stores_stg's quarantine, and seven rows in one of the
    unmonitored stores_copy (as a model's own checks, a duplicate grain say, would hold)."""
    path = tmp_path / "wh.duckdb"
    for day in (D1, D2):
        assert run(catalogue(*RULES), landing, path, day).ok  # type: ignore[attr-defined]
    wh = DuckDBWarehouse(path)
    with wh.connect() as con:
        con.execute("INSERT INTO main.stores_stg__quarantine BY NAME SELECT 1 AS store_id, "
                    "'Store 1' AS store_name, DATE '2024-01-02' AS load_date, "
                    "DATE '2024-01-02' AS logical_date, ? AS reason", [DUPLICATE])
        con.execute("CREATE OR REPLACE TABLE main.stores_copy__quarantine AS SELECT "
                    "i AS store_id, 'Store ' || i AS store_name, CAST(DATE '2024-01-01' + "
                    "CAST(i AS INTEGER) AS DATE) AS logical_date, 'duplicate grain' AS reason, "
                    "'stores_copy' AS model, 'r' AS run_id FROM range(1, 8) t(i)")
    return wh


@pytest.fixture
def site(built: DuckDBWarehouse, tmp_path: Path) -> Path:
    out = tmp_path / "site"
    write_report(built, out, catalogue=project())
    return out


class Tables(HTMLParser):
    """The cells' text of each table with an id, row by row."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("id"):
            self._table = self.tables.setdefault(str(found["id"]), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _dom(tmp: Path, page: Path) -> str:
    return chromium(tmp, "--virtual-time-budget=2000", "--dump-dom", page.as_uri())


@needs_chromium
def test_every_model_of_the_project_is_listed_and_those_without_rules_are_unmonitored(
        site: Path, built: DuckDBWarehouse, tmp_path: Path) -> None:
    dom = _dom(tmp_path, site / "index.html")
    rows = {r[1]: r for r in Tables(dom).tables["summary"][1:]}
    assert list(rows) == ["stores_copy", "stores_later", "stores_plain", "stores_stg"]  # by name
    assert [rows[m][3] for m in rows] == ["unmonitored", "not run", "unmonitored", "warn"]
    assert {rows[m][0] for m in rows} == {"staging"}
    assert rows["stores_stg"][2] == "2024-01-02" and rows["stores_copy"][2] == "2024-01-02"
    assert rows["stores_stg"][4:7] == ["2", "1", "0"]  # passed, warned, failed
    assert "4 models, 2 unmonitored" in Page(dom).visible
    plain = Page(_dom(tmp_path, site / "model_stores_plain.html")).visible
    assert "Unmonitored: no expectation or check is declared" in plain
    assert "No results recorded yet" in Page(_dom(tmp_path, site / "model_stores_later.html")
                                             ).visible
    # without the catalogue, the models the warehouse ran are listed, from its run log
    alone = tmp_path / "alone"
    write_report(built, alone)
    rows = {r[1]: r for r in Tables((alone / "index.html").read_text()).tables["summary"][1:]}
    assert list(rows) == ["stores_stg", "stores_copy"]  # the run log does not know its layer
    assert rows["stores_copy"][3] == "unmonitored" and rows["stores_stg"][3] == "warn"


@needs_chromium
def test_quarantined_rows_are_counted_by_reason_with_a_sample(site: Path, tmp_path: Path
                                                              ) -> None:
    index = Tables(_dom(tmp_path, site / "index.html")).tables["summary"]
    held = {r[1]: r[8] for r in index[1:]}
    assert held == {"stores_stg": "5", "stores_copy": "7", "stores_later": "0",
                    "stores_plain": "0"}
    assert "href=\"model_stores_stg.html#quarantine\"" in (site / "index.html").read_text() \
        .replace("'", '"')

    page = Tables(_dom(tmp_path, site / "model_stores_stg.html")).tables
    assert page["quarantine-reasons"] == [
        ["reason", "rows", "first day", "last day"],
        [HELD, "4", "2024-01-01", "2024-01-02"],
        [DUPLICATE, "1", "2024-01-02", "2024-01-02"]]
    head, *sample = page["quarantine-sample"]
    assert head[:2] == ["reason", "logical_date"] and "store_id" in head
    assert "run_id" not in head and "quarantined_at" not in head and "model" not in head
    ids = head.index("store_id")
    assert [r[0] for r in sample] == [HELD] * 4 + [DUPLICATE]  # most rows' reason first
    assert [r[1] for r in sample[:4]] == ["2024-01-02"] * 2 + ["2024-01-01"] * 2  # latest first
    assert sorted(r[ids] for r in sample[:4]) == ["4", "4", "5", "5"]
    assert sample[4][ids] == "1"

    copy = Tables(_dom(tmp_path, site / "model_stores_copy.html")).tables
    assert copy["quarantine-reasons"][1] == ["duplicate grain", "7", "2024-01-02", "2024-01-08"]
    sample = copy["quarantine-sample"][1:]
    assert len(sample) == SAMPLE_PER_REASON == 5
    assert [r[1] for r in sample] == [f"2024-01-{d:02d}" for d in range(8, 3, -1)]
    assert "rules" not in copy  # unmonitored, never checked: no rules table
    plain = Page(_dom(tmp_path, site / "model_stores_plain.html")).visible
    assert "Quarantined rows" in plain and "None." in plain


PROBE = """
(function () {
  var seen = [];
  document.addEventListener("securitypolicyviolation", function (e) {
    seen.push(e.violatedDirective + " " + e.blockedURI);
  });
  window.addEventListener("load", function () {
    function style(selector, property) {
      var el = document.querySelector(selector);
      return el ? getComputedStyle(el)[property] : null;
    }
    function shown(selector) {
      return Array.prototype.filter.call(document.querySelectorAll(selector), function (el) {
        return el.getClientRects().length > 0;
      }).length;
    }
    var out = {
      font: style("body", "fontFamily"), badge: style(".badge", "backgroundColor"),
      alert: style(".alert-secondary", "backgroundColor"), row: style(".row", "display"),
      sidebar: style(".col-md-2", "maxWidth"), icon: style(".fa-check-circle", "color"),
      collapsed: style(".collapse", "display")
    };
    document.querySelector("a[data-toggle=collapse]").click();
    out.expanded = style(".collapse", "display");
    out.rows = shown("tbody tr");
    document.querySelector("[data-gx-filter=failed]").click();
    out.failedOnly = shown("tbody tr");
    out.passedShown = shown(".hide-succeeded-validation-target-child");
    document.querySelector("[data-gx-filter=all]").click();
    out.all = shown("tbody tr");
    out.violations = seen;
    var pre = document.createElement("pre");
    pre.id = "probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  });
})();
"""


@needs_chromium
def test_gx_pages_are_styled_and_work_offline_with_no_marketing(site: Path, tmp_path: Path
                                                                ) -> None:
    docs = site / "docs_stores_stg.html"
    text = docs.read_text()
    for gone in ("newsletter", "Subscribe", "<footer", "greatexpectations.io", "cdn",
                 "bootstrap", "jquery", "font-awesome", "walkthrough", "logo"):
        assert gone.lower() not in text.lower(), gone
    assert_offline(site)
    (site / "probe.js").write_text(PROBE)  # loaded as a file of the report: the policy allows it
    probed = site / "probed.html"
    probed.write_text(text.replace("<head>", "<head><script src='probe.js'></script>", 1))
    # a wide window: GX's layout puts the table of contents beside the results from 768px
    dom = chromium(tmp_path, "--window-size=1300,900", "--virtual-time-budget=2000",
                   "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    out = json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))
    assert out["violations"] == []  # nothing the page has or loads breaks its policy
    assert "Times" not in out["font"] and "system-ui" in out["font"]  # gx.css applies
    assert out["badge"] == "rgb(108, 117, 125)" and out["alert"] == "rgb(226, 227, 229)"
    assert out["row"] == "flex" and out["sidebar"] == "16.667%"
    assert out["icon"] == "rgb(11, 110, 79)"  # the pass icon is drawn in green
    assert out["collapsed"] == "none" != out["expanded"]  # gx.js opens "Show more info..."
    assert out["passedShown"] == 0 and out["failedOnly"] < out["rows"] == out["all"]
    shot = tmp_path / "gx.png"
    chromium(tmp_path, "--window-size=1300,900", f"--screenshot={shot}", docs.as_uri())
    assert shot.stat().st_size > 20_000


def test_every_link_of_every_page_resolves_inside_the_report(site: Path) -> None:
    pages = {p.name for p in site.glob("*.html")}
    assert pages == {"index.html", "docs_stores_stg.html", "model_stores_stg.html",
                     "model_stores_copy.html", "model_stores_later.html",
                     "model_stores_plain.html"}
    assert assert_links_resolve(site) > 20
    docs = Page((site / "docs_stores_stg.html").read_text())
    refs = {ref for _, ref in docs.refs()}
    assert {"index.html", "model_stores_stg.html", "assets/gx.css", "assets/gx.js",
            "#section-1"} <= refs  # GX's Home and suite links lead into the report
    assert all(not r.startswith(("..", "/")) for r in refs)
    index = Page((site / "index.html").read_text())
    assert {f"model_{m}.html" for m in ("stores_stg", "stores_copy", "stores_later",
                                        "stores_plain")} <= {r for _, r in index.refs()}
    stg = Page((site / "model_stores_stg.html").read_text())
    assert "docs_stores_stg.html" in {r for _, r in stg.refs()}
