"""DuckDB calls that hand it Python objects, kept working while a Temporal workflow task runs.

The cause of the ``std::bad_cast`` in ~1% of Temporal demo builds: while a workflow task runs,
Temporal's workflow sandbox puts its own mapping in the global ``sys.modules``
(``temporalio.worker.workflow_sandbox._importer._ThreadLocalSysModules``: a ``MutableMapping``,
not a ``dict``; ``Importer.applied`` warns that it alters global state). Every thread sees it,
the worker's activity threads too. duckdb-python 2 casts ``sys.modules`` to a ``dict`` whenever
it classifies a Python object: ``register``, ``from_arrow``, and the bind of any statement that
scans a registered Arrow table (``nb::cast<nb::dict>(sys.modules)`` in ``ModuleIsLoaded``,
``src/include/duckdb_python/pyconnection/pyconnection.hpp`` upstream; the native stack of a demo
build's failure ends in ``DuckDBPySeam::RegisterSource``). The cast fails: ``register`` raises
``RuntimeError: std::bad_cast``, a statement ``_duckdb.Error: std::bad_cast``, and a transaction
it was part of is aborted. duckdb-python 1.5 (pybind11) asked the mapping's own ``__contains__``;
the failure came with the nanobind port. No DuckDB or duckdb-python issue reports it (searched
Dec 2026). ``tests/test_duckdb_threads.py`` reproduces it in seconds.

A swap lasts one workflow activation (milliseconds) and a failed call registered or changed
nothing, so a call waits until ``sys.modules`` is a ``dict`` again and is retried on a
``std::bad_cast`` (a publish as a whole: its transaction was rolled back). Outside a Temporal
worker ``sys.modules`` is always a ``dict``: one type check per call. Running the workflows
unsandboxed would remove the cause (``@workflow.defn(sandboxed=False)``) at the cost of the
sandbox's determinism checks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

from starsmith.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
BAD_CAST = "std::bad_cast"
ATTEMPTS = 10  # a failure the swap did not cause repeats each time: raised after these
SWAP_WAIT_S = 5.0  # longest wait for one swap to end; a workflow activation takes milliseconds
BACKOFF_S = 0.002  # doubled per attempt, at most MAX_BACKOFF_S: off the rhythm of activations
MAX_BACKOFF_S = 0.1
_POLL_S = 0.001


def modules_swapped() -> bool:
    """Is ``sys.modules`` something else than the interpreter's dict (the sandbox's mapping)?"""
    return type(sys.modules) is not dict


def wait_for_plain_modules(limit: float = SWAP_WAIT_S) -> bool:
    """Wait until ``sys.modules`` is a dict again, at most ``limit`` seconds; False if it is
    still swapped (the call then goes ahead, and is retried if it fails)."""
    deadline = time.monotonic() + limit
    while modules_swapped():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def is_bad_cast(err: BaseException) -> bool:
    """A failed nanobind cast inside duckdb-python (``std::bad_cast``), as the swap causes."""
    return isinstance(err, duckdb.Error | RuntimeError) and BAD_CAST in str(err)


def with_python_objects(call: Callable[[], T], what: str, *, attempts: int = ATTEMPTS) -> T:
    """Run ``call`` (DuckDB work that registers or scans Python objects) outside a sandbox
    swap of ``sys.modules``; a ``std::bad_cast`` is retried, ``attempts`` times in all.

    ``call`` must be safe to repeat after it failed: a register of the same name, a read, or a
    publish whose failed transaction was rolled back."""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 2), MAX_BACKOFF_S))
        if modules_swapped():
            clock = time.monotonic()
            back = wait_for_plain_modules()
            log.debug("%s: sys.modules swapped by Temporal's workflow sandbox; waited %.1f ms%s",
                      what, (time.monotonic() - clock) * 1000, "" if back else ", still swapped")
        try:
            return call()
        except (duckdb.Error, RuntimeError) as err:
            if not is_bad_cast(err) or attempt == attempts:
                raise
            log.debug("%s: %s (sys.modules swapped by Temporal's workflow sandbox, still: %s); "
                      "attempt %d of %d, again", what, err, modules_swapped(), attempt, attempts)
    raise AssertionError("unreachable: the last attempt returns or raises")
