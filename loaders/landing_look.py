"""One look at a source's landings per build step's day, shared by everything the step asks.

A build asks about the same thousands of landed days many times: every step of a full refresh
lists every source to find the days the catalogue is ready on, and a staging model lists its
source again to read it and to record what it read. Each listing checks every day against the
file system again (two ``stat`` a day: ~11 ms for 2,406 days once they are remembered, ~115 ms
the first time), in Python, holding the interpreter's lock that the steps running beside it
need; and steps that start together all list at the same moment, each paying the first look.

Within :func:`one_look` (``run_step`` enters it with its build run's job key and logical date) a
source is listed once: the first caller lists it, callers at the same moment wait for that
listing, later ones reuse it. The step, and the steps of the same run and day beside it, then
judge one landing zone, as the run's plan did; a day that lands or changes meanwhile is the next
build's (its changed signature makes that build read it again, see ``landed.fingerprint``).
Outside a scope every call looks again, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

T = TypeVar("T")

SCOPES_KEPT = 8  # build runs' days whose listings a process keeps (a worker serves many)
_SCOPE: ContextVar[str] = ContextVar("starsmith_landing_look", default="")
_LOCK = threading.Lock()


class _Look(Generic[T]):
    """One listing, made once: its lock is held while it is made, so others wait for it."""

    __slots__ = ("found", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: list[T] | None = None


_LOOKS: dict[str, dict[Hashable, _Look[object]]] = {}  # by scope, oldest first


@contextmanager
def one_look(scope: str) -> Iterator[None]:
    """List each source once within this block (and in the blocks of the same ``scope`` in
    other threads); ``""``: no sharing, every call looks."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scope_of(job_key: str, logical_date: str, first_date: str = "") -> str:
    """The scope of a step: its build run (job key) and the day (or range) it builds; none
    without a job key (a step run on its own shares nothing)."""
    return f"{job_key}|{first_date}|{logical_date}" if job_key else ""


def looked(key: Hashable, look: Callable[[], list[T]]) -> list[T]:
    """``look()``, or within a scope the list it gave the first time ``key`` was asked."""
    scope = _SCOPE.get()
    if not scope:
        return look()
    with _LOCK:
        looks = _LOOKS.get(scope)
        if looks is None:
            while len(_LOOKS) >= SCOPES_KEPT:
                del _LOOKS[next(iter(_LOOKS))]
            looks = _LOOKS[scope] = {}
        entry = looks.setdefault(key, _Look())
    with entry.lock:  # a failed look leaves nothing behind: the next caller looks again
        if entry.found is None:
            entry.found = list(look())
        return list(entry.found)  # type: ignore[arg-type]
