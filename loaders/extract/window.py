"""The incremental window of one day's extract, and the watermark it continues from.

A day's extract lands the rows with ``low < cursor <= high``. ``low`` is the ``high`` of the
source's previous landed day, read from that day's ``_manifest.json``: the watermark lives in the
landing zone itself, beside the data it describes, so it survives a lost state folder and a
restored backup of the landing zone restores its watermarks with it.

``high`` is the largest cursor value present when the extract runs, capped at the end of the day
being extracted (for a timestamp or date cursor; in UTC) and at the ``low`` of any later day
already landed. Why not simply the day's end: an extract that runs before the day is over (or a
transaction that commits its 23:59 row at 00:05) would move the watermark past rows not yet
written, and the next day would start after them: lost. A watermark at the largest value seen
passes no row already committed. It can pass one committed later with a smaller cursor value:
a long transaction that stamps ``updated_at = now()`` (its start) and commits after a shorter
one, or a sequence ``id`` taken before another transaction's. Such a row is never extracted.
Use a cursor the database sets in commit order (a trigger stamping ``clock_timestamp()`` on
rows of short transactions, a logical-replication LSN), or a full snapshot where that matters
(README, "Sources extracted from PostgreSQL"). Why the cap: a run that catches up several days
(after an outage) lands each day's own changes in its own folder instead of everything in the
first; and a day extracted into a gap between landed days cannot overlap its neighbour.

Re-running a landed day (``--force``) reuses the window its manifest records: the same bounds,
so the same rows (an ``id`` cursor) or the rows still in that window (an ``updated_at`` cursor
whose rows changed since moved on to a later window), and never rows a later day holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from starsmith.contract import Source
from starsmith.errors import ConfigError
from starsmith.loaders.landed import MANIFEST, landed
from starsmith.loaders.store import Landing

KINDS = ("timestamptz", "timestamp", "date", "integer")


def cursor_kind(source: Source, cursor: str, found: pa.DataType) -> str:
    """What kind of value the cursor holds; only ordered, immutable kinds make a watermark."""
    if pa.types.is_timestamp(found):
        return "timestamptz" if found.tz else "timestamp"
    if pa.types.is_date(found):
        return "date"
    if pa.types.is_integer(found):
        return "integer"
    raise ConfigError(f"source {source.name!r}'s cursor {cursor!r} is {found}: a cursor must be "
                      "a timestamp, a date or an integer", where=f"source {source.name}",
                      fix="Use an updated_at timestamp or an ever-growing id, or cursor=None "
                          "for a full snapshot every day")


def _encode(value: Any) -> Any:
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    return value


def _decode(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "integer":
        return int(value)
    if kind == "date":
        return date.fromisoformat(str(value))
    parsed = datetime.fromisoformat(str(value))
    if kind == "timestamptz":
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return parsed.replace(tzinfo=None)


def literal(kind: str, value: Any) -> str:
    """A SQL literal of a watermark value. Only values decoded here (a datetime, date or int,
    never text from a user) reach this, so formatting them is safe; literals rather than bound
    parameters because ADBC's PostgreSQL driver streams a query's result with COPY only when
    it has no parameters (with one it returns a single batch of the whole result)."""
    if kind == "integer":
        return str(int(value))
    if kind == "date":
        return f"DATE '{value.isoformat()}'"
    if kind == "timestamptz":
        return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"
    return f"TIMESTAMP '{value.isoformat()}'"


@dataclass(frozen=True)
class Window:
    """``cursor`` in ``(low, high]``; ``low`` None: from the first row."""

    cursor: str
    kind: str
    low: Any
    high: Any

    @property
    def empty(self) -> bool:
        return self.high is None or (self.low is not None and self.high <= self.low)

    def to_json(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "type": self.kind, "low": _encode(self.low),
                "high": _encode(self.high)}

    @classmethod
    def from_json(cls, raw: object) -> Window | None:
        if not isinstance(raw, dict) or raw.get("type") not in KINDS or not raw.get("cursor"):
            return None
        kind = str(raw["type"])
        return cls(str(raw["cursor"]), kind, _decode(kind, raw.get("low")),
                   _decode(kind, raw.get("high")))

    def describe(self) -> str:
        low = "the first row" if self.low is None else _encode(self.low)
        return f"{self.cursor} in ({low}, {_encode(self.high)}]"

    def where(self, column: str) -> str:
        """The SQL condition selecting the window's rows."""
        upper = f"{column} <= {literal(self.kind, self.high)}"
        if self.low is None:
            return upper
        return f"{column} > {literal(self.kind, self.low)} AND {upper}"


def recorded(folder: Landing) -> Window | None:
    """The window a landed day's manifest records (None: not an extract, or unreadable)."""
    try:
        found = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    return Window.from_json(found.get("extract")) if isinstance(found, dict) else None


def neighbours(landing: Path, source: Source, day: date, cursor: str
               ) -> tuple[Window | None, Window | None]:
    """The windows of the nearest complete days before and after ``day`` extracted with this
    cursor (days landed by other means, or with another cursor, do not count)."""
    before: Window | None = None
    after: Window | None = None
    for found in landed(landing, source):
        if not found.complete or found.day == day:
            continue
        window = recorded(found.folder)
        if window is None or window.cursor != cursor:
            continue
        if found.day < day:
            before = window
        elif after is None:
            after = window
    return before, after


def day_end(kind: str, day: date) -> Any:
    """The first value after ``day`` (UTC for a timestamp cursor); None for an integer."""
    nxt = day + timedelta(days=1)
    if kind == "timestamptz":
        return datetime(nxt.year, nxt.month, nxt.day, tzinfo=UTC)
    if kind == "timestamp":
        return datetime(nxt.year, nxt.month, nxt.day)
    if kind == "date":
        return nxt
    return None
