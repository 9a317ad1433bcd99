"""The end of a build, for the person who reads it the next morning: one table of steps, then
one line of totals (built, warned, failed, skipped; rows written and quarantined; how long; which
warehouse), and for each failure one line saying where it failed and what to do."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rich.markup import escape
from rich.table import Table

from starsmith.config import ProjectConfig
from starsmith.orchestration.messages import WARNINGS, DayOutcome


@dataclass(frozen=True)
class Totals:
    """What a build did, counted."""

    built: int = 0
    warned: int = 0
    failed: int = 0
    skipped: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    seconds: float = 0.0
    warehouse: str = ""
    failures: tuple[tuple[str, str, str], ...] = field(default=())  # (day, model, message)

    @property
    def status(self) -> str:
        return "failed" if self.failed or self.skipped else "warning" if self.warned else "success"

    def line(self) -> str:
        return (f"{self.status}: {self.built} step(s) built ({self.warned} with warnings), "
                f"{self.failed} failed, {self.skipped} skipped; {self.rows_written:,} rows "
                f"written, {self.rows_quarantined:,} quarantined; {self.seconds:.1f} s; "
                f"warehouse {self.warehouse}")


def totals(days: Sequence[DayOutcome], not_started: Iterable[str] = (), *, seconds: float,
           warehouse: str) -> Totals:
    built = [r for d in days for r in d.built]
    failures = tuple((d.logical_date, m, _first_line(why)) for d in days
                     for m, why in d.failed.items())
    skipped = sum(len(d.skipped) for d in days) + len(list(not_started))
    return Totals(
        built=len(built), warned=sum(1 for r in built if r.details.get(WARNINGS)),
        failed=len(failures), skipped=skipped,
        rows_written=sum(r.rows_written for r in built),
        rows_quarantined=sum(r.rows_quarantined for r in built),
        seconds=seconds, warehouse=warehouse, failures=failures)


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
            rows.append((o.logical_date, r.model, "warned" if warned else "built",
                         f"{r.rows_written} written, {r.rows_quarantined} quarantined"
                         + (f", {warned} warning(s)" if warned else "")))
        rows += [(o.logical_date, m, "failed", _first_line(why)) for m, why in o.failed.items()]
        rows += [(o.logical_date, m, "skipped", f"input {why} did not build")
                 for m, why in o.skipped.items()]
    rows += [(d, "-", "skipped", "an earlier day did not build") for d in not_started]
    return rows


def notify_build(cfg: ProjectConfig, project: str, days: Sequence[DayOutcome],
                 not_started: Sequence[str], started: datetime) -> None:
    """Tell the project's webhook / e-mail about a build that failed or warned (its settings
    decide; starsmith/notify.py); a delivery failure is logged, never raised."""
    from starsmith.notify import BuildSummary, notify
    from starsmith.orchestration.messages import BuildReport

    settings = cfg.project.notify if cfg.project is not None else None
    if settings is None:
        return
    warned = [(d.logical_date, r.model) for d in days for r in d.built if r.details.get(WARNINGS)]
    summary = BuildSummary.from_report(
        BuildReport(list(days), list(not_started)), project=project, warehouse=cfg.warehouse_ref,
        started=started, finished=datetime.now(), report_path=str(cfg.state / "quality-report"),
        warned=warned)
    notify(summary, settings)
