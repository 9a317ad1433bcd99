"""The end of a build, for the person who reads it the next morning: one table of steps, then
one line of totals (built, warned, failed, skipped; rows written and quarantined; how long; which
warehouse), and for each failure one line saying where it failed and what to do."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from rich.markup import escape
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.notify import BuildSummary
from starsmith.orchestration.messages import WARNINGS, DayOutcome


def summarise(cfg: ProjectConfig, project: str, days: Sequence[DayOutcome],
              not_started: Sequence[str], started: datetime) -> BuildSummary:
    """The build's summary (starsmith/notify.py): what the console's last line says and what a
    notification carries, counted once. A step warns when a rule of severity warn failed or it
    quarantined rows."""
    from starsmith.orchestration.messages import BuildReport

    warned = [(d.logical_date, r.model) for d in days for r in d.built if r.details.get(WARNINGS)]
    return BuildSummary.from_report(
        BuildReport(list(days), list(not_started)), project=project, warehouse=cfg.warehouse_ref,
        started=started, finished=datetime.now(), report_path=str(cfg.state / "quality-report"),
        warned=warned)


def line(summary: BuildSummary) -> str:
    """The console's last line: status, steps, rows, time, warehouse."""
    return (f"{summary.status}: {summary.built} step(s) built ({summary.warned} with warnings), "
            f"{summary.failed} failed, {summary.skipped} skipped; {summary.rows_written:,} rows "
            f"written, {summary.rows_quarantined:,} quarantined; {summary.duration_s:.1f} s; "
            f"warehouse {summary.warehouse}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "failed"


def summary_table(rows: Iterable[tuple[str, str, str, str]]) -> Table:
    """(logical date, model, state, detail) rows as one table; data is never read as markup
    (a reason such as ``[product_id=5]`` is shown as written)."""
    table = Table(title="build result")
    for col in ("date", "model", "state", "detail"):
        table.add_column(col)
    colours = {"built": "green", "failed": "red", "skipped": "yellow", "warned": "yellow"}
    for day, model, state, detail in rows:
        table.add_row(escape(day), escape(model), f"[{colours.get(state, 'white')}]{state}[/]",
                      escape(detail))
    return table


def outcome_rows(days: Sequence[DayOutcome], not_started: Iterable[str] = ()
                 ) -> list[tuple[str, str, str, str]]:
    rows = []
    for o in days:
        for r in o.built:
            warned = r.details.get(WARNINGS, 0)
            rows.append((o.label, r.model, "warned" if warned else "built",
                         f"{r.rows_written} written, {r.rows_quarantined} quarantined"
                         + (f", {warned} warning(s)" if warned else "")))
        rows += [(o.label, m, "failed", _first_line(why)) for m, why in o.failed.items()]
        rows += [(o.label, m, "skipped", f"input {why} did not build")
                 for m, why in o.skipped.items()]
    rows += [(d, "-", "skipped", "an earlier day did not build") for d in not_started]
    return rows


def finish(cfg: ProjectConfig, project: str, days: Sequence[DayOutcome],
           not_started: Sequence[str], started: datetime) -> str:
    """Summarise a build, tell the project's webhook / e-mail if it failed or warned (its
    settings decide; a delivery failure is logged, never raised), and return the last line."""
    from starsmith.notify import notify

    summary = summarise(cfg, project, days, not_started, started)
    if cfg.project is not None:
        notify(summary, cfg.project.notify)
    return line(summary)
