"""Showing a build's progress: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.log import get_logger
from starsmith.orchestration.messages import BuildPlan
from starsmith.registry import Catalogue

log = get_logger(__name__)


def summary_table(rows: Iterable[tuple[str, str, str, str]]) -> Table:
    """(logical date, model, state, detail) rows as one table."""
    table = Table(title="build result")
    for col in ("date", "model", "state", "detail"):
        table.add_column(col)
    colours = {"built": "green", "failed": "red", "skipped": "yellow"}
    for day, model, state, detail in rows:
        table.add_row(day, model, f"[{colours.get(state, 'white')}]{state}[/]", detail)
    return table


def run_in_process(plan: BuildPlan, cfg: ProjectConfig, console: Console, cat: Catalogue) -> int:
    """Run the plan in this process; returns the exit code (0 when every day built)."""
    from starsmith.orchestration.local import run_plan

    total = sum(len(s.dates) * len(s.models) for s in (*plan.phases, plan))
    if console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("building", total=total)

            def listener(day: str, model: str, state: str) -> None:
                bar.update(task, description=f"{day} {model}: {state}")
                if state != "running":
                    bar.advance(task)

            outcomes = run_plan(plan, landing=str(cfg.landing), warehouse=cfg.warehouse_ref,
                                memory_limit=cfg.memory_limit, staging=str(cfg.staging),
                                listener=listener, memory_budget=cfg.memory_budget, catalogue=cat)
    else:
        outcomes = run_plan(plan, landing=str(cfg.landing), warehouse=cfg.warehouse_ref,
                            memory_limit=cfg.memory_limit, staging=str(cfg.staging),
                            memory_budget=cfg.memory_budget, catalogue=cat)
    rows = []
    for o in outcomes:
        rows += [(o.logical_date, r.model, "built",
                  f"{r.rows_written} written, {r.rows_quarantined} quarantined")
                 for r in o.built]
        rows += [(o.logical_date, m, "failed", why) for m, why in o.failed.items()]
        rows += [(o.logical_date, m, "skipped", f"input {why} failed") for m, why in o.skipped.items()]
    console.print(summary_table(rows))
    return 0 if outcomes and all(o.ok for o in outcomes) else 1
