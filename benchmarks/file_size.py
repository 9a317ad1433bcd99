"""The warehouse file's size against its data: nightly builds, then one long backfill.

Each publish commits a few bookkeeping rows (run log, watermark, quality results, landings) to
``_starsmith``; every such commit writes new blocks, and with DuckDB's vacuum off nothing merges
them, so the file can grow an order of magnitude past its data. This runs the demo project
through the real build path (``starsmith build --in-process``: lease, plan, steps, end-of-build
upkeep), then compares the file with ``COPY FROM DATABASE`` into a fresh file, the smallest file
those rows make:

1. nights: one build per landed day (``--from D --to D``), like a nightly schedule;
2. backfill: one build of every landed day (``--from first --to last``).

Prints the sizes, the ratio (file / fresh copy) and the upkeep's time (median; the in-process
runner calls it after each day, so once a night, and once a day of the backfill).
Usage: python benchmarks/file_size.py [--nights 30] [--scale 5] [--backfill-days 300]
       [--backfill-scale 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from starsmith.config import ProjectConfig
from starsmith.demo_data import write_landing
from starsmith.discover import load_catalogue
from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.scaffold import ensure_demo


def fresh_copy_bytes(path: Path, folder: Path) -> int:
    """The size of ``COPY FROM DATABASE`` of ``path`` into a new file (then removed)."""
    fresh = folder / "fresh_copy.duckdb"
    fresh.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{fresh}' AS fresh")
        con.execute("COPY FROM DATABASE src TO fresh")
        con.execute("DETACH fresh")
    finally:
        con.close()
    size = fresh.stat().st_size
    fresh.unlink()
    return size


def timed_upkeep(seconds: list[float]) -> Callable[[], None]:
    """Time every call of the warehouse's end-of-build upkeep (if it has one); returns the
    undo."""
    real = getattr(DuckDBWarehouse, "upkeep", None)
    if real is None:
        return lambda: None

    def upkeep(self: DuckDBWarehouse, *args: Any, **kwargs: Any) -> Any:
        clock = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - clock)

    DuckDBWarehouse.upkeep = upkeep  # type: ignore[attr-defined]
    return lambda: setattr(DuckDBWarehouse, "upkeep", real)


def build(project: Path, first: date, last: date) -> None:
    """``starsmith build --in-process --from first --to last`` in this process, quietly."""
    from starsmith.cli import _build
    from starsmith.shell import choose_project, console

    choose_project(project)
    cfg = ProjectConfig.load(project)
    console.quiet = True
    with contextlib.redirect_stdout(io.StringIO()):
        code = _build(cfg, None, None, first.isoformat(), last.isoformat(), False, True, None,
                      False, 4)
    if code:
        raise SystemExit(f"the build of {first}..{last} failed (exit {code})")


def run(folder: Path, label: str, days: int, scale: float, *, nightly: bool) -> None:
    project = folder / label
    proj = ensure_demo(project)
    cfg = ProjectConfig.load(proj)
    landed = write_landing(cfg.landing, days=days, scale=scale,
                           sources=load_catalogue(proj).sources)
    upkeep: list[float] = []
    undo = timed_upkeep(upkeep)
    clock = time.perf_counter()
    try:
        if nightly:
            for day in landed:
                build(proj.root, day, day)
        else:
            build(proj.root, landed[0], landed[-1])
    finally:
        undo()
    took = time.perf_counter() - clock
    size = cfg.warehouse.stat().st_size
    fresh = fresh_copy_bytes(cfg.warehouse, folder)
    kind = f"{days} nights" if nightly else f"a {days}-day backfill"
    print(f"{kind} at scale {scale:g} ({took:.0f} s): file {size / 2**20:.1f} MiB, fresh copy "
          f"{fresh / 2**20:.1f} MiB, ratio {size / fresh:.2f}x"
          + (f"; upkeep median {statistics.median(upkeep) * 1000:.0f} ms, max "
             f"{max(upkeep) * 1000:.0f} ms ({len(upkeep)} calls: one per day built)"
             if upkeep else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--backfill-days", type=int, default=300)
    parser.add_argument("--backfill-scale", type=float, default=0.2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the builds' own log lines; errors still surface
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        if args.nights:
            run(folder, "nights", args.nights, args.scale, nightly=True)
        if args.backfill_days:
            run(folder, "backfill", args.backfill_days, args.backfill_scale, nightly=False)


if __name__ == "__main__":
    main()
