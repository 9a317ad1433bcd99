"""What the tests that write a user's project share: the installed command, and the project file
of a DuckDB warehouse in the project's state folder, daily landings, and a build."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from starsmith.loaders.landed import write_manifest

STARSMITH = Path(sys.executable).parent / "starsmith"  # the command this environment installed


def starsmith_toml(name: str, *, memory_limit: str | None = None) -> str:
    """``starsmith.toml`` of a project named ``name``: models in ``models/``, landing in
    ``landing/``, a DuckDB warehouse in ``.state/`` as the default target."""
    limit = f'memory_limit = "{memory_limit}"\n' if memory_limit else ""
    return (f'name = "{name}"\nmodels = "models"\nlanding = "landing"\nstate = ".state"\n'
            'target = "dev"\n\n[targets.dev]\ntype = "duckdb"\n'
            f'path = ".state/warehouse.duckdb"\n{limit}')


def land_daily(root: Path, source: str, frames: list[pl.DataFrame], first: date) -> None:
    """``frames`` landed one a day from ``first`` as ``source``'s Parquet, each with a manifest."""
    for n, frame in enumerate(frames):
        folder = root / "landing" / source / f"date={(first + timedelta(n)).isoformat()}"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "part-0.parquet")
        write_manifest(folder, {"part-0.parquet": frame.height})


def build_in_process(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``starsmith build --in-process ARGS`` in the project at ``root``, as a user runs it."""
    return subprocess.run([str(STARSMITH), "build", "--in-process", *args], cwd=root,
                          capture_output=True, text=True, timeout=300)
