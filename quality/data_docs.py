"""great-expectations' Data Docs page for one model's latest run, made safe and offline.

The page is rendered by GX's own renderer from the results table (whichever engine counted them),
so stewards get the Data Docs they know. Three things are done around it:

- Landed data never reaches GX's renderer. GX writes sampled unexpected values and observed
  values into its HTML unescaped (and through ``string.Template``, where ``$name`` is
  substituted), so a landed value such as ``<img src=x onerror=...>`` would run as script. Each
  string in them that is not plainly inert goes to GX as an opaque placeholder, replaced by the
  escaped value once GX is done: the value shows as text, exactly as it was landed. (Rule
  arguments come from the project, and GX escapes them itself.) Rows GX cannot render (another
  GX version's type or arguments) are left to starsmith's own page of the model.
- The page is re-serialised through an allowlist (``html_safety.sanitize``): GX's remote
  Bootstrap, jQuery, Vega, Font Awesome and logo, its inline scripts, style attributes,
  ``onclick`` handlers and newsletter footer are dropped; ``assets/gx.css`` and ``assets/gx.js``
  (the report's own files) style the page and run its filter and collapsible blocks.
- Links stay inside the report: GX's "Home" goes to the report's index, the suite link to
  starsmith's page of the model's rules, in-page anchors are kept, anything else is unlinked.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from typing import Any

import polars as pl

from starsmith.quality.expect import SEVERITIES
from starsmith.quality.html_safety import esc, sanitize

# a string GX may write as it is: no markup, entity, quote, template or escape character
INERT = re.compile(r"[A-Za-z0-9 _.,:;@+\-/()\[\]{}=!?%*#~|^]*")
FILTERS = {"showAllValidations()": "all", "hideSucceededValidations()": "failed"}


class Placeholders:
    """Opaque stand-ins for data values while GX renders, swapped back escaped afterwards."""

    def __init__(self) -> None:
        self.prefix = f"ssv{secrets.token_hex(6)}n"
        self.values: list[str] = []
        self.tokens: dict[str, str] = {}
        self.pattern = re.compile(re.escape(self.prefix) + r"(\d+)x")

    def swap(self, value: Any) -> Any:
        """``value`` with each string that is not inert (in lists and dicts too) replaced."""
        if isinstance(value, str):
            if INERT.fullmatch(value):
                return value
            if value not in self.tokens:
                self.tokens[value] = f"{self.prefix}{len(self.values)}x"
                self.values.append(value)
            return self.tokens[value]
        if isinstance(value, list | tuple):
            return [self.swap(v) for v in value]
        if isinstance(value, dict):
            return {self.swap(k): self.swap(v) for k, v in value.items()}
        return value

    def restore(self, page: str) -> str:
        """Each placeholder in ``page`` as its value, escaped for HTML text or attributes."""
        return self.pattern.sub(lambda m: html.escape(self.values[int(m[1])], quote=True), page)


def _result(row: dict[str, Any], data: Placeholders) -> dict[str, Any]:
    count, percent = row["unexpected_count"], row["unexpected_percent"]
    result: dict[str, Any] = {}
    if count is not None:  # GX renders a sample only beside its count
        result["unexpected_count"] = count
        result["partial_unexpected_list"] = data.swap(json.loads(row["unexpected_sample"] or "[]"))
        if percent is not None:
            result["unexpected_percent"] = percent
        if count and percent:
            # GX states "N unexpected values found. P% of M total rows"; the results table keeps
            # N and P (of the non-null values, as GX counts them), so M is derived from them
            result["element_count"] = round(count * 100 / percent)
    if row["observed_value"] is not None:
        result["observed_value"] = data.swap(json.loads(row["observed_value"]))
    return result


def _href(index: str, rules: str) -> Any:
    def href(target: str) -> str | None:
        if target.startswith("#"):
            return target
        if target.endswith("/index.html") or target == "index.html":
            return index
        if "/expectations/" in target:
            return rules
        return None  # GX's links to its site folders and to the web do not exist here
    return href


def _attrs(tag: str, attrs: dict[str, str]) -> dict[str, str]:
    """GX's filter buttons call page functions inline; the report's script reads a data-
    attribute instead (an inline handler is refused by the pages' policy anyway)."""
    handler = attrs.get("onclick", "").strip()
    if tag == "label" and handler in FILTERS:
        attrs["data-gx-filter"] = FILTERS[handler]
    return attrs


def render(model: str, results: pl.DataFrame, *, index: str = "index.html",
           rules: str = "index.html", assets: str = "assets/") -> str:
    """The Data Docs validation page of ``results`` (rows of the results table, one run).

    ``index`` and ``rules`` are the report's pages GX's "Home" and suite links go to;
    ``assets`` the folder of the report's style sheet and script, relative to the page.
    """
    import great_expectations as gx
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

    data = Placeholders()
    gx_rows = results.filter(pl.col("expectation").str.starts_with("expect_"))
    evrs = []
    for r in gx_rows.iter_rows(named=True):
        try:
            config = ExpectationConfiguration(
                type=r["expectation"], kwargs=json.loads(r["kwargs"]),
                severity=FailureSeverity(SEVERITIES[r["severity"]]))
            config.to_domain_obj()
        except Exception:  # GX cannot render it (another GX version's type or arguments):
            continue  # starsmith's own page of the model lists it
        evrs.append(ExpectationValidationResult(success=r["success"], expectation_config=config,
                                                result=_result(r, data)))
    passed = sum(1 for e in evrs if e.success)
    run = gx_rows["run_id"][0] if gx_rows.height else ""
    when = str(gx_rows["checked_at"][0]) if gx_rows.height else ""
    suite = ExpectationSuiteValidationResult(
        success=passed == len(evrs), results=evrs, suite_name=f"{model}_suite",
        statistics={"evaluated_expectations": len(evrs), "successful_expectations": passed,
                    "unsuccessful_expectations": len(evrs) - passed,
                    "success_percent": 100 * passed / len(evrs) if evrs else 100.0},
        meta={"great_expectations_version": gx.__version__,
              "run_id": {"run_name": run, "run_time": when},
              "batch_spec": {"data_asset_name": model},
              "active_batch_definition": {"datasource_name": "staged", "data_asset_name": model,
                                          "batch_definition_name": "staged"}},
    )
    document = ValidationResultsPageRenderer().render(suite)
    page = str(DefaultJinjaPageView().render(document))  # type: ignore[no-untyped-call]
    head = (f"<link rel=\"stylesheet\" href=\"{esc(assets)}gx.css\">"
            f"<script src=\"{esc(assets)}gx.js\" defer></script>")
    nav = (f"<p class=\"ss-nav\"><a href=\"{esc(index)}\">&larr; all models</a> &middot; "
           f"<a href=\"{esc(rules)}\">{esc(model)}: rules and quarantined rows</a></p>")
    return sanitize(data.restore(page), title=f"{model}: great-expectations Data Docs",
                    head=head, body_prefix=nav, href=_href(index, rules), attrs=_attrs)
