"""Landed data is shown as text in every page of the stewards' report, never run as script.

A build lands store names that are XSS payloads; a rule samples them, another observes them,
a ``mostly`` rule quarantines them, and one result is recorded directly with a payload as its
observed value. Every page of the report is then opened in a real headless Chromium twice: as
written (its Content-Security-Policy on) and with the policy stripped, so the escaping is tested
on its own too. A hook script loaded first records any ``alert`` and any policy violation into
the DOM, which ``--dump-dom`` then shows; a control page proves the hook does catch a payload.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.loaders.landed import write_manifest
from starsmith.quality.expect import Expect
from starsmith.quality.gate import RESULT_SCHEMA
from starsmith.quality.html_safety import CSP, sanitize
from starsmith.quality.report import write_report
from tests.test_quality import catalogue, run
from tests.test_report import Page, assert_links_resolve, assert_offline, chromium, needs_chromium

D1 = date(2024, 1, 1)
PAYLOADS = (
    "<img src=x onerror=alert(1)>",
    "\"><script>alert(2)</script>",
    "<svg onload=alert(3)>",
    "'\"><img src=x onerror=alert(4)>",
    "${column} $PARAMETER <b>bold</b>",  # GX substitutes $names in its templates
)
OBSERVED = "</td><script>alert(5)</script><img src=x onerror=alert(6)>"
HOOK = """
(function () {
  var root = document.documentElement;
  function mark(what) { root.setAttribute("data-xss", (root.getAttribute("data-xss") || "") +
                                          what + ";"); }
  window.alert = function (m) { mark("alert:" + m); };
  window.confirm = window.prompt = window.alert;
  document.addEventListener("securitypolicyviolation", function (e) {
    mark("csp:" + e.violatedDirective + ":" + e.blockedURI);
  });
})();
"""


def _land_payloads(landing: Path) -> None:
    """Day 1's stores: five more than landed, the first five named by the payloads."""
    folder = landing / "stores" / f"date={D1.isoformat()}"
    stores = pl.read_csv(folder / "part-0.csv")
    more = stores.with_columns(store_id=pl.col("store_id") + stores.height,
                               store_name=pl.format("Store {}", pl.col("store_id") + stores.height))
    stores = pl.concat([stores, more])
    names = [*PAYLOADS, *stores["store_name"].to_list()[len(PAYLOADS):]]
    stores.with_columns(store_name=pl.Series(names)).write_csv(folder / "part-0.csv")
    write_manifest(folder, {"part-0.csv": stores.height})


@pytest.fixture
def site(landing: Path, tmp_path: Path) -> Path:
    """A report whose rules, observed values and quarantine all hold the payloads."""
    _land_payloads(landing)
    rules = (
        Expect("expect_column_values_to_match_regex", column="store_name",
               regex="^Store [0-9]+$", severity="warn"),
        Expect("expect_column_distinct_values_to_be_in_set", column="store_name",
               value_set=["Store 5"], severity="warn"),
        Expect("expect_column_most_common_value_to_be_in_set", column="store_name",
               value_set=["Store 5"], severity="warn"),
        Expect("expect_column_values_to_match_regex", column="store_name", regex="^[^<]*$",
               mostly=0.2),
    )
    wh_path = tmp_path / "wh.duckdb"
    assert run(catalogue(*rules), landing, wh_path, D1).ok  # type: ignore[attr-defined]
    wh = DuckDBWarehouse(wh_path)
    wh.record_quality(pl.DataFrame([{  # another run of the same day: its results are added
        "run_id": "recorded-by-hand", "model": "stores_stg", "layer": "staging", "logical_date": D1,
        "expectation": "expect_column_max_to_be_between", "column_name": "store_name",
        "kwargs": json.dumps({"column": "store_name", "min_value": 1, "max_value": 2}),
        "severity": "warn", "success": False, "observed_value": json.dumps(OBSERVED),
        "unexpected_count": None, "unexpected_percent": None,
        "unexpected_sample": json.dumps([PAYLOADS[0]]), "checked_at": datetime(2024, 1, 1),
    }], schema=RESULT_SCHEMA))
    held = wh.query("SELECT store_name FROM stores_stg__quarantine")["store_name"].to_list()
    assert sorted(held) == sorted(p for p in PAYLOADS if "<" in p)  # the build held them back
    out = tmp_path / "site"
    write_report(wh, out)
    return out


def _with_hook(page: Path, folder: Path, *, keep_csp: bool) -> Path:
    """A copy of ``page`` beside it that loads the hook first (a file: the policy allows it)."""
    text = page.read_text()
    if not keep_csp:
        text, n = re.subn(r"<meta http-equiv=.Content-Security-Policy.[^>]*>", "", text)
        assert n == 1
    text = text.replace("<head>", "<head><script src='xss_hook.js'></script>", 1)
    copy = folder / f"{'csp' if keep_csp else 'nocsp'}_{page.name}"
    copy.write_text(text)
    return copy


def _open(tmp: Path, page: Path) -> str:
    return chromium(tmp, "--virtual-time-budget=2000", "--dump-dom", page.as_uri())


def test_every_page_has_the_policy_and_no_inline_script_or_handler(site: Path) -> None:
    pages = sorted(site.glob("*.html"))
    assert {p.name for p in pages} == {"index.html", "model_stores_stg.html",
                                       "model_stores_copy.html", "docs_stores_stg.html"}
    for path in pages:
        page = Page(path.read_text())
        policies = [a["content"] for tag, a in page.elements
                    if tag == "meta" and a.get("http-equiv", "").lower() ==
                    "content-security-policy"]
        assert policies == [CSP], path.name
        assert "script-src 'self'" in CSP and "default-src 'none'" in CSP
        assert "unsafe-inline" not in CSP and "http" not in CSP
        for tag, attrs in page.elements:
            assert not [a for a in attrs if a.startswith("on") or a == "style"], (path, tag)
            assert tag not in ("img", "svg", "iframe", "object", "embed", "style"), (path, tag)
            if tag == "script":
                assert attrs.get("src", "").startswith("assets/"), path.name
        assert "alert(" not in "".join(  # the payloads are text, never part of markup
            f"{t}{a}" for t, a in page.elements), path.name
    assert_offline(site)
    assert_links_resolve(site)


@needs_chromium
def test_no_payload_runs_in_any_page_and_each_shows_as_text(site: Path, tmp_path: Path) -> None:
    (site / "xss_hook.js").write_text(HOOK)
    control = site / "control.html"  # the hook does see a payload that runs
    control.write_text("<!doctype html><html><head></head><body><p>x</p>"
                       f"{PAYLOADS[0]}</body></html>")
    dom = _open(tmp_path, _with_hook(control, site, keep_csp=True))  # it has no policy
    assert 'data-xss="alert:1;"' in dom
    control.unlink()

    shown: dict[str, str] = {}
    for page in sorted(site.glob("*.html")):
        if page.name.startswith(("csp_", "nocsp_")):
            continue
        for keep_csp in (True, False):
            dom = _open(tmp_path, _with_hook(page, site, keep_csp=keep_csp))
            assert "data-xss" not in dom, (page.name, keep_csp, dom[:300])
            assert "<img" not in dom and "<svg" not in dom, page.name
            assert "<script>alert" not in dom and "<b>bold" not in dom, page.name
            shown[page.name] = Page(dom).visible
    for payload in PAYLOADS:  # each payload reads as itself where it is reported
        assert payload in shown["docs_stores_stg.html"], payload
        assert payload in shown["model_stores_stg.html"], payload  # sample and quarantine
    assert OBSERVED in shown["docs_stores_stg.html"]
    assert json.dumps(OBSERVED) in shown["model_stores_stg.html"]
    assert shown["model_stores_stg.html"].count(PAYLOADS[1]) >= 3


def test_the_sanitiser_keeps_text_and_drops_active_markup() -> None:
    hostile = (
        "<body><div onclick='x()' style='color:red' class='ok'>kept <b>bold</b></div>"
        "<script>alert(1)</script><style>p{}</style><iframe src='https://x'></iframe>"
        "<a href='javascript:alert(2)'>js link</a><a href='https://evil.example/'>away</a>"
        "<a href='#here' id='here'>anchor</a><img src=x onerror=alert(3)>"
        "<svg><script>alert(4)</script></svg><footer>Subscribe <a href='/n'>now</a></footer>"
        "<td id=a onmouseover=alert(5)>cell</td><p>&lt;img src=x&gt; 1 &amp; 2</p></body>")
    out = sanitize(hostile, title="<t>")
    body = out.split("<body>", 1)[1]
    assert "<script" not in body and "<style" not in body and "<iframe" not in body
    assert "on" + "click" not in body and "onerror" not in body and "onmouseover" not in body
    assert "style=" not in body and "javascript:" not in body and "evil" not in body
    assert "<img" not in body and "<svg" not in body and "Subscribe" not in body
    assert "js link" in body and "away" in body and "<a href=\"#here\" id=\"here\">" in body
    assert "<div class=\"ok\">kept <b>bold</b></div>" in body
    assert "<p>&lt;img src=x&gt; 1 &amp; 2</p>" in body
    assert "<title>&lt;t&gt;</title>" in out and f"content=\"{CSP}\"" in out
    uuid = "123e4567-e89b-42d3-a456-426614174000"  # GX's random ids are numbered, data kept
    again = sanitize(f"<div id='b-collapse-body-{uuid}'><p>{uuid}</p></div>", title="t")
    assert f"<div id=\"b-collapse-body-c1\"><p>{uuid}</p></div>" in again
