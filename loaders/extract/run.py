"""Which extracts a build needs, and running them with retries and exponential backoff.

A build extracts, before it plans, every day it is about to build (``--date D``, a
``--from/--to`` range, a schedule's date, else today) for each database source its models read,
unless the day has landed already. ``starsmith build`` runs them here, before it plans (the plan
is made from what has landed), retrying a RetryableError with exponential backoff (1 s,
doubling, at most 30 s apart, 5 attempts); a ConfigError or DataError is not retried. A
scheduled run's workflow runs them as ``extract_source`` activities, retried by Temporal
(orchestration/workflows.py: 8 attempts, up to 2 min apart, for a database restarting at night).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TypeVar

from starsmith.contract import Source
from starsmith.errors import ConfigError, StarsmithError
from starsmith.log import get_logger
from starsmith.registry import Catalogue

log = get_logger(__name__)
T = TypeVar("T")

ATTEMPTS = 5
INITIAL_S = 1.0
BACKOFF = 2.0
MAX_INTERVAL_S = 30.0


def extracting(cat: Catalogue, models: Iterable[str] | None = None,
               names: Iterable[str] | None = None) -> list[Source]:
    """The database sources: those ``names`` (each must be one), else those the ``models`` read
    (through any chain of models), else all of them; in name order."""
    if names:
        chosen = []
        for name in names:
            source = cat.sources.get(name) or cat.sources.get(f"landing.{name}")
            if source is None:
                known = ", ".join(sorted(s.name for s in cat.sources.values())) or "none"
                raise ConfigError(f"no source named {name!r} (sources: {known})",
                                  fix="Pass --source with a declared source's name")
            if source.extract is None:
                raise ConfigError(f"source {source.name!r} is not extracted from a database",
                                  where=f"source {source.name}",
                                  fix="Declare extract=Postgres(...) on it, or land its files")
            chosen.append(source)
        return sorted(set(chosen), key=lambda s: s.name)
    if models is not None:
        from starsmith.orchestration.plan import needed_sources

        daily, other = needed_sources(cat, list(models))
        keys: Iterable[str] = daily | other
    else:
        keys = cat.sources
    return sorted({cat.sources[k] for k in keys if cat.sources[k].extract is not None},
                  key=lambda s: s.name)


def due(sources: Iterable[Source], days: Iterable[date], landing: Path
        ) -> list[tuple[Source, date]]:
    """The (source, day) extracts not landed yet, days in order."""
    from starsmith.loaders.extract.land import is_landed

    return [(s, d) for d in sorted(set(days)) for s in sources
            if not is_landed(landing, s, d)]


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried after a RetryableError with exponential backoff."""
    delay = INITIAL_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StarsmithError as err:
            if not err.retryable or attempt == attempts:
                raise
            log.warning("%s failed (attempt %d of %d), retrying in %.0f s: %s", what, attempt,
                        attempts, delay, err)
            sleep(delay)
            delay = min(delay * BACKOFF, MAX_INTERVAL_S)
    raise AssertionError("unreachable")  # pragma: no cover


def extract_key(source: Source, day: date) -> str:
    return f"{source.name} {day}"
