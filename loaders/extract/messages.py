"""What crosses Temporal for an extract: names, dates, paths and counts (no Polars, no data),
so the workflow sandbox can load it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractRequest:
    """Land one source's extract for one day."""

    source: str
    day: str  # ISO date
    landing: str
    project: str = ""  # the project's name, for messages
    fingerprint: str = ""  # the project fingerprint the build was planned with
    force: bool = False  # extract again a day already landed


@dataclass(frozen=True)
class ExtractResult:
    source: str
    day: str
    status: str  # "landed" | "already landed"
    rows: int = 0
    dead_letters: int = 0
    window: str = ""  # the incremental window, for messages: "updated_at in (low, high]"
    duration_s: float = 0.0

    def describe(self) -> str:
        if self.status != "landed":
            return f"{self.source} {self.day}: {self.status}"
        line = f"{self.source} {self.day}: landed {self.rows:,} row(s)"
        if self.window:
            line += f", {self.window}"
        if self.dead_letters:
            line += f"; {self.dead_letters:,} dead letter(s) in _dead_letter.parquet"
        return line + f" ({self.duration_s:.1f} s)"
