"""The messages that cross Temporal: small frozen dataclasses of names, dates, paths and counts.

Kept free of Polars and DuckDB imports so the workflow sandbox can load them (polars at a
workflow module's top level fails validation, duckdb aborts the worker). Nothing here ever holds
table data: a step reads and writes by reference, so payloads stay far below Temporal's limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta


@dataclass(frozen=True)
class Paths:
    """Where a worker finds the landing zone and the warehouse (a folder or a URI)."""

    landing: str
    warehouse: str
    memory_limit: str = "4GB"
    staging: str = ""  # the write-audit-publish staging folder; default: beside the warehouse
    memory_budget: str = ""  # a step's peak memory, e.g. "2GB" (orchestration/budget.py)


@dataclass(frozen=True)
class BuildRequest:
    """What a user asked for; the plan activity turns it into a plan."""

    paths: Paths
    select: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()  # empty: every landed day not yet built
    full_refresh: bool = False
    max_parallel: int = 4
    until: str = ""  # with no dates: only days up to this one (a schedule's logical date)
    project: str = ""  # the project's name, for messages
    fingerprint: str = ""  # the client's project fingerprint; a worker with another refuses
    accept_changes: bool = False  # let a day through the sources' guards (--accept-changes)
    forced: str = ""  # the day of `build --date D`: older than the latest build, it restates


@dataclass(frozen=True)
class PlannedModel:
    name: str
    strategy: str
    kind: str
    needs: tuple[str, ...]  # upstream models within this plan


@dataclass(frozen=True)
class BuildPlan:
    dates: tuple[str, ...]
    models: tuple[PlannedModel, ...]
    full_refresh: bool = False
    max_parallel: int = 4
    run_ids: dict[str, str] = field(default_factory=dict)
    accept_changes: bool = False
    # A restatement to run first, in order (orchestration/restate.py), and what it is for.
    phases: tuple[BuildPlan, ...] = ()
    notes: tuple[str, ...] = ()
    # A catch-up in ranges (orchestration/ranges.py): a date of ``dates`` that ends a range,
    # and the range's first day; each model is built once for the range.
    ranges: dict[str, str] = field(default_factory=dict)

    def all_days(self) -> tuple[str, ...]:
        """Every day the plan builds, a range's days included (what a request re-plans)."""
        out: list[str] = []
        for day in self.dates:
            if day in self.ranges:
                first, last = date.fromisoformat(self.ranges[day]), date.fromisoformat(day)
                out += [(first + timedelta(days=i)).isoformat()
                        for i in range((last - first).days + 1)]
            else:
                out.append(day)
        return tuple(out)


@dataclass(frozen=True)
class StepRequest:
    """Everything a worker needs to build one model for one logical date: references only."""

    model: str
    logical_date: str
    run_id: str
    landing: str
    warehouse: str
    full_refresh: bool = False
    memory_limit: str = "4GB"
    staging: str = ""
    job_key: str = ""  # one per build run: BigQuery job ids repeat within a run, never across
    memory_budget: str = ""  # empty: no budget; fact rebuilds go batch_days at a time
    project: str = ""  # the project's name, for messages
    fingerprint: str = ""  # the project fingerprint the build was planned with
    accept_changes: bool = False  # a change beyond a source's guard is applied, not refused
    first_date: str = ""  # a range's first day: the step builds first_date..logical_date


WARNINGS = "quality_warnings"  # a step's details key: how many rules of severity warn failed


@dataclass(frozen=True)
class StepResult:
    model: str
    logical_date: str
    status: str
    rows_read: int = 0
    rows_written: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_closed: int = 0
    rows_quarantined: int = 0
    duration_s: float = 0.0
    details: dict[str, int] = field(default_factory=dict)


@dataclass
class DayOutcome:
    logical_date: str
    built: list[StepResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # model -> the failed input
    first_date: str = ""  # a range's first day (logical_date is its last)

    @property
    def label(self) -> str:
        """The day, or the range of days, as people read it."""
        return f"{self.first_date}..{self.logical_date}" if self.first_date else self.logical_date

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


@dataclass(frozen=True)
class Finished:
    """A scheduled build's end, for its notification (no CLI waits for a schedule's run)."""

    report: BuildReport
    warehouse: str
    started: str  # ISO timestamps: workflow time, deterministic
    finished: str


@dataclass
class BuildReport:
    days: list[DayOutcome] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)  # days left after a failed day

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.days) and not self.not_started


def dependants(plan: BuildPlan, name: str) -> list[str]:
    """Models of the plan that read ``name`` directly or through others."""
    out: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for m in plan.models:
            if current in m.needs and m.name not in out:
                out.append(m.name)
                frontier.append(m.name)
    return out
