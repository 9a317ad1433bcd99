"""New projects: ``starsmith init`` (a small project that builds at once) and the retail demo.

Both are projects like any user's: files copied into a folder the user owns, with a config file,
loaded by path. The demo's files ship inside the package (``starsmith/demo``); ``starsmith demo``
copies them out once and lands its data there, so the demo is edited and built the way a user's
own project is.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

from starsmith.errors import ConfigError
from starsmith.loaders.landed import write_manifest
from starsmith.loaders.store import landed_into
from starsmith.project import CONFIG_FILE, Project, find_config, load_project
from starsmith.registry import Catalogue

HERE = Path(__file__).resolve().parent
DEMO = HERE / "demo"
TEMPLATE = HERE / "templates" / "init"
SAMPLE_START = date(2024, 1, 1)


def demo_project() -> Project:
    """The demo project as shipped (its catalogue; its own landing zone is not used)."""
    return load_project(DEMO)


def demo_catalogue() -> Catalogue:
    from starsmith.discover import load_catalogue

    return load_catalogue(demo_project())


def _copy_tree(src: Path, dest: Path, name: str) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(p.startswith((".", "__pycache__")) for p in rel.parts) or rel.parts[0] in (
                "landing",):
            continue
        target = dest / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix in (".py", ".toml", ".md"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text().replace("__NAME__", name))


def _refuse_existing(dest: Path) -> None:
    if (dest / CONFIG_FILE).exists():
        raise ConfigError(f"{dest} already holds a starsmith project", where=str(dest / CONFIG_FILE),
                          fix="Choose another folder, or build the one that is there")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty", fix="Give a new or empty folder")


def init_project(dest: Path, *, name: str | None = None, sample: bool = True) -> Project:
    """Write a small project (two sources, a dimension, a fact) and three days of sample data."""
    dest = dest.resolve()
    _refuse_existing(dest)
    proj_name = name or dest.name
    if not proj_name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"project name {proj_name!r} is not a plain name",
                          fix="Use letters, digits, - and _")
    _copy_tree(TEMPLATE, dest, proj_name)
    (dest / ".gitignore").write_text(".state/\nlanding/\n__pycache__/\n")
    project = load_project(dest)
    if sample:
        landed_into(project.landing, write_sample_landing)
    return project


def ensure_demo(dest: Path) -> Project:
    """The demo project in ``dest``: copied there first unless a project is already there."""
    dest = dest.resolve()
    if find_config(dest) == dest / CONFIG_FILE:
        return load_project(dest)
    _refuse_existing(dest)
    _copy_tree(DEMO, dest, "retail")
    return load_project(dest)


def write_sample_landing(landing: Path, *, days: int = 3, start: date = SAMPLE_START) -> None:
    """The init project's data: customers exported once (reference data), sales every day."""
    customers = pl.DataFrame({
        "customer_id": list(range(1, 9)),
        "name": [f"Customer {i}" for i in range(1, 9)],
        "segment": ["retail", "business"] * 4,
    }, schema={"customer_id": pl.Int64(), "name": pl.String(), "segment": pl.String()})
    _land(landing, "customers", start, customers)
    for n in range(days):
        day = start + timedelta(days=n)
        ids = list(range(n * 10 + 1, n * 10 + 11))
        sales = pl.DataFrame({
            "sale_id": ids,
            "customer_id": [None if i % 7 == 0 else (i % 8) + 1 for i in ids],
            "sold_at": [datetime(day.year, day.month, day.day, 9 + i % 8, i % 60) for i in ids],
            "quantity": [1 + i % 3 for i in ids],
            "unit_price": [Decimal("9.99") + Decimal(i % 5) for i in ids],
        }, schema={"sale_id": pl.Int64(), "customer_id": pl.Int64(),
                   "sold_at": pl.Datetime("us"), "quantity": pl.Int32(),
                   "unit_price": pl.Decimal(12, 2)})
        _land(landing, "sales", day, sales)


def _land(landing: Path, source: str, day: date, frame: pl.DataFrame) -> None:
    folder = landing / source / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "part-0.parquet.tmp"
    frame.write_parquet(tmp)
    tmp.replace(folder / "part-0.parquet")  # a reader never sees half a file
    write_manifest(folder, {"part-0.parquet": frame.height})  # last: the day is complete
