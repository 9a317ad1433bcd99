"""great-expectations' Data Docs page for one model's latest run, made to work offline.

The page is rendered by GX's own renderer from the results table (whichever engine counted them),
so stewards get the Data Docs they know. GX's template pulls Bootstrap, jQuery, Vega and a logo
from CDNs and remote URLs; those references are removed and a small inline stylesheet
takes their place, so the page shows its content with no network at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl

from starsmith.quality.expect import SEVERITIES

REMOTE = [
    re.compile(r"<link[^>]*>"),  # remote styles, and a favicon path that does not exist here
    re.compile(r'<script[^>]+src="https?://[^"]*"[^>]*>\s*</script>'),
    re.compile(r'<img[^>]+src="https?://[^"]*"[^>]*>'),
    re.compile(r"url\('https?://[^']*'\)"),
]
LINK = re.compile(r'<a[^>]+href="https?://[^"]*"[^>]*>(.*?)</a>', re.S)
STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2933}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d9e2ec;padding:.3rem .5rem}
.text-danger{color:#b42318}.text-success{color:#0b6e4f}.badge{padding:0 .3rem;border-radius:3px}
</style>"""


def offline(page: str) -> str:
    """Strip every remote asset and link from a rendered page; add a local stylesheet."""
    for pattern in REMOTE:
        page = pattern.sub("", page)
    page = LINK.sub(r"\1", page)
    return page.replace("</head>", STYLE + "</head>", 1)


def render(model: str, results: pl.DataFrame) -> str:
    """The Data Docs validation page of ``results`` (rows of the results table, one run)."""
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )
    from great_expectations.expectations.metadata_types import FailureSeverity
    from great_expectations.render.renderer.page_renderer import ValidationResultsPageRenderer
    from great_expectations.render.view.view import DefaultJinjaPageView

    gx_rows = results.filter(pl.col("expectation").str.starts_with("expect_"))
    evrs = []
    for r in gx_rows.iter_rows(named=True):
        config = ExpectationConfiguration(
            type=r["expectation"], kwargs=json.loads(r["kwargs"]),
            severity=FailureSeverity(SEVERITIES[r["severity"]]))
        result: dict[str, Any] = {
            "unexpected_count": r["unexpected_count"],
            "unexpected_percent": r["unexpected_percent"],
            "partial_unexpected_list": json.loads(r["unexpected_sample"] or "[]"),
        }
        if r["observed_value"] is not None:
            result["observed_value"] = json.loads(r["observed_value"])
        evrs.append(ExpectationValidationResult(success=r["success"], expectation_config=config,
                                                result=result))
    passed = sum(1 for e in evrs if e.success)
    run = gx_rows["run_id"][0] if gx_rows.height else ""
    when = str(gx_rows["checked_at"][0]) if gx_rows.height else ""
    suite = ExpectationSuiteValidationResult(
        success=passed == len(evrs), results=evrs, suite_name=f"{model}_suite",
        statistics={"evaluated_expectations": len(evrs), "successful_expectations": passed,
                    "unsuccessful_expectations": len(evrs) - passed,
                    "success_percent": 100 * passed / len(evrs) if evrs else 100.0},
        meta={"run_id": {"run_name": run, "run_time": when},
              "active_batch_definition": {"datasource_name": "staged", "data_asset_name": model,
                                          "batch_definition_name": "staged"}},
    )
    document = ValidationResultsPageRenderer().render(suite)
    page = DefaultJinjaPageView().render(document)  # type: ignore[no-untyped-call]
    return offline(str(page))
