"""One gate per warehouse file in this process: connections pass it together, a rewrite of the
file (``upkeep.py``) only alone.

A rewrite copies the file and renames the copy over it. A connection opened in this process
between the copy and the rename would write into the old file, which the rename then drops: its
commit lost without an error. File locks cannot see that (POSIX record locks never conflict
within one process), so every connection of a file holds its gate open, and the rewrite takes
the gate only when no connection is open, holding later ones back until the new file is in
place. Another process is kept out by DuckDB's own file lock and the rewrite's (``upkeep.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FileGate:
    """Many connections at once, or one rewrite."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = 0
        self._rewriting = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held for a connection's life; waits while the file is being rewritten."""
        with self._cond:
            while self._rewriting:
                self._cond.wait()
            self._open += 1
        try:
            yield
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[bool]:
        """True (and the gate held) when no connection is open; False at once otherwise: a
        rewrite never waits for steps, it is skipped and tried after the next build."""
        with self._cond:
            free = not self._open and not self._rewriting
            if free:
                self._rewriting = True
        try:
            yield free
        finally:
            if free:
                with self._cond:
                    self._rewriting = False
                    self._cond.notify_all()


_GATES: dict[str, FileGate] = {}
_GATES_LOCK = threading.Lock()


def file_gate(path: Path) -> FileGate:
    """The gate of the file at ``path`` (one per file and process)."""
    key = str(path.resolve())
    with _GATES_LOCK:
        return _GATES.setdefault(key, FileGate())
