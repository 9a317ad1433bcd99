"""starsmith as its users meet it: a project folder of their own, the installed command, a wheel.

A second business (a Star Schema Benchmark-like star, tests/ssb_project.py) is written into a
folder outside the package and built with the ``starsmith`` command, through Temporal; its answers
are checked against plain DuckDB SQL on the landed Parquet files. The wheel is built and installed
apart from the repository, to show that everything installs under ``starsmith``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tests.ssb_project import MODELS, Scale, land_all, write_project

REPO = Path(__file__).parents[1]
STARSMITH = Path(sys.executable).parent / "starsmith"
SMALL = Scale(customers=50, parts=40, suppliers=10, days=5, lines_per_day=120)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no Temporal cluster configured (a build starts its own
    local dev server), no project chosen by the environment, a wide console so lines don't wrap."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TEMPORAL_") and k != "STARSMITH_PROJECT"}
    return {**env, "COLUMNS": "200", **extra}


def starsmith(*args: str, cwd: Path, timeout: float = 120, **env: str
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STARSMITH), *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def built_days(warehouse: Path, model: str) -> list[date]:
    """The logical dates a model was built for (none before the first build)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = "
                           "'_starsmith' AND table_name = 'watermarks'").fetchall()[0][0]:
            return []
        rows = con.execute("SELECT DISTINCT logical_date FROM _starsmith.watermarks WHERE model = ? "
                           "ORDER BY 1", [model]).fetchall()
    return [r[0] for r in rows]


def files(landing: Path, source: str, days: list[date] | None = None) -> str:
    """A DuckDB list of a source's landed Parquet files (of some days only, if given)."""
    paths = sorted(landing.glob(f"{source}/date=*/*.parquet"))
    if days is not None:
        wanted = {f"date={d.isoformat()}" for d in days}
        paths = [p for p in paths if p.parent.name in wanted]
    assert paths, f"nothing landed for {source}"
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


def ssb_project(root: Path, scale: Scale = SMALL) -> tuple[Path, list[date]]:
    project = write_project(root)
    days = land_all(project / "landing", scale)
    return project, days


@pytest.mark.temporal
@pytest.mark.slow
def test_a_second_business_builds_through_temporal(tmp_path: Path) -> None:
    project, days = ssb_project(tmp_path / "ssb", Scale())
    landing, warehouse = project / "landing", project / ".state" / "warehouse.duckdb"
    assert len(days) == 5 and days[0].year != days[-1].year  # a one-year filter selects a part

    plan = starsmith("--project", str(project), "plan", cwd=tmp_path)
    assert plan.returncode == 0, out(plan)
    assert "error" not in plan.stdout.lower(), out(plan)
    assert f"{len(MODELS)} model(s) x 5 day(s)" in plan.stdout, out(plan)
    for model in MODELS:
        assert model in plan.stdout, out(plan)
    assert "waits" not in plan.stdout, out(plan)

    build = starsmith("--project", str(project), "build", cwd=tmp_path)
    assert build.returncode == 0, out(build)
    assert "workflow starsmith-" in build.stdout, out(build)  # it went through Temporal
    # the five pending days are a catch-up: one step per model for the range
    assert "5 days built in 1 range(s)" in build.stdout, out(build)
    assert re.search(rf"{days[0]}\.\.{days[-1]}\s*│\s*fact_lineorder\s*│\s*built",
                     build.stdout), out(build)
    assert not re.search(r"│\s*(failed|skipped)\s*│", build.stdout), out(build)
    assert "0 failed, 0 skipped" in build.stdout, out(build)
    assert built_days(warehouse, "fact_lineorder") == days
    assert built_days(warehouse, "dim_customer") == days

    lineorder = f"read_parquet({files(landing, 'lineorder')})"
    part, supplier = (f"read_parquet({files(landing, s)})" for s in ("part", "supplier"))
    with duckdb.connect() as src, duckdb.connect(str(warehouse), read_only=True) as wh:
        # every landed line is in the fact exactly once, keyed to a real member of every dimension
        landed_rows = src.execute(f"SELECT count(*) FROM {lineorder}").fetchone()
        fact_rows = wh.execute("SELECT count(*), count(DISTINCT (orderkey, linenumber)) "
                           "FROM fact_lineorder").fetchone()
        assert landed_rows is not None and fact_rows is not None
        assert fact_rows == (landed_rows[0], landed_rows[0])
        unkeyed = wh.execute("SELECT count(*) FROM fact_lineorder WHERE least(customer_key, part_key, "
                         "supplier_key, date_key) < 0").fetchone()
        assert unkeyed == (0,)

        # SSB Q1.1: revenue of one year's small, lightly discounted lines, exact to the 1/10000
        q11_source = src.execute(f"""
            SELECT sum(extendedprice * discount) FROM {lineorder}
            WHERE year(orderdate) = 1998 AND discount BETWEEN 0.01 AND 0.03 AND quantity < 25
        """).fetchone()
        q11_warehouse = wh.execute("""
            SELECT sum(f.revenue) FROM fact_lineorder f JOIN dim_date d USING (date_key)
            WHERE d.year = 1998 AND f.discount BETWEEN 0.01 AND 0.03 AND f.quantity < 25
        """).fetchone()
        assert q11_source is not None and q11_warehouse is not None
        assert isinstance(q11_warehouse[0], Decimal) and q11_warehouse[0] > 0
        assert q11_warehouse[0] == q11_source[0]
        q11_all_years = wh.execute("SELECT sum(revenue) FROM fact_lineorder WHERE discount BETWEEN "
                               "0.01 AND 0.03 AND quantity < 25").fetchone()
        assert q11_all_years is not None and q11_all_years[0] > q11_warehouse[0]

        # SSB Q2.1: revenue by year and brand of one category sold by American suppliers
        q21_source = src.execute(f"""
            SELECT year(lo.orderdate) AS year, p.brand, sum(lo.extendedprice * lo.discount)
            FROM {lineorder} lo JOIN {part} p USING (partkey) JOIN {supplier} s USING (suppkey)
            WHERE p.category = 'MFGR#12' AND s.region = 'AMERICA'
            GROUP BY ALL ORDER BY ALL
        """).fetchall()
        q21_warehouse = wh.execute("""
            SELECT d.year, p.brand, sum(f.revenue)
            FROM fact_lineorder f
            JOIN dim_date d USING (date_key)
            JOIN dim_part p USING (part_key)
            JOIN dim_supplier s USING (supplier_key)
            WHERE p.category = 'MFGR#12' AND s.region = 'AMERICA'
            GROUP BY ALL ORDER BY ALL
        """).fetchall()
        assert len(q21_source) > 3, q21_source
        assert q21_warehouse == q21_source


@pytest.mark.parametrize("gap", ["daily-extract-missing", "reference-lands-late"])
def test_plan_names_the_source_that_holds_a_day_back(tmp_path: Path, gap: str) -> None:
    if gap == "daily-extract-missing":  # day 3 of 5 of the order lines never landed
        project, days = ssb_project(tmp_path / "ssb")
        shutil.rmtree(project / "landing" / "lineorder" / f"date={days[2]}")
        ready = days[:2]
        expected = [f"{days[2]} waits: source 'lineorder' (daily) has not landed that day",
                    *(f"{d} waits: an earlier day ({days[2]}) is not ready" for d in days[3:])]
    else:  # the customer list first lands on day 2: day 1 has no customers to key to
        project, days = ssb_project(tmp_path / "ssb")
        customer = project / "landing" / "customer"
        (customer / f"date={days[0]}").rename(customer / f"date={days[1]}")
        ready = []
        expected = [f"{days[0]} waits: reference source 'customer' has not landed on or before it",
                    *(f"{d} waits: an earlier day ({days[0]}) is not ready" for d in days[1:])]
    landing, warehouse = project / "landing", project / ".state" / "warehouse.duckdb"

    plan = starsmith("--project", str(project), "plan", cwd=tmp_path)
    assert plan.returncode == 0, out(plan)
    assert "error" not in plan.stdout.lower(), out(plan)
    span = ", ".join(d.isoformat() for d in ready) or "nothing pending"
    assert f"x {len(ready)} day(s): {span}" in plan.stdout, out(plan)
    lines = [line.strip() for line in plan.stdout.splitlines()]
    for sentence in expected:
        assert sentence in lines, f"missing {sentence!r}\n{out(plan)}"

    build = starsmith("--project", str(project), "build", "--in-process", cwd=tmp_path)
    assert build.returncode == (0 if ready else 1), out(build)  # nothing built: say so, fail
    for sentence in expected[:1]:  # the build says why it stops where it does
        assert sentence in build.stdout, out(build)
    if not ready:
        assert not warehouse.exists() or not built_days(warehouse, "fact_lineorder")
        return
    assert built_days(warehouse, "fact_lineorder") == ready
    assert built_days(warehouse, "dim_customer") == ready
    with duckdb.connect(str(warehouse), read_only=True) as wh:
        fact_rows = wh.execute("SELECT count(*) FROM fact_lineorder").fetchone()
    with duckdb.connect() as src:
        landed_rows = src.execute(
            f"SELECT count(*) FROM read_parquet({files(landing, 'lineorder', ready)})").fetchone()
    assert fact_rows == landed_rows


def test_project_option_is_accepted_after_the_command(tmp_path: Path) -> None:
    """``starsmith plan --project DIR``, the form the error hints suggest ("pass --project DIR"),
    works like ``starsmith --project DIR plan``."""
    project, days = ssb_project(tmp_path / "ssb")
    before = starsmith("--project", str(project), "plan", cwd=tmp_path)
    assert before.returncode == 0, out(before)
    after = starsmith("plan", "--project", str(project), cwd=tmp_path)
    assert after.returncode == 0, out(after)
    assert f"x {len(days)} day(s)" in after.stdout, out(after)


def _copy_source(dest: Path) -> Path:
    """The repository's files as they are now, without its environments, caches and builds, so
    that building the wheel writes nothing into the repository (setuptools builds in place)."""
    skip = {".git", ".venv", "build", "dist", ".state", "landing", ".emulator", "__pycache__",
            ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "retail-demo",
            "quality-report", "benchmarks"}
    return Path(shutil.copytree(
        REPO, dest, symlinks=True,
        ignore=lambda _dir, names: [n for n in names if n in skip or n.endswith(".egg-info")]))


@pytest.mark.slow
def test_a_wheel_install_keeps_everything_under_starsmith(tmp_path: Path) -> None:
    source = _copy_source(tmp_path / "src")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    made = subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, out(made)
    (wheel,) = wheels.glob("starsmith-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"starsmith"}, sorted(tops)
    installed = subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, out(installed)

    top = {p.name for p in site.iterdir()}
    assert "starsmith" in top, sorted(top)
    stray = top & {"models", "dimensions", "facts", "loaders", "quality", "orchestration"}
    assert not stray, f"installed at top level, outside starsmith: {sorted(stray)}"
    assert (site / "starsmith" / "__main__.py").is_file()
    for sub in ("dimensions", "facts", "loaders", "quality", "orchestration", "demo", "templates"):
        assert (site / "starsmith" / sub).is_dir() and not (site / "starsmith" / sub).is_symlink()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = cli_env(PYTHONPATH=str(site))

    def python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)

    no_models = python("-c", "import models")
    assert no_models.returncode != 0
    assert "ModuleNotFoundError: No module named 'models'" in no_models.stderr, out(no_models)

    api = python("-c", "from starsmith import Model, Input, Source, Column, DimensionSpec, "
                       "FactSpec, Expect; import starsmith, sys; print(starsmith.__file__)")
    assert api.returncode == 0, out(api)
    assert Path(api.stdout.strip()).resolve().is_relative_to(site.resolve()), out(api)

    init = python("-m", "starsmith", "init", "shop")
    assert init.returncode == 0, out(init)
    assert (work / "shop" / "starsmith.toml").is_file()
    build = python("-m", "starsmith", "--project", "shop", "build", "--in-process")
    assert build.returncode == 0, out(build)
    assert "fact_sales" in build.stdout and "0 failed, 0 skipped" in build.stdout, out(build)
    with duckdb.connect(str(work / "shop" / ".state" / "warehouse.duckdb"), read_only=True) as wh:
        sales = wh.execute("SELECT count(*) FROM fact_sales").fetchone()
        landed = wh.execute("SELECT count(*) FROM stg_sales").fetchone()
    assert sales is not None and sales[0] > 0
    assert sales == landed
