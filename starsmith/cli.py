"""The ``starsmith`` command: thin wiring of the catalogue, the plan, the runners and the loaders."""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.errors import ConfigError, DataError
from starsmith.log import configure
from starsmith.registry import Catalogue
from starsmith.shell import (
    choose_project,
    config,
    console,
    exit_now,
    guard,
    parse_date,
    set_verbose,
)

if TYPE_CHECKING:
    from starsmith.orchestration.messages import BuildPlan

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build a star-schema warehouse: SCD dimensions and facts, gated and atomic.")
Landing = Annotated[str | None, typer.Option(
    help="landing zone: a folder, s3://bucket/prefix or gs://bucket/prefix [default: ./landing]")]
Warehouse = Annotated[Path | None, typer.Option(help="DuckDB file [default: ./.state/warehouse.duckdb]")]
Select = Annotated[list[str] | None, typer.Option("--select", "-s",
                                                  help="models: NAME, NAME+ (and dependants), +NAME")]


Target = Annotated[str | None, typer.Option(
    "--target", help="duckdb (default) or bigquery (STARSMITH_BQ_PROJECT, STARSMITH_BQ_DATASET)")]


def _config(landing: str | None = None, warehouse: Path | None = None,
            target: str | None = None, **more: Any) -> ProjectConfig:
    return config(landing=landing, warehouse=warehouse, target=target, **more)


def _catalogue(cfg: ProjectConfig) -> Catalogue:
    from starsmith.discover import load_catalogue

    assert cfg.project is not None
    return load_catalogue(cfg.project)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    project: Annotated[Path | None, typer.Option(
        "--project", "-p", envvar="STARSMITH_PROJECT",
        help="the project folder [default: found from the current folder upward]")] = None,
) -> None:
    configure(logging.DEBUG if verbose else logging.INFO)
    choose_project(project)
    set_verbose(verbose)


@app.command()
def init(folder: Annotated[Path, typer.Argument(help="a new or empty folder")],
         name: Annotated[str | None, typer.Option(help="project name [default: the folder's]")]
         = None,
         sample: Annotated[bool, typer.Option(help="land three days of sample data")] = True,
         ) -> None:
    """Create a project: two sources, a dimension, a fact, sample data, a README on what to edit."""
    from starsmith.scaffold import init_project

    proj = guard(lambda: init_project(folder, name=name, sample=sample))
    console.print(f"created project {proj.name!r} in {proj.root}")
    console.print(f"next: cd {folder} && starsmith build")


@app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="the demo project's folder (copied there once)")]
    = Path("retail-demo"),
    days: Annotated[int, typer.Option(help="days of history to land")] = 7,
    scale: Annotated[float, typer.Option(help="1 = 1k customers, 300 orders a day")] = 1.0,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 7,
    build_it: Annotated[bool, typer.Option("--build/--no-build", help="build after landing")]
    = True,
    in_process: Annotated[bool, typer.Option(help="build without Temporal")] = False,
    landing: Landing = None,
) -> None:
    """The demo retail warehouse as a project: copy it into FOLDER, land its data (in the
    project's landing zone, or --landing: a folder, s3://bucket/prefix, gs://bucket/prefix),
    build it."""
    from starsmith.demo_data import write_landing
    from starsmith.discover import load_catalogue
    from starsmith.loaders.store import landed_into
    from starsmith.scaffold import ensure_demo

    def go() -> int:
        proj = ensure_demo(folder)
        cfg = ProjectConfig.load(proj, landing=landing)
        sources = load_catalogue(proj).sources
        landed = landed_into(cfg.landing, lambda root: write_landing(
            root, days=days, scale=scale, seed=seed, sources=sources))
        console.print(f"landed {len(landed)} day(s), {landed[0]} to {landed[-1]}, in {cfg.landing}")
        if str(cfg.landing) != str(proj.landing):  # --landing: the project file still says its own
            console.print(f"later builds: --landing {cfg.landing} (or set landing = "
                          f"\"{cfg.landing}\" in {proj.config_file.name})")
        if not build_it:
            return 0
        choose_project(proj.root)
        return _build(cfg, None, None, None, None, False, in_process, None, False, 4)

    exit_now(guard(go))


def _dates(cfg: ProjectConfig, cat: Catalogue, models: list[str], day: str | None,
           start: str | None, end: str | None) -> list[date]:
    from starsmith.loaders.connect import open_warehouse
    from starsmith.orchestration.plan import date_range, pending_dates

    if day and (start or end):
        raise ConfigError("give either --date or --from/--to, not both")
    if day:
        return [parse_date(day, "--date")]  # type: ignore[list-item]
    if start or end:
        first, last = parse_date(start, "--from"), parse_date(end, "--to")
        if not (first and last) or first > last:
            raise ConfigError("--from and --to need both, with --from <= --to")
        return date_range(first, last)
    wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
    pending = pending_dates(cat, models, cfg.landing, wh)
    for line in pending.explain():
        console.print(escape(line))
    return pending.days


@app.command()
def build(
    select: Select = None,
    day: Annotated[str | None, typer.Option("--date", help="one logical date")] = None,
    start: Annotated[str | None, typer.Option("--from", help="first logical date")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last logical date")] = None,
    full_refresh: Annotated[bool, typer.Option(help="rebuild the tables from all history")] = False,
    accept_changes: Annotated[bool, typer.Option(
        help="apply a day that a source's guard refused (a snapshot closing many keys)")] = False,
    lease_wait: Annotated[float, typer.Option(
        help="seconds to wait for another build of this warehouse to finish")] = 0.0,
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

    def go() -> int:
        cfg = _config(landing, warehouse, target, memory_budget=memory_budget)
        return _build(cfg, select, day, start, end, full_refresh, in_process, address, no_wait,
                      max_parallel, accept_changes, lease_wait)

    exit_now(guard(go))


def _build(cfg: ProjectConfig, select: list[str] | None, day: str | None, start: str | None,
           end: str | None, full_refresh: bool, in_process: bool, address: str | None,
           no_wait: bool, max_parallel: int, accept_changes: bool = False,
           lease_wait: float = 0.0) -> int:
    """One build at a time per warehouse: a second one waits ``lease_wait`` seconds for the
    lease, then stops naming the build that holds it (loaders/lease.py)."""
    from starsmith.extract_cli import extract_for_build
    from starsmith.loaders.lease import warehouse_lease

    with warehouse_lease(cfg.warehouse_ref, wait=lease_wait, lock_dir=cfg.state / "leases",
                         holder="starsmith build" + (" --in-process" if in_process else "")):
        # database sources land the days to build first (a failed extract: that day waits)
        failed = 0 if full_refresh else extract_for_build(cfg, select, day, start, end)
        code = _build_leased(cfg, select, day, start, end, full_refresh, in_process, address,
                             no_wait, max_parallel, accept_changes)
        return code or (1 if failed else 0)


def _build_leased(cfg: ProjectConfig, select: list[str] | None, day: str | None,
                  start: str | None, end: str | None, full_refresh: bool, in_process: bool,
                  address: str | None, no_wait: bool, max_parallel: int,
                  accept_changes: bool) -> int:
    cat = _catalogue(cfg)
    models = cat.select(select)
    dates = _dates(cfg, cat, models, day, start, end)
    if full_refresh and not dates:  # rebuild as of the latest landed day
        from starsmith.orchestration.plan import landed_days

        landed = landed_days(cat, models, cfg.landing)
        if not landed:
            raise ConfigError("nothing has landed to rebuild from", where=str(cfg.landing),
                              fix="Land the sources' extracts (`starsmith plan` says which)")
        dates = [landed[-1]]
    if full_refresh and len(dates) > 1:  # one rebuild from history, as of the last day: not
        dates = dates[-1:]  # a rebuild for each day (which cost the square of the days)
    if (start or end) and not full_refresh:  # a range resumes: the days it already built stay
        dates = _not_built(cfg, cat, models, dates)
    forced = parse_date(day, "--date")
    plan = _plan(cfg, cat, models, dates, forced=forced, full_refresh=full_refresh,
                 accept_changes=accept_changes, max_parallel=max_parallel)
    for line in plan.notes:
        console.print(escape(line))
    if not plan.dates and not plan.phases:
        return _nothing_to_build(cfg, cat, models)
    if in_process:
        from starsmith.progress import run_in_process

        return run_in_process(plan, cfg, console, cat)
    from starsmith.temporal_cli import run_with_temporal

    # --from/--to runs as a backfill: one child workflow per day, and a re-run after a failure
    # resumes from the first day not built (days built in ranges run as one workflow).
    # Anything to restate runs inside the workflow, first.
    ranged = bool(start or end) and not full_refresh and not plan.ranges
    return run_with_temporal(plan, cfg, console, address=address, wait=not no_wait,
                             backfill=ranged, catalogue=cat,
                             forced=forced.isoformat() if forced else "")


def _nothing_to_build(cfg: ProjectConfig, cat: Catalogue, models: list[str]) -> int:
    """Exit 0 only when every landed day is built; an empty landing zone, or days that all
    wait, is something to fix: say what and exit non-zero."""
    from starsmith.orchestration.plan import needed_sources, readiness

    ready = readiness(cat, models, cfg.landing)
    if ready.ready:
        console.print("nothing to build: every landed day is built")
        return 0
    if ready.held:
        console.print(f"nothing could be built: {len(ready.held)} day(s) wait (see above)")
        return 1
    daily, other = needed_sources(cat, models)
    names = sorted(cat.sources[s].name for s in daily | other)
    raise DataError(
        f"nothing has landed for {', '.join(names) or 'these models'}",
        where=str(cfg.landing),
        fix="Land each source's extract in <landing>/<source>/date=YYYY-MM-DD/ (or point the "
            "project's `landing` at the right folder), then build again")


def _not_built(cfg: ProjectConfig, cat: Catalogue, models: list[str], dates: list[date]
               ) -> list[date]:
    """The days some selected model has not built (a range run again after a failure)."""
    from starsmith.loaders.connect import open_warehouse

    marks = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit).watermarks()
    built = {(m, d) for m, d in marks.select("model", "logical_date").iter_rows()}
    daily = [m for m in models if cat.models[m].inputs]
    return [d for d in dates if any((m, d) not in built for m in daily)]


def _plan(cfg: ProjectConfig, cat: Catalogue, models: list[str], dates: list[date], *,
          forced: date | None, full_refresh: bool = False, accept_changes: bool = False,
          max_parallel: int = 4, mark: bool = True) -> BuildPlan:
    """The plan with any restatement it needs first (orchestration/restate.py)."""
    from starsmith.loaders.connect import open_warehouse
    from starsmith.orchestration.restate import with_restatement

    wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
    return with_restatement(cat, models, dates, wh, cfg.landing, forced=forced,
                            full_refresh=full_refresh, accept_changes=accept_changes,
                            max_parallel=max_parallel, mark=mark)


@app.command()
def plan(select: Select = None,
         day: Annotated[str | None, typer.Option("--date")] = None,
         start: Annotated[str | None, typer.Option("--from")] = None,
         end: Annotated[str | None, typer.Option("--to")] = None,
         landing: Landing = None, warehouse: Warehouse = None, target: Target = None) -> None:
    """Show what a build would run: the days (and those a source holds back), the models in
    order with their strategy, and the models changed since their last build."""

    def go() -> None:
        from starsmith.changes import model_changes
        from starsmith.loaders.connect import open_warehouse

        cfg = _config(landing, warehouse, target)
        cat = _catalogue(cfg)
        models = cat.select(select)
        dates = _dates(cfg, cat, models, day, start, end)
        wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
        changes = model_changes(cat, models, wh)
        for line in _plan(cfg, cat, models, dates, forced=parse_date(day, "--date"),
                          mark=False).notes:
            console.print(escape(line))  # what a build runs first
        table = Table(title=f"project {cat.project}: {len(models)} model(s) x {len(dates)} "
                      "day(s): " + (_span(dates) or "nothing pending"))
        estimate = None
        if cfg.target == "bigquery" and dates:
            from starsmith.loaders.bigquery.estimate import estimate_bytes

            estimate = {n: estimate_bytes(wh, cat, cat.models[n], dates) for n in models}  # type: ignore[arg-type]
        for col in ("#", "model", "kind", "strategy", "inputs", *(["est. bytes"] if estimate else [])):
            table.add_column(col)
        for i, name in enumerate(models, 1):
            m = cat.models[name]
            table.add_row(str(i), name, m.kind.value, m.strategy.value,
                          escape(", ".join(m.input_names) or "-"),
                          *([f"{estimate[name]:,}"] if estimate else []))
        console.print(table)
        for change in changes:
            console.print(escape(f"changed: {change.model}: {'; '.join(change.reasons)}"
                                 + (f"; dependants: {', '.join(change.dependants)}"
                                    if change.dependants else "")))
            console.print(escape(f"  -> {change.advice()}"))
        if estimate:
            console.print(f"estimated scan: {sum(estimate.values()):,} bytes (BigQuery dry runs "
                          "of each step's reads; staging loads are free)")

    guard(go)


def _span(dates: list[date]) -> str:
    if len(dates) > 6:
        return f"{dates[0]} .. {dates[-1]}"
    return ", ".join(d.isoformat() for d in dates)


@app.command()
def show(model: str) -> None:
    """Show a model's schema, inputs and dependants."""
    def go() -> None:
        cat = _catalogue(_config())
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

    guard(go)


@app.command()
def worker(
    address: Annotated[str | None, typer.Option(envvar="TEMPORAL_ADDRESS")] = None,
    task_queue: Annotated[str, typer.Option(help="queue to poll")] = "starsmith",
    max_activities: Annotated[int, typer.Option(help="model steps at once on this worker")] = 4,
    metrics_port: Annotated[int, typer.Option(
        help="serve starsmith's per-model metrics (Prometheus text) on 127.0.0.1:PORT")] = 0,
    temporal_metrics_port: Annotated[int, typer.Option(
        help="serve the Temporal SDK's metrics on 127.0.0.1:PORT")] = 0,
) -> None:
    """Run a worker for the project (--project): several workers on one queue share a build.

    Each task carries the fingerprint of the project the build was planned with; a worker whose
    copy differs refuses it."""
    import asyncio

    from starsmith.orchestration.worker import make_worker
    from starsmith.temporal_cli import Connection, _connect

    conn = Connection.from_env(address)
    if conn.address is None:
        console.print("[bold red]error:[/] a worker needs --address or TEMPORAL_ADDRESS "
                      "(start one with `starsmith server`)")
        raise typer.Exit(2)
    cfg = guard(_config)
    cat = guard(lambda: _catalogue(cfg))

    async def go() -> None:
        from starsmith.orchestration.metrics import serve_metrics, temporal_runtime

        runtime = guard(lambda: temporal_runtime(temporal_metrics_port)) \
            if temporal_metrics_port else None
        if metrics_port:
            bound = guard(lambda: serve_metrics(metrics_port))
            console.print(f"metrics on http://127.0.0.1:{bound}/metrics")
        client = await _connect(conn.address, conn, runtime=runtime)
        assert cfg.project is not None
        made = make_worker(client, cfg.project, task_queue=task_queue,
                           max_activities=max_activities)
        console.print(f"worker for project {cat.project!r} ({cat.fingerprint}) polling "
                      f"{task_queue!r} at {conn.address}")
        await made.run()

    guard(lambda: asyncio.run(go()))


@app.command()
def server(port: int = 7233, ui_port: int = 8233) -> None:
    """Start the local Temporal server with its web UI (loopback only) until Ctrl-C."""
    from starsmith.orchestration.server import start_local_server

    cfg = guard(_config)
    srv = guard(lambda: start_local_server(cfg.state / "temporal", port=port, ui=True,
                                           ui_port=ui_port))
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

    exit_now(guard(lambda: show_status(_config(), console, run_id, address)))


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
    from starsmith.orchestration.plan import date_range, make_plan
    from starsmith.temporal_cli import run_with_temporal

    def go() -> int:
        cfg = _config(landing, warehouse, target)
        first, last = parse_date(start, "--from"), parse_date(end, "--to")
        assert first and last
        cat = _catalogue(cfg)
        plan = make_plan(cat, cat.select(select), date_range(first, last))
        return run_with_temporal(plan, cfg, console, address=address, backfill=True,
                                 catalogue=cat)

    exit_now(guard(go))


def _schedules() -> None:
    from starsmith.schedule_cli import app as schedule_app

    app.add_typer(schedule_app, name="schedule")


_schedules()


def _extract() -> None:
    from starsmith.extract_cli import extract

    app.command(name="extract")(extract)


_extract()


@app.command()
def docs(out: Annotated[Path | None, typer.Option(help="folder for the site [default: "
                                                      "<state>/docs]")] = None,
         warehouse: Warehouse = None, target: Target = None) -> None:
    """Write the project's docs for analysts: a static, offline site with the lineage graph and,
    per model, its columns, types, descriptions, SCD types, grain, checks and last build."""
    from starsmith.docs import write_docs
    from starsmith.loaders.connect import open_warehouse

    def go() -> object:
        cfg = _config(warehouse=warehouse, target=target)
        cat = _catalogue(cfg)
        wh = open_warehouse(cfg.warehouse_ref, memory_limit=cfg.memory_limit)
        return write_docs(cat, out or cfg.state / "docs", warehouse=wh)

    console.print(f"docs: {guard(go)}")


@app.command()
def report(out: Annotated[Path, typer.Option(help="folder for the site")] = Path("quality-report"),
           runs: Annotated[int, typer.Option(help="runs in the trend")] = 14,
           warehouse: Warehouse = None, target: Target = None) -> None:
    """Write the data-quality report (static HTML, works offline) from the results table."""
    from starsmith.loaders.connect import open_warehouse
    from starsmith.quality.report import write_report

    cfg = guard(lambda: _config(warehouse=warehouse, target=target))
    name = cfg.warehouse_ref.split("?")[0] if cfg.target == "bigquery" else cfg.warehouse.name
    index = guard(lambda: write_report(open_warehouse(cfg.warehouse_ref), out, runs=runs,
                                        name=name, catalogue=_catalogue(cfg)))
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
    from starsmith.loaders.connect import open_warehouse
    from starsmith.orchestration.plan import make_plan

    def go() -> int:
        cfg = _config(landing, warehouse, target)
        cat = _catalogue(cfg)
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

            return run_in_process(plan, cfg, console, cat)
        from starsmith.temporal_cli import run_with_temporal

        return run_with_temporal(plan, cfg, console, address=address, catalogue=cat)

    exit_now(guard(go))


def main() -> None:
    app(args=_project_first(sys.argv[1:]))


def _project_first(args: list[str]) -> list[str]:
    """Accept ``--project DIR`` anywhere (``starsmith plan --project DIR``), as users type it:
    typer takes the app's own options only before the command, so move it there."""
    out: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if arg == "--project" and i + 1 < len(args):
            moved += args[i:i + 2]
            i += 2
            continue
        if arg.startswith("--project="):
            moved.append(arg)
        else:
            out.append(arg)
        i += 1
    return moved + out
