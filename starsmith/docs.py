"""The analysts' docs: a static site, like ``dbt docs``, that answers "what is in this table?".

``index.html`` draws the lineage (sources -> staging -> dimensions -> facts) as inline SVG and
lists the models with their last build; each model and source has its own page with columns,
types, SCD types, grain, key lookups, measures and checks. The site loads nothing: styles are
inline, there is no script, and a Content-Security-Policy forbids any fetch, so it can be opened
from disk, zipped or mailed. Every value from a project is escaped (descriptions are free text),
and the bytes depend only on the catalogue and the run log, so a rebuild that changes nothing
shows no diff.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from pathlib import Path
from urllib.parse import quote

import polars as pl

from starsmith.contract import Column, Model, Source, Window
from starsmith.log import get_logger
from starsmith.registry import Catalogue

log = get_logger(__name__)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}a{color:#1d4ed8}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #d9e2ec;
padding:.35rem .6rem;text-align:left;font-size:.9rem;vertical-align:top}th{background:#f0f4f8}
dl{display:grid;grid-template-columns:max-content auto;gap:.25rem 1rem}dt{font-weight:600}
dd{margin:0}code{font-size:.85rem;background:#f0f4f8;padding:0 .2rem}.muted{color:#627d98}
.success{color:#0b6e4f;font-weight:600}.failed,.error{color:#b42318;font-weight:600}
.warn{color:#a15c07;font-weight:600}
svg a:hover rect{stroke-width:2.5}svg text{font:12px system-ui,sans-serif}
"""
FILL = {"source": "#e0f2fe", "staging": "#f1f5f9", "dimension": "#dcfce7", "fact": "#fef3c7"}
SCD_NAMES = {0: "fixed", 1: "overwrite", 2: "versioned"}
BOX_H, ROW_GAP, COL_GAP, CHAR_W, PAD = 28, 14, 70, 7.2, 16


def _slug(name: str) -> str:
    """A file name for a page: safe on every file system, distinct for distinct names."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _href(cat: Catalogue, name: str, up: str) -> str | None:
    """Relative link to a model or source page (``up`` is "../" from a sub-page)."""
    if name in cat.models:
        return f"{up}models/{quote(_slug(name))}.html"
    if name in cat.sources:
        return f"{up}sources/{quote(_slug(cat.sources[name].name))}.html"
    return None


def _link(cat: Catalogue, name: str, up: str) -> str:
    href = _href(cat, name, up)
    return f"<a href='{escape(href)}'>{escape(name)}</a>" if href else escape(name)


def _links(cat: Catalogue, names: Iterable[str], up: str) -> str:
    return ", ".join(_link(cat, n, up) for n in names) or "<span class='muted'>none</span>"


def _page(title: str, body: str, *, sub: bool) -> str:
    back = "<p><a href='../index.html'>&larr; all models</a></p>\n" if sub else ""
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>\n"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">\n"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
            f"{back}{body}\n</body></html>\n")


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of cells that are already HTML (callers escape their values)."""
    attr = f" class='{cls}'" if cls else ""
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table{attr}><thead><tr>{ths}</tr></thead><tbody>\n{trs}</tbody></table>"


def _dl(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _code(values: Iterable[str]) -> str:
    return ", ".join(f"<code>{escape(v)}</code>" for v in values) or "<span class='muted'>none</span>"


def _depths(cat: Catalogue) -> dict[str, int]:
    """Sources at 0; a model one column right of its deepest input (a model with none at 1)."""
    depth = dict.fromkeys(cat.sources, 0)
    for name in cat.order:  # build order: every input is placed first
        depth[name] = 1 + max((depth.get(i, 0) for i in cat.models[name].input_names), default=0)
    return depth


def _lineage(cat: Catalogue) -> str:
    """Inline SVG, one column per depth; within a column, nodes sit near the inputs they read."""
    depth = _depths(cat)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
    row: dict[str, int] = {}
    for d, col in enumerate(columns):
        names = [n for n in depth if depth[n] == d]
        if d:  # barycentre of the inputs' rows, then name: fewer crossings, stable order
            ins = {n: [row[i] for i in cat.models[n].input_names if i in row] for n in names}
            names.sort(key=lambda n: (sum(ins[n]) / len(ins[n]) if ins[n] else 0.0, n))
        else:
            names.sort()
        col.extend(names)
        row.update((n, i) for i, n in enumerate(names))
    width = max((len(n) for n in depth), default=8) * CHAR_W + 2 * PAD
    pos = {n: (d * (width + COL_GAP), row[n] * (BOX_H + ROW_GAP))
           for d, col in enumerate(columns) for n in col}
    edges = []
    for name in cat.order:
        for inp in cat.models[name].inputs:
            if inp.name not in pos:
                continue
            x1, y1 = pos[inp.name][0] + width, pos[inp.name][1] + BOX_H / 2  # right edge
            x2, y2 = pos[name][0] - 2, pos[name][1] + BOX_H / 2  # left edge, minus the arrow
            mid = (x1 + x2) / 2
            dash = " stroke-dasharray='4 3'" if inp.window is Window.ALL else ""
            edges.append(f"<path class='edge' data-from='{escape(inp.name)}' data-to='{escape(name)}'"
                         f" d='M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} "
                         f"{x2:.1f},{y2:.1f}' fill='none' stroke='#627d98'{dash} "
                         f"marker-end='url(#arrow)'/>")
    nodes = []
    for name, (x, y) in pos.items():
        kind = "source" if name in cat.sources else cat.models[name].kind.value
        nodes.append(f"<a href='{escape(_href(cat, name, '') or '')}'><g class='node' "
                     f"data-name='{escape(name)}' data-depth='{depth[name]}'>"
                     f"<title>{escape(kind)}: {escape(name)}</title>"
                     f"<rect x='{x:.1f}' y='{y}' width='{width:.1f}' height='{BOX_H}' rx='5' "
                     f"fill='{FILL.get(kind, '#fff')}' stroke='#486581'/><text x='{x + PAD / 2:.1f}'"
                     f" y='{y + BOX_H / 2 + 4}'>{escape(name)}</text></g></a>")
    w = len(columns) * (width + COL_GAP) - COL_GAP
    h = max((len(c) for c in columns), default=1) * (BOX_H + ROW_GAP) - ROW_GAP
    return (f"<svg class='lineage' role='img' aria-label='lineage' width='{w:.0f}' height='{h}' "
            f"viewBox='-2 -2 {w + 4:.0f} {h + 4}'><defs><marker id='arrow' viewBox='0 0 10 10' "
            f"refX='9' refY='5' markerWidth='7' markerHeight='7' orient='auto'><path "
            f"d='M0,0 L10,5 L0,10 z' fill='#627d98'/></marker></defs>\n"
            + "\n".join(edges + nodes) + "\n</svg>")


def _last_builds(warehouse: object | None) -> dict[str, dict[str, object]]:
    """The latest run-log row per model; a missing or unreadable log means "never built"."""
    run_log = getattr(warehouse, "run_log", None)
    if not callable(run_log):
        return {}
    try:
        frame = run_log()
        if not isinstance(frame, pl.DataFrame) or frame.is_empty():
            return {}
        order = [c for c in ("started_at", "finished_at", "logical_date") if c in frame.columns]
        if order:
            frame = frame.sort(order, nulls_last=False, maintain_order=True)
        rows = frame.iter_rows(named=True)
        return {str(r["model"]): r for r in rows}
    except Exception as exc:  # no warehouse yet, a target offline: the docs are still useful
        log.warning("docs: no run log (%s); every model shows as never built", exc)
        return {}


def _fmt(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return "" if value is None else str(value)


def _build_cell(build: Mapping[str, object] | None) -> str:
    if build is None:
        return "<span class='muted never-built'>never built</span>"
    status = _fmt(build.get("status"))
    return (f"<span class='status {escape(status)}'>{escape(status)}</span> "
            f"<span class='logical-date'>{escape(_fmt(build.get('logical_date')))}</span>")


def _build_section(build: Mapping[str, object] | None) -> str:
    if build is None:
        return f"<p>{_build_cell(None)}</p>"
    return "<div class='last-build'>" + _dl(
        (label, escape(_fmt(build.get(key)))) for label, key in (
            ("status", "status"), ("logical date", "logical_date"),
            ("rows written", "rows_written"), ("finished at", "finished_at"))) + "</div>"


def _columns(model_or_source: Model | Source) -> str:
    """The columns table; a dimension also says which key each column is, or its SCD type."""
    dim = model_or_source.dimension if isinstance(model_or_source, Model) else None
    scd = dict(dim.columns) if dim else {}
    head = ["column", "type", "nullable", *(["SCD type"] if dim else []), "description"]

    def role(c: Column) -> list[str]:
        if dim is None:
            return []
        if c.name in scd:
            t = int(scd[c.name])
            return [f"<span class='scd' data-scd='{t}'>{t} &middot; {SCD_NAMES.get(t, '')}</span>"]
        if c.name == dim.surrogate_key:
            return ["<span class='key'>surrogate key</span>"]
        return ["<span class='key'>natural key</span>" if c.name in dim.natural_key else ""]

    rows = [[f"<code id='col-{escape(c.name)}'>{escape(c.name)}</code>", escape(str(c.dtype)),
             "yes" if c.nullable else "no", *role(c), escape(c.description)]
            for c in model_or_source.columns]
    return "<h2>Columns</h2>" + _table(head, rows, "columns")


def _model_page(cat: Catalogue, model: Model, build: Mapping[str, object] | None) -> str:
    up = "../"
    inputs = ", ".join(_link(cat, i.name, up) + (" <span class='muted'>(all)</span>"
                                                 if i.window is Window.ALL else "")
                       for i in model.inputs) or "<span class='muted'>none</span>"
    facts = [("description", escape(model.description)), ("kind", escape(model.kind.value)),
             ("strategy", escape(model.strategy.value)), ("owner", escape(model.owner)),
             ("unique key", _code(model.unique_key)), ("inputs", inputs),
             ("dependants", _links(cat, cat.dependants(model.name), up)),
             ("file", _code([f] if (f := cat.files.get(model.name)) else []))]
    if model.dimension:
        facts += [("natural key", _code(model.dimension.natural_key)),
                  ("surrogate key", _code([model.dimension.surrogate_key]))]
    body = [f"<h1>{escape(model.name)}</h1>", _dl(facts), "<h2>Last build</h2>",
            _build_section(build)]
    if fact := model.fact:
        body += ["<h2>Fact</h2>", _dl([
            ("grain", _code(fact.grain)), ("fact type", escape(fact.fact_type.value)),
            ("event date", _code([fact.event_date])),
            ("partition", _code([model.partition_by] if model.partition_by else [])),
            ("lookback", f"{fact.lookback_days} days")])]
        if fact.lookups:
            body.append("<h3>Key lookups</h3>" + _table(
                ["dimension", "fact columns", "event time", "missing key", "output"],
                [[_link(cat, lk.dimension.name, up), _code(lk.fact_columns),
                  _code([lk.event_time]), escape(lk.missing.value), _code([lk.output])]
                 for lk in fact.lookups], "lookups"))
        if fact.measures:
            body.append("<h3>Measures</h3>" + _table(
                ["measure", "additivity"],
                [[_code([m]), escape(a.value)] for m, a in fact.measures], "measures"))
    body.append(_columns(model))
    checks = [[f"<span class='{escape(e.severity)}'>{escape(e.severity)}</span>",
               f"<code>{escape(e.describe())}</code>"] for e in model.expectations]
    checks += [[f"<span class='{escape(c.severity)}'>{escape(c.severity)}</span>",
                f"<code>{escape(str(c))}</code>"] for c in model.checks]
    body.append("<h2>Checks</h2>" + (_table(["severity", "rule"], checks, "checks") if checks
                                     else "<p class='muted'>none</p>"))
    return _page(f"{model.name} · {cat.project}", "\n".join(body), sub=True)


def _source_page(cat: Catalogue, key: str, source: Source) -> str:
    readers = [m for m in cat.order if key in cat.models[m].input_names]
    body = [f"<h1>{escape(key)}</h1>", _dl([
        ("description", escape(source.description)), ("format", escape(source.format)),
        ("cadence", escape(source.cadence.value)), ("read by", _links(cat, readers, "../"))]),
        _columns(source)]
    return _page(f"{key} · {cat.project}", "\n".join(body), sub=True)


def _index(cat: Catalogue, builds: Mapping[str, Mapping[str, object]]) -> str:
    models = _table(["model", "kind", "strategy", "description", "last build"], [
        [_link(cat, n, ""), escape(m.kind.value), escape(m.strategy.value),
         escape(m.description), _build_cell(builds.get(n))]
        for n in cat.order for m in [cat.models[n]]], "models")
    sources = _table(["source", "format", "cadence", "description"], [
        [_link(cat, k, ""), escape(s.format), escape(s.cadence.value), escape(s.description)]
        for k, s in sorted(cat.sources.items())], "sources")
    legend = " ".join(f"<span style='background:{c};padding:0 .4rem'>{k}</span>"
                      for k, c in FILL.items())
    body = (f"<h1>{escape(cat.project or 'starsmith')}</h1>\n<h2>Lineage</h2>\n<p class='muted'>"
            f"{legend} &middot; a dashed arrow reads the whole input</p>\n"
            f"<div style='overflow-x:auto'>{_lineage(cat)}</div>\n<h2>Models</h2>\n{models}\n"
            f"<h2>Sources</h2>\n{sources}")
    return _page(cat.project or "starsmith", body, sub=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def write_docs(cat: Catalogue, out: Path, *, warehouse: object | None = None) -> Path:
    """Write the site under ``out`` (pages of removed models are left as they were); returns
    ``index.html``. ``warehouse`` only supplies the run log, for each model's last build."""
    builds = _last_builds(warehouse)
    for name in cat.order:
        _write(out / "models" / f"{_slug(name)}.html",
               _model_page(cat, cat.models[name], builds.get(name)))
    for key, source in cat.sources.items():
        _write(out / "sources" / f"{_slug(source.name)}.html", _source_page(cat, key, source))
    index = out / "index.html"
    _write(index, _index(cat, builds))
    log.info("docs: %d models and %d sources in %s", len(cat.order), len(cat.sources), out)
    return index
