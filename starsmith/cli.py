"""The ``starsmith`` command: thin wiring of the catalogue, the plan, the runners and the loaders."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.errors import ConfigError, StarsmithError
from starsmith.log import configure

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build a star-schema warehouse: SCD dimensions and facts, gated and atomic.")
console = Console(stderr=False)

Landing = Annotated[Path | None, typer.Option(help="landing zone folder [default: ./landing]")]
Warehouse = Annotated[Path | None, typer.Option(help="DuckDB file [default: ./.state/warehouse.duckdb]")]
Select = Annotated[list[str] | None, typer.Option("--select", "-s",
                                                  help="models: NAME, NAME+ (and dependants), +NAME")]


Target = Annotated[str | None, typer.Option(
    "--target", help="duckdb (default) or bigquery (STARSMITH_BQ_PROJECT, STARSMITH_BQ_DATASET)")]


def _config(landing: Path | None = None, warehouse: Path | None = None,
            target: str | None = None) -> ProjectConfig:
    return ProjectConfig.load(landing=landing, warehouse=warehouse, target=target)


def _guard(fn: Callable[[], Any]) -> Any:
    """Turn a StarsmithError into a clear message and exit code 2, without a traceback."""
    try:
        return fn()
    except StarsmithError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from err


def _parse_date(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{flag} {value!r} is not a date", fix="Use YYYY-MM-DD") from err


@app.callback()
def main_options(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    configure(logging.DEBUG if verbose else logging.INFO)


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="days of history to land")] = 7,
    scale: Annotated[float, typer.Option(help="1 = 1k customers, 300 orders a day")] = 1.0,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 7,
    landing: Landing = None,
) -> None:
    """Write the demo retail landing zone (deterministic, with realistic dirt)."""
    from models.demo_landing import write_landing

    cfg = _config(landing)
    landed = write_landing(cfg.landing, days=days, scale=scale, seed=seed)
    console.print(f"landed {len(landed)} day(s), {landed[0]} to {landed[-1]}, in {cfg.landing}")


def _dates(cfg: ProjectConfig, models: list[str], day: str | None, start: str | None,
           end: str | None) -> list[date]:
    from loaders.target import open_warehouse
    from models.registry import load_catalogue
    from orchestration.plan import date_range, pending_dates

    if day and (start or end):
        raise ConfigError("give either --date or --from/--to, not both")
    if day:
        return [_parse_date(day, "--date")]  # type: ignore[list-item]
    if start or end:
        first, last = _parse_date(start, "--from"), _parse_date(end, "--to")
        if not (first and last) or first > last:
            raise ConfigError("--from and --to need both, with --from <= --to")
        return date_range(first, last)
    wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
    return pending_dates(load_catalogue(), models, cfg.landing, wh)


@app.command()
def build(
    select: Select = None,
    day: Annotated[str | None, typer.Option("--date", help="one logical date")] = None,
    start: Annotated[str | None, typer.Option("--from", help="first logical date")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last logical date")] = None,
    full_refresh: Annotated[bool, typer.Option(help="rebuild the tables from all history")] = False,
    in_process: Annotated[bool, typer.Option(help="run without Temporal (debugging)")] = False,
    address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS",
                                                help="Temporal cluster; default: a local dev server")] = None,
    no_wait: Annotated[bool, typer.Option(help="submit to the cluster and print the run id")] = False,
    max_parallel: Annotated[int, typer.Option(help="model steps in flight at once")] = 4,
    memory_budget: Annotated[str | None, typer.Option(
        help="peak memory of a step, e.g. 2GB: fact rebuilds are batched to fit "
             "[env STARSMITH_MEMORY_BUDGET]")] = None,
    landing: Landing = None,
    warehouse: Warehouse = None,
    target: Target = None,
) -> None:
    """Build the warehouse: by default every landed day not yet built, in order."""
    from models.registry import load_catalogue
    from orchestration.plan import make_plan

    def go() -> int:
        cfg = ProjectConfig.load(landing=landing, warehouse=warehouse, target=target,
                                 memory_budget=memory_budget)
        cat = load_catalogue()
        models = cat.select(select)
        dates = _dates(cfg, models, day, start, end)
        if full_refresh and not dates:  # rebuild as of the latest landed day
            from orchestration.plan import landed_days

            landed = landed_days(cat, models, cfg.landing)
            if not landed:
                raise ConfigError("nothing has landed to rebuild from",
                                  where=str(cfg.landing), fix="Run `starsmith demo` or land data")
            dates = [landed[-1]]
        if not dates:
            console.print("nothing to build: every landed day is built")
            return 0
        plan = make_plan(cat, models, dates, full_refresh=full_refresh, max_parallel=max_parallel)
        if in_process:
            from starsmith.progress import run_in_process

            return run_in_process(plan, cfg, console)
        from starsmith.temporal_cli import run_with_temporal

        # A range runs as a backfill: one child workflow per day, and a re-run after a failure
        # resumes from the first day not built.
        ranged = bool(start or end) and not full_refresh
        return run_with_temporal(plan, cfg, console, address=address, wait=not no_wait,
                                 backfill=ranged)

    code = _guard(go)
    exit_now(code)


def exit_now(code: int) -> None:
    """Flush and leave at once: temporalio can crash in interpreter finalisation (FACTS.md)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


@app.command()
def plan(select: Select = None,
         day: Annotated[str | None, typer.Option("--date")] = None,
         start: Annotated[str | None, typer.Option("--from")] = None,
         end: Annotated[str | None, typer.Option("--to")] = None,
         landing: Landing = None, warehouse: Warehouse = None, target: Target = None) -> None:
    """Show what a build would run, in which order, with which strategy (on BigQuery, with the
    bytes its reads would scan, from dry runs)."""
    from models.registry import load_catalogue

    cfg = _config(landing, warehouse, target)

    def go() -> None:
        cat = load_catalogue()
        models = cat.select(select)
        dates = _dates(cfg, models, day, start, end)
        table = Table(title=f"{len(models)} model(s) x {len(dates)} day(s): "
                      + (", ".join(d.isoformat() for d in dates) or "nothing pending"))
        estimate = None
        if cfg.target == "bigquery" and dates:
            from loaders.bigquery.estimate import estimate_bytes
            from loaders.target import open_warehouse

            wh = open_warehouse(cfg.warehouse_ref)
            estimate = {n: estimate_bytes(wh, cat, cat.models[n], dates) for n in models}  # type: ignore[arg-type]
        for col in ("#", "model", "kind", "strategy", "inputs", *(["est. bytes"] if estimate else [])):
            table.add_column(col)
        for i, name in enumerate(models, 1):
            m = cat.models[name]
            table.add_row(str(i), name, m.kind.value, m.strategy.value,
                          ", ".join(m.input_names) or "-",
                          *([f"{estimate[name]:,}"] if estimate else []))
        console.print(table)
        if estimate:
            console.print(f"estimated scan: {sum(estimate.values()):,} bytes (BigQuery dry runs "
                          "of each step's reads; staging loads are free)")

    _guard(go)


@app.command()
def show(model: str) -> None:
    """Show a model's schema, inputs and dependants."""
    from models.registry import load_catalogue

    def go() -> None:
        cat = load_catalogue()
        m = cat.model(model)
        console.print(f"[bold]{m.name}[/] ({m.kind.value}, strategy {m.strategy.value})")
        console.print(m.description)
        console.print(f"inputs: {', '.join(m.input_names) or '-'}")
        console.print(f"dependants: {', '.join(cat.dependants(m.name)) or '-'}")
        if m.dimension:
            d = m.dimension
            console.print(f"natural key: {', '.join(d.natural_key)}; surrogate key: "
                          f"{d.surrogate_key}; change detection: {d.detection.value}; deletes: "
                          f"{d.deletes.value}; late changes: {d.late_changes.value}")
        if m.fact:
            f = m.fact
            console.print(f"{f.fact_type.value} fact; grain: {', '.join(f.grain)}; partition: "
                          f"{m.partition_by or '-'}; lookback: {f.lookback_days} day(s)")
            for lk in f.lookups:
                console.print(f"  {lk.output} <- {lk.dimension.name} on "
                              f"{', '.join(lk.fact_columns)} as of {lk.event_time}; missing: "
                              f"{lk.missing.value}")
        for e in m.expectations:
            console.print(escape(f"expect [{e.severity}] {e.describe()}"))
        for check in m.checks:
            console.print(escape(f"check [{check.severity}] {check}"))
        table = Table()
        for col in ("column", "type", "nullable", "scd", "description"):
            table.add_column(col)
        scd = dict(m.dimension.columns) if m.dimension else {}
        for c in m.columns:
            kind = scd.get(c.name)
            table.add_row(c.name, str(c.dtype), "yes" if c.nullable else "no",
                          f"type {int(kind)}" if kind is not None else "", c.description)
        console.print(table)

    _guard(go)


@app.command()
def worker(
    address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS")] = None,
    task_queue: Annotated[str, typer.Option(help="queue to poll")] = "starsmith",
    max_activities: Annotated[int, typer.Option(help="model steps at once on this worker")] = 4,
) -> None:
    """Run a worker: several workers on one queue share a build."""
    import asyncio

    from orchestration.worker import make_worker
    from starsmith.temporal_cli import Connection, _connect

    conn = Connection.from_env(address)
    if conn.address is None:
        console.print("[bold red]error:[/] a worker needs --address or TEMPORAL_ADDRESS "
                      "(start one with `starsmith server`)")
        raise typer.Exit(2)

    async def go() -> None:
        client = await _connect(conn.address, conn)
        console.print(f"worker polling {task_queue!r} at {conn.address}")
        await make_worker(client, task_queue=task_queue, max_activities=max_activities).run()

    asyncio.run(go())


@app.command()
def server(port: int = 7233, ui_port: int = 8233) -> None:
    """Start the local Temporal server with its web UI (loopback only) until Ctrl-C."""
    from orchestration.server import start_local_server

    cfg = _config()
    srv = start_local_server(cfg.state / "temporal", port=port, ui=True, ui_port=ui_port)
    console.print(f"Temporal at {srv.address}; UI at http://127.0.0.1:{srv.ui_port}")
    console.print(f"export TEMPORAL_ADDRESS={srv.address}  # for builds and workers")
    try:
        srv.process.wait()
    except KeyboardInterrupt:
        srv.stop()


@app.command()
def status(run_id: Annotated[str | None, typer.Argument(help="workflow id; default: latest")] = None,
           address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS")] = None) -> None:
    """Print a build's state: every model's progress, or the final result."""
    from starsmith.temporal_cli import status as show_status

    exit_now(_guard(lambda: show_status(_config(), console, run_id, address)))


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from")],
    end: Annotated[str, typer.Option("--to")],
    select: Select = None,
    address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS")] = None,
    landing: Landing = None,
    warehouse: Warehouse = None,
    target: Target = None,
) -> None:
    """Build the days from --from to --to in order, one child workflow per day; resumable."""
    from models.registry import load_catalogue
    from orchestration.plan import date_range, make_plan
    from starsmith.temporal_cli import run_with_temporal

    cfg = _config(landing, warehouse, target)

    def go() -> int:
        first, last = _parse_date(start, "--from"), _parse_date(end, "--to")
        assert first and last
        cat = load_catalogue()
        plan = make_plan(cat, cat.select(select), date_range(first, last))
        return run_with_temporal(plan, cfg, console, address=address, backfill=True)

    exit_now(_guard(go))


def _schedules() -> None:
    from starsmith.schedule_cli import app as schedule_app

    app.add_typer(schedule_app, name="schedule")


_schedules()


@app.command()
def report(out: Annotated[Path, typer.Option(help="folder for the site")] = Path("quality-report"),
           runs: Annotated[int, typer.Option(help="runs in the trend")] = 14,
           warehouse: Warehouse = None, target: Target = None) -> None:
    """Write the data-quality report (static HTML, works offline) from the results table."""
    from loaders.target import open_warehouse
    from quality.report import write_report

    cfg = _config(warehouse=warehouse, target=target)
    name = cfg.warehouse_ref.split("?")[0] if cfg.target == "bigquery" else cfg.warehouse.name
    index = _guard(lambda: write_report(open_warehouse(cfg.warehouse_ref), out, runs=runs,
                                        name=name))
    console.print(f"report: {index}")


@app.command()
def reprocess(
    model: str,
    in_process: Annotated[bool, typer.Option(help="run without Temporal")] = False,
    address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS")] = None,
    landing: Landing = None,
    warehouse: Warehouse = None,
    target: Target = None,
) -> None:
    """Re-run the days whose rows MODEL quarantined, with its dependants, once the source is fixed.

    A re-run replaces that day's quarantine rows: fixed rows reach the table, rows still bad stay.
    """
    from loaders.target import open_warehouse
    from models.registry import load_catalogue
    from orchestration.plan import make_plan

    cfg = _config(landing, warehouse, target)

    def go() -> int:
        cat = load_catalogue()
        cat.model(model)
        wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
        if not wh.exists(f"{model}__quarantine"):
            console.print(f"{model} has no quarantined rows")
            return 0
        days = wh.query(f'SELECT DISTINCT logical_date AS d FROM main."{model}__quarantine" '
                        "ORDER BY 1")["d"].to_list()
        if not days:
            console.print(f"{model} has no quarantined rows")
            return 0
        plan = make_plan(cat, cat.select([f"{model}+"]), days)
        if in_process:
            from starsmith.progress import run_in_process

            return run_in_process(plan, cfg, console)
        from starsmith.temporal_cli import run_with_temporal

        return run_with_temporal(plan, cfg, console, address=address)

    exit_now(_guard(go))


def main() -> None:
    app()
