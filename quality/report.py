"""The stewards' report: a static HTML site built from the results table, readable offline.

``index.html`` summarises each layer and model: the latest run's passed, warned and failed rules,
a trend over the last runs, and quarantine counts. One page per model lists every rule of the
latest run with its observed value and a sample of the unexpected values, and links to
great-expectations' Data Docs page for the same run (rendered by GX, made to work offline).
Every style is inline: the pages load no asset from a CDN or a remote URL.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path

import polars as pl

from starsmith.loaders.target import Warehouse
from starsmith.quality import data_docs

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}
th,td{border:1px solid #d9e2ec;padding:.35rem .6rem;text-align:left;font-size:.9rem;
vertical-align:top}th{background:#f0f4f8}
.pass{color:#0b6e4f;font-weight:600}.warn{color:#a15c07;font-weight:600}
.fail{color:#b42318;font-weight:600}
.cell{display:inline-block;width:.9rem;height:.9rem;margin-right:2px;border-radius:2px}
.cell.pass{background:#2f9e44}.cell.warn{background:#f59f00}.cell.fail{background:#e03131}
code{font-size:.85rem;background:#f0f4f8;padding:0 .2rem}.muted{color:#627d98}
"""


def _status(rows: pl.DataFrame) -> str:
    failed = rows.filter(~pl.col("success"))
    if failed.filter(pl.col("severity") == "error").height:
        return "fail"
    return "warn" if failed.height else "pass"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")


def _quarantine_counts(wh: Warehouse, models: list[str]) -> dict[str, int]:
    return {m: int(wh.query(f'SELECT count(*) AS n FROM main."{m}__quarantine"')["n"][0])
            for m in models if wh.exists(f"{m}__quarantine")}


def write_report(wh: Warehouse, out: Path, *, runs: int = 14, name: str = "warehouse") -> Path:
    """Write the site under ``out`` from either target; returns the summary page."""
    out.mkdir(parents=True, exist_ok=True)
    results = wh.query("SELECT * FROM _starsmith.quality_results ORDER BY model, logical_date")
    quarantined = _quarantine_counts(wh, sorted(set(results["model"].to_list())))
    rows = []
    for (layer, model), part in results.sort("layer", "model").group_by(
            ["layer", "model"], maintain_order=True):
        dates = part["logical_date"].unique().sort()
        latest = part.filter(pl.col("logical_date") == dates[-1])
        trend = "".join(
            f"<span class='cell {_status(part.filter(pl.col('logical_date') == d))}' "
            f"title='{d}'></span>" for d in dates[-runs:])
        failed = latest.filter(~pl.col("success"))
        status = _status(latest)
        rows.append(
            f"<tr><td>{html.escape(str(layer))}</td><td><a href='model_{model}.html'>"
            f"{html.escape(str(model))}</a></td><td>{dates[-1]}</td>"
            f"<td class='{status}'>{status}</td><td>{latest.filter(pl.col('success')).height}</td>"
            f"<td>{failed.filter(pl.col('severity') == 'warn').height}</td>"
            f"<td>{failed.filter(pl.col('severity') == 'error').height}</td>"
            f"<td>{trend}</td><td>{quarantined.get(str(model), 0)}</td></tr>")
        (out / f"model_{model}.html").write_text(_model_page(str(model), latest))
        (out / f"docs_{model}.html").write_text(data_docs.render(str(model), latest))
    head = ("<tr><th>layer</th><th>model</th><th>latest run</th><th>status</th><th>passed</th>"
            "<th>warned</th><th>failed</th><th>trend (last runs)</th><th>quarantined rows</th></tr>")
    body = (f"<h1>Data quality: {html.escape(name)}</h1>"
            f"<p class='muted'>Generated {datetime.now():%Y-%m-%d %H:%M}. A failed "
            f"<b>error</b> rule kept the previous table and skipped its dependants; a "
            f"<b>warn</b> rule was recorded and the build went on.</p>"
            f"<table id='summary'>{head}{''.join(rows)}</table>")
    index = out / "index.html"
    index.write_text(_page("Data quality", body))
    return index


def _model_page(model: str, latest: pl.DataFrame) -> str:
    rows = []
    for r in latest.sort(["success", "severity"]).iter_rows(named=True):
        status = "pass" if r["success"] else ("fail" if r["severity"] == "error" else "warn")
        sample = ", ".join(html.escape(repr(v)) for v in json.loads(r["unexpected_sample"] or "[]"))
        pct = "" if r["unexpected_percent"] is None else f"{r['unexpected_percent']:.2f}%"
        rows.append(
            f"<tr class='rule'><td class='{status}'>{status}</td>"
            f"<td><code>{html.escape(r['expectation'])}</code><br>"
            f"<span class='muted'>{html.escape(r['kwargs'] or '')}</span></td>"
            f"<td>{html.escape(r['column_name'] or '')}</td><td>{r['severity']}</td>"
            f"<td>{html.escape(r['observed_value'] or '')}</td>"
            f"<td>{r['unexpected_count'] if r['unexpected_count'] is not None else ''}</td>"
            f"<td>{pct}</td><td class='sample'>{sample}</td></tr>")
    head = ("<tr><th>status</th><th>rule</th><th>column</th><th>severity</th><th>observed</th>"
            "<th>unexpected</th><th>%</th><th>sample of unexpected values</th></tr>")
    day = latest["logical_date"][0] if latest.height else ""
    return _page(model, f"<p><a href='index.html'>&larr; all models</a> &middot; "
                        f"<a href='docs_{model}.html'>great-expectations Data Docs</a></p>"
                        f"<h1>{model}</h1>"
                        f"<p class='muted'>Run for {day}</p><table id='rules'>{head}"
                        f"{''.join(rows)}</table>")
