"""Showing a build's progress: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from starsmith.config import ProjectConfig
from starsmith.log import get_logger
from starsmith.orchestration.messages import BuildPlan
from starsmith.registry import Catalogue
from starsmith.summary import finish, outcome_rows, summary_table

log = get_logger(__name__)


def run_in_process(plan: BuildPlan, cfg: ProjectConfig, console: Console, cat: Catalogue) -> int:
    """Run the plan in this process; returns the exit code (0 when every day built)."""
    from starsmith.orchestration.local import run_plan

    started = datetime.now()
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
    console.print(summary_table(outcome_rows(outcomes)))
    console.print(escape(finish(cfg, cat.project, outcomes, [], started)))
    return 0 if outcomes and all(o.ok for o in outcomes) else 1
