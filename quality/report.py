"""The stewards' report: a static HTML site built from the results table, readable offline.

``index.html`` lists every model of the project (given the catalogue; without it, every model
the warehouse has a result or a run for): its layer, the latest run's passed, warned and failed
rules, a trend over the last runs and its quarantined rows. A model with no expectation and no
check declared is marked "unmonitored". One page per model lists every rule of the latest run
with its observed value and a sample of the unexpected values, and the model's quarantined
rows: how many for each reason, and a sample of rows per reason. It links to great-expectations'
Data Docs page for the same run (rendered by GX, made safe and offline by ``data_docs``).

Nothing is loaded from anywhere but the report's folder: the style sheets and the one script
are written to ``assets/``, and every page carries a Content-Security-Policy that allows only
those (no inline script or event handler, no other origin). Every value from the warehouse is
escaped: landed data (a customer's e-mail, a quarantined row) shows as text, never as markup.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from starsmith.loaders.target import Warehouse
from starsmith.quality import data_docs
from starsmith.quality.html_safety import CSP_META, esc
from starsmith.quality.report_assets import write_assets

if TYPE_CHECKING:  # the registry imports the quality declarations: no runtime cycle
    from starsmith.registry import Catalogue

LAYERS = ("staging", "dimension", "fact")
SAMPLE_PER_REASON = 5  # quarantined rows shown for each reason
REASONS_SHOWN = 20  # reasons with a sample; the counts table lists every reason
HIDDEN = ("model", "run_id", "quarantined_at", "_sample_n", "_rank")  # bookkeeping of the quarantine


@dataclass(frozen=True)
class ModelInfo:
    name: str
    layer: str
    monitored: bool  # it declares at least one expectation or check
    in_project: bool = True


@dataclass(frozen=True)
class Quarantine:
    total: int
    reasons: pl.DataFrame  # reason, rows, first_day, last_day; most rows first
    sample: pl.DataFrame  # up to SAMPLE_PER_REASON rows of each of the first reasons


def slug(name: str) -> str:
    """A model name as part of a file name: safe everywhere, distinct for distinct names."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _status(rows: pl.DataFrame) -> str:
    failed = rows.filter(~pl.col("success"))
    if failed.filter(pl.col("severity") == "error").height:
        return "fail"
    return "warn" if failed.height else "pass"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{CSP_META}"
            f"<title>{esc(title)}</title><link rel='stylesheet' href='assets/report.css'>"
            f"</head><body>{body}</body></html>")


def _cell(value: Any) -> str:
    if value is None:
        return "<td class='value muted'>null</td>"
    return f"<td class='value'>{esc(value)}</td>"


def _table(frame: pl.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<table id='{esc(table_id)}'><tr>{head}</tr>{rows}</table>"


def _quarantine(wh: Warehouse, model: str) -> Quarantine | None:
    """The model's quarantined rows: counts by reason and a sample; None if it has none."""
    if not wh.exists(f"{model}__quarantine"):
        return None
    table = f"main.{_ident(f'{model}__quarantine')}"
    columns = wh.query(f"SELECT * FROM {table} LIMIT 0").columns
    if "reason" not in columns:
        return None  # not a quarantine table this report knows how to read
    dated = "logical_date" in columns
    days = "min(logical_date) AS first_day, max(logical_date) AS last_day" if dated else \
        "NULL AS first_day, NULL AS last_day"
    reasons = wh.query(f"SELECT reason, count(*) AS n_rows, {days} FROM {table} "
                       f"GROUP BY reason ORDER BY n_rows DESC, reason")
    total = int(reasons["n_rows"].sum()) if reasons.height else 0
    if not total:
        return Quarantine(0, reasons, pl.DataFrame())
    order = "q.logical_date DESC" if dated else "q.reason"
    sample = wh.query(
        f"SELECT * FROM (SELECT q.*, row_number() OVER (PARTITION BY q.reason ORDER BY {order})"
        f" AS _sample_n FROM {table} q) s WHERE s._sample_n <= {SAMPLE_PER_REASON} "
        f"ORDER BY s.reason, s._sample_n")
    shown = reasons.head(REASONS_SHOWN).select("reason").with_row_index("_rank")
    sample = sample.join(shown, on="reason", how="inner", nulls_equal=True,
                         maintain_order="left").sort("_rank", "_sample_n")
    first: list[str] = [c for c in ("reason", "logical_date") if c in sample.columns]
    rest = [c for c in sample.columns if c not in first and c not in HIDDEN]
    return Quarantine(total, reasons, sample.select(first + rest))


def _models(wh: Warehouse, results: pl.DataFrame, catalogue: Catalogue | None
            ) -> list[ModelInfo]:
    layers = dict(results.group_by("model").agg(pl.col("layer").last()).iter_rows())
    found: dict[str, ModelInfo] = {}
    if catalogue is not None:
        for name in catalogue.order:
            m = catalogue.models[name]
            found[name] = ModelInfo(name, m.kind.value, bool(m.expectations or m.checks))
        for name in sorted(set(layers) - set(found)):  # results of a model since removed
            found[name] = ModelInfo(name, str(layers[name] or ""), True, in_project=False)
    else:
        ran = wh.query("SELECT DISTINCT model FROM _starsmith.run_log")["model"].to_list()
        for name in sorted(set(layers) | {str(m) for m in ran if m is not None}):
            found[name] = ModelInfo(name, str(layers.get(name) or ""), name in layers)
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(found.values(), key=lambda m: (rank.get(m.layer, len(rank)), m.layer, m.name))


def write_report(wh: Warehouse, out: Path, *, runs: int = 14, name: str = "warehouse",
                 catalogue: Catalogue | None = None) -> Path:
    """Write the site under ``out`` from either target; returns the summary page.

    With ``catalogue``, every model of the project is listed, including those never built and
    those with no rule; without it, the models the warehouse has results or runs for.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_assets(out)
    results = wh.query("SELECT * FROM _starsmith.quality_results ORDER BY model, logical_date")
    built = dict(wh.query("SELECT model, max(logical_date) AS last_day FROM _starsmith.run_log "
                          "GROUP BY model").iter_rows())
    models = _models(wh, results, catalogue)
    rows = []
    for info in models:
        part = results.filter(pl.col("model") == info.name)
        quarantine = _quarantine(wh, info.name)
        page, docs = f"model_{slug(info.name)}.html", f"docs_{slug(info.name)}.html"
        latest, trend = part.head(0), ""
        if part.height:
            dates = part["logical_date"].unique().sort()
            latest = part.filter(pl.col("logical_date") == dates[-1])
            trend = "".join(
                f"<span class='cell {_status(part.filter(pl.col('logical_date') == d))}' "
                f"title='{esc(d)}'></span>" for d in dates[-runs:])
        has_docs = latest.filter(pl.col("expectation").str.starts_with("expect_")).height > 0
        if has_docs:
            (out / docs).write_text(data_docs.render(info.name, latest, rules=page),
                                    encoding="utf-8")
        (out / page).write_text(_model_page(info, latest, quarantine, docs if has_docs else None),
                                encoding="utf-8")
        status = ("unmonitored" if not info.monitored else
                  _status(latest) if latest.height else "not run")
        failed = latest.filter(~pl.col("success"))
        counts = ("<td class='num'></td>" * 3 if not latest.height else
                  f"<td class='num'>{latest.filter(pl.col('success')).height}</td>"
                  f"<td class='num'>{failed.filter(pl.col('severity') == 'warn').height}</td>"
                  f"<td class='num'>{failed.filter(pl.col('severity') == 'error').height}</td>")
        day = latest["logical_date"][0] if latest.height else built.get(info.name)
        held = quarantine.total if quarantine else 0
        held_cell = f"<a href='{esc(page)}#quarantine'>{held}</a>" if held else "0"
        note = "" if info.in_project else " <span class='muted'>(not in the project)</span>"
        rows.append(
            f"<tr class='model'><td>{esc(info.layer)}</td><td><a href='{esc(page)}'>"
            f"{esc(info.name)}</a>{note}</td><td>{esc(day or '')}</td>"
            f"<td class='{status.replace(' ', '-')}'>{status}</td>{counts}"
            f"<td>{trend}</td><td class='num'>{held_cell}</td></tr>")
    head = ("<tr><th>layer</th><th>model</th><th>latest run</th><th>status</th><th>passed</th>"
            "<th>warned</th><th>failed</th><th>trend (last runs)</th><th>quarantined rows</th></tr>")
    unmonitored = sum(1 for m in models if not m.monitored)
    body = (f"<h1>Data quality: {esc(name)}</h1>"
            f"<p class='muted'>Generated {datetime.now():%Y-%m-%d %H:%M}. A failed "
            f"<b>error</b> rule kept the previous table and skipped its dependants; a "
            f"<b>warn</b> rule was recorded and the build went on. Rows a rule or a model "
            f"held back are in the model's quarantine.</p>"
            f"<p id='counts'>{len(models)} models, {unmonitored} <span class='unmonitored'>"
            f"unmonitored</span> (no expectation or check declared).</p>"
            f"<table id='summary'>{head}{''.join(rows)}</table>")
    index = out / "index.html"
    index.write_text(_page("Data quality", body), encoding="utf-8")
    return index


def _rules(latest: pl.DataFrame) -> str:
    rows = []
    for r in latest.sort(["success", "severity"]).iter_rows(named=True):
        status = "pass" if r["success"] else ("fail" if r["severity"] == "error" else "warn")
        sample = ", ".join(esc(repr(v)) for v in json.loads(r["unexpected_sample"] or "[]"))
        pct = "" if r["unexpected_percent"] is None else f"{r['unexpected_percent']:.2f}%"
        count = "" if r["unexpected_count"] is None else r["unexpected_count"]
        rows.append(
            f"<tr class='rule'><td class='{status}'>{status}</td>"
            f"<td><code>{esc(r['expectation'])}</code><br>"
            f"<span class='muted'>{esc(r['kwargs'] or '')}</span></td>"
            f"<td>{esc(r['column_name'] or '')}</td><td>{esc(r['severity'])}</td>"
            f"<td class='observed'>{esc(r['observed_value'] or '')}</td>"
            f"<td>{count}</td><td>{pct}</td><td class='sample'>{sample}</td></tr>")
    head = ("<tr><th>status</th><th>rule</th><th>column</th><th>severity</th><th>observed</th>"
            "<th>unexpected</th><th>%</th><th>sample of unexpected values</th></tr>")
    return f"<table id='rules'>{head}{''.join(rows)}</table>"


def _quarantine_section(q: Quarantine | None) -> str:
    if q is None or not q.total:
        return "<h2 id='quarantine'>Quarantined rows</h2><p class='muted'>None.</p>"
    reasons = q.reasons.rename({"n_rows": "rows", "first_day": "first day",
                                "last_day": "last day"})
    shown = min(REASONS_SHOWN, reasons.height)
    return (f"<h2 id='quarantine'>Quarantined rows: {q.total}</h2>"
            f"<p class='muted'>Rows held back from the table, by reason. Fix the source and "
            f"run <code>starsmith reprocess</code> for the model to retry them.</p>"
            f"{_table(reasons, 'quarantine-reasons')}"
            f"<h2>Sample of quarantined rows</h2><p class='muted'>Up to {SAMPLE_PER_REASON} "
            f"of the latest rows for each of {shown} reason(s).</p>"
            f"{_table(q.sample, 'quarantine-sample')}")


def _model_page(info: ModelInfo, latest: pl.DataFrame, quarantine: Quarantine | None,
                docs: str | None) -> str:
    links = ["<a href='index.html'>&larr; all models</a>"]
    if docs:
        links.append(f"<a href='{esc(docs)}'>great-expectations Data Docs</a>")
    day = latest["logical_date"][0] if latest.height else None
    if not info.monitored:
        intro = ("<p class='unmonitored' id='unmonitored'>Unmonitored: no expectation or check "
                 "is declared for this model.</p>")
        if latest.height:
            intro += f"<p class='muted'>Rules of its last checked run, {esc(day)}:</p>"
    elif latest.height:
        intro = f"<p class='muted'>Run for {esc(day)}</p>"
    else:
        intro = "<p class='not-run'>No results recorded yet: the model has not been checked.</p>"
    rules = _rules(latest) if latest.height else ""
    layer = f"<p class='muted'>{esc(info.layer)}</p>" if info.layer else ""
    return _page(info.name, f"<p>{' &middot; '.join(links)}</p><h1>{esc(info.name)}</h1>"
                            f"{layer}<h2>Rules</h2>{intro}{rules}"
                            f"{_quarantine_section(quarantine)}")

