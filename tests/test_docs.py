"""The analysts' docs: lineage, a page per model and source, SCD types and grain, offline, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy, Window
from starsmith.docs import write_docs
from starsmith.registry import Catalogue, build_catalogue
from starsmith.scaffold import demo_catalogue

CSP = ("<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
       "style-src 'unsafe-inline'; img-src data:;\">")
PAYLOAD = "<img src=x onerror=alert(1)>"


class _Page(HTMLParser):
    """Tables (by class) as rows of cell texts, ``<dl>`` terms, and every link."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.terms: dict[str, str] = {}
        self.links: list[str] = []
        self._table = ""
        self._cell: list[str] | None = None
        self._term = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        at = dict(attrs)
        if tag == "table":
            self._table = at.get("class") or ""
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self.tables[self._table].append([])
        elif tag in ("td", "th", "dt", "dd"):
            self._cell = []
        elif tag == "a" and at.get("href"):
            self.links.append(str(at["href"]))

    def handle_endtag(self, tag: str) -> None:
        if self._cell is None or tag not in ("td", "th", "dt", "dd"):
            return
        text = "".join(self._cell).strip()
        if tag in ("td", "th"):
            self.tables[self._table][-1].append(text)
        elif tag == "dt":
            self._term = text
        else:
            self.terms[self._term] = text
        self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _row(page: _Page, table: str, first: str) -> list[str]:
    rows = [r for r in page.tables[table] if r and r[0] == first]
    assert len(rows) == 1, f"{first!r} in table {table!r}: {page.tables[table]}"
    return rows[0]


def _site(tmp_path: Path, cat: Catalogue, warehouse: object | None = None) -> Path:
    index = write_docs(cat, tmp_path / "site", warehouse=warehouse)
    assert index == tmp_path / "site" / "index.html"
    return index.parent


@pytest.fixture(scope="module")
def demo() -> Catalogue:
    return demo_catalogue()


def test_index_draws_every_model_and_source_in_columns_by_depth(
        tmp_path: Path, demo: Catalogue) -> None:
    site = _site(tmp_path, demo)
    text = (site / "index.html").read_text()
    assert "<h1>retail</h1>" in text
    svg = ET.fromstring(text[text.index("<svg"):text.index("</svg>") + len("</svg>")])
    nodes = {}
    for a in svg.iter("a"):
        g, rect = a.find("g"), a.find("g/rect")
        assert g is not None and rect is not None
        nodes[g.get("data-name")] = (a.get("href"), int(g.get("data-depth", "-1")),
                                     float(rect.get("x", "nan")))
    assert set(nodes) == set(demo.models) | set(demo.sources)
    for name, (href, _, _) in nodes.items():
        assert href is not None and (site / href).is_file(), name
    assert nodes["landing.customers"][0] == "sources/customers.html"
    assert nodes["fact_sales"][0] == "models/fact_sales.html"
    depths = {n: d for n, (_, d, _) in nodes.items()}
    assert {depths[s] for s in demo.sources} == {0}
    assert (depths["dim_date"], depths["stg_customers"], depths["dim_customer"],
            depths["fact_sales"]) == (1, 1, 2, 3)
    xs = {d: {x for n, (_, dd, x) in nodes.items() if dd == d} for d in set(depths.values())}
    assert all(len(v) == 1 for v in xs.values())  # one column per depth
    assert sorted(xs, key=lambda d: min(xs[d])) == sorted(xs)  # columns left to right
    edges = {(p.get("data-from"), p.get("data-to")) for p in svg.iter("path")
             if p.get("class") == "edge"}
    assert edges == {(i, m) for m in demo.models for i in demo.models[m].input_names}
    dashed = {(p.get("data-from"), p.get("data-to")) for p in svg.iter("path")
              if p.get("stroke-dasharray")}  # an input read whole (Window.ALL), not by day
    assert dashed == {(i.name, m) for m in demo.models for i in demo.models[m].inputs
                      if i.window is Window.ALL}
    assert ("dim_product", "fact_inventory_daily") in dashed
    models = _Page(text).tables["models"]
    assert [r[0] for r in models[1:]] == list(demo.order)
    assert _row(_Page(text), "models", "fact_sales")[1:3] == ["fact", "partition"]


def test_a_page_per_model_and_source(tmp_path: Path, demo: Catalogue) -> None:
    site = _site(tmp_path, demo)
    assert {p.stem for p in (site / "models").glob("*.html")} == set(demo.models)
    assert {p.stem for p in (site / "sources").glob("*.html")} == {
        s.name for s in demo.sources.values()}
    source = _Page((site / "sources" / "customers.html").read_text())
    assert source.terms["cadence"] == demo.sources["landing.customers"].cadence.value
    assert source.terms["read by"] == "stg_customers"
    assert _row(source, "columns", "customer_id")[1] == "Int64"
    for page in (site / "models").glob("*.html"):  # relative links that resolve
        for href in _Page(page.read_text()).links:
            assert (page.parent / href).is_file(), (page.name, href)


def test_dimension_page_shows_scd_types_and_keys(tmp_path: Path, demo: Catalogue) -> None:
    page = _Page((_site(tmp_path, demo) / "models" / "dim_customer.html").read_text())
    assert page.tables["columns"][0] == ["column", "type", "nullable", "SCD type", "description"]
    assert _row(page, "columns", "address")[3].startswith("2")
    assert _row(page, "columns", "email")[3].startswith("1")
    assert _row(page, "columns", "customer_id")[3] == "natural key"
    assert _row(page, "columns", "customer_key")[1:4] == ["Int64", "no", "surrogate key"]
    assert page.terms["natural key"] == "customer_id"
    assert page.terms["surrogate key"] == "customer_key"
    assert page.terms["dependants"] == "fact_sales"
    assert page.terms["file"] == "dim_customer.py"
    checks = page.tables["checks"]
    assert ["warn", "expect_column_values_to_not_be_null(column='email', mostly=0.95)"] in checks


def test_fact_page_shows_grain_lookups_and_measures(tmp_path: Path, demo: Catalogue) -> None:
    page = _Page((_site(tmp_path, demo) / "models" / "fact_sales.html").read_text())
    assert page.terms["grain"] == "order_id, line_no"
    assert page.terms["fact type"] == "transaction"
    assert page.terms["partition"] == "sale_date"
    assert page.terms["lookback"] == "7 days"
    assert _row(page, "lookups", "dim_customer") == [
        "dim_customer", "customer_id", "order_ts", "inferred", "customer_key"]
    assert "../models/dim_customer.html" in page.links
    assert _row(page, "measures", "net_amount") == ["net_amount", "additive"]
    assert any(r[1].startswith("References(column='customer_key'") for r in page.tables["checks"])
    assert page.terms["unique key"] == "order_id, line_no"


def test_the_site_is_offline_and_deterministic(tmp_path: Path, demo: Catalogue) -> None:
    first = _site(tmp_path / "a", demo)
    second = _site(tmp_path / "b", demo)
    files = sorted(p.relative_to(first) for p in first.rglob("*.html"))
    assert len(files) == 1 + len(demo.models) + len(demo.sources)
    for rel in files:
        text = (first / rel).read_text()
        assert "http://" not in text and "https://" not in text, rel
        assert "<script" not in text and "<link" not in text and " src=" not in text, rel
        assert CSP in text, rel
        assert (second / rel).read_bytes() == (first / rel).read_bytes(), rel
    assert sorted(p.relative_to(second) for p in second.rglob("*.html")) == files


def _t(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return pl.LazyFrame({"x": [1]})


def test_every_value_is_escaped(tmp_path: Path) -> None:
    sources = tuple(demo_catalogue().sources.values())
    evil = Model("stg_evil", Kind.STAGING, (Input("landing.customers"),),
                 (Column("x", pl.Int64(), description=PAYLOAD),), _t, Strategy.FULL,
                 description=PAYLOAD, owner=PAYLOAD)
    site = _site(tmp_path, build_catalogue([evil], sources, project=PAYLOAD))
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    for rel in ("index.html", "models/stg_evil.html"):
        text = (site / rel).read_text()
        assert PAYLOAD not in text, rel
        assert escaped in text, rel
    page = _Page((site / "models" / "stg_evil.html").read_text())
    assert page.terms["description"] == PAYLOAD and page.terms["owner"] == PAYLOAD
    assert _row(page, "columns", "x")[-1] == PAYLOAD


class _BrokenWarehouse:
    def run_log(self) -> pl.DataFrame:
        raise FileNotFoundError("no warehouse yet")


class _EmptyWarehouse:
    def run_log(self) -> pl.DataFrame:
        return pl.DataFrame(schema={"model": pl.String(), "status": pl.String()})


@pytest.mark.parametrize("warehouse", [None, _BrokenWarehouse(), _EmptyWarehouse()])
def test_a_missing_run_log_shows_never_built(tmp_path: Path, demo: Catalogue,
                                              warehouse: object) -> None:
    site = _site(tmp_path, demo, warehouse)
    assert _row(_Page((site / "index.html").read_text()), "models", "fact_sales")[-1] == (
        "never built")
    assert "never built" in (site / "models" / "fact_sales.html").read_text()


def test_docs_show_the_last_build_of_a_built_project(tmp_path: Path) -> None:
    from starsmith.config import ProjectConfig
    from starsmith.discover import load_catalogue
    from starsmith.loaders.connect import open_warehouse
    from starsmith.orchestration.local import run_plan
    from starsmith.orchestration.plan import make_plan, pending_dates
    from starsmith.scaffold import init_project

    proj = init_project(tmp_path / "shop")
    cfg = ProjectConfig.load(proj)
    cat = load_catalogue(proj)
    dates = pending_dates(cat, list(cat.order), cfg.landing, open_warehouse(cfg.warehouse_ref)).days
    plan = make_plan(cat, list(cat.order), dates)
    outcomes = run_plan(plan, landing=str(cfg.landing), warehouse=cfg.warehouse_ref,
                        catalogue=cat, staging=str(cfg.staging))
    assert outcomes and all(o.ok for o in outcomes)
    log = open_warehouse(cfg.warehouse_ref).run_log().filter(pl.col("model") == "fact_sales")
    last = log.sort("started_at").row(-1, named=True)

    site = _site(tmp_path, cat, open_warehouse(cfg.warehouse_ref))
    page = _Page((site / "models" / "fact_sales.html").read_text())
    assert page.terms["status"] == "success"
    assert page.terms["logical date"] == "2024-01-03"
    assert page.terms["rows written"] == str(last["rows_written"])
    assert page.terms["finished at"] == last["finished_at"].isoformat(sep=" ", timespec="seconds")
    index = _Page((site / "index.html").read_text())
    assert _row(index, "models", "fact_sales")[-1] == "success 2024-01-03"
    assert "never built" not in (site / "index.html").read_text()
