"""starsmith: star-schema warehouses from Polars models, built by Temporal into DuckDB or BigQuery.

The public API is one import::

    from starsmith import Model, Input, Source, Column, DimensionSpec, FactSpec, Expect

Names are loaded on first use (PEP 562), so ``import starsmith`` stays cheap for the CLI.

Importing this package also configures the process's Polars allocator, which must happen before
Polars is first imported (jemalloc reads its settings once, at its first allocation): every entry
point (the CLI, the worker, a build step) imports this package first.

Why: Polars sets jemalloc to keep freed pages 0.5 s, then 1 s more ("muzzy"), and jemalloc
purges only when it is next called, so a step's transient frames (the SCD builder's joins and
sorts) stayed resident through its publish. A background thread that purges them, with no
muzzy stage, measured 733 -> 606 MiB peak on a 10M-row dimension's night at the same step time
(``benchmarks/scd2_merge.py``); purging after 0.1 s saved 70 MiB more but cost 20% in fresh-page
faults, as the builder re-faulted pages it had just freed. Pages are kept 3 s: a star's full
build, which frees and takes again frames of the same sizes batch after batch, spent ~2.8 s of
its ~7 s in the kernel, a third of it faulting in pages purged after 0.4 s; with 3 s it took
0.3 s less (0.6 s less for a catch-up) for 80-220 MiB more at its peak; the 10M-row
dimension's night peaked at 623 against 590 MiB (``scd2_merge.py``) and the snapshot step at
1.31x plain SQL's peak against 1.29x (``scd2_snapshot.py``; its goal is 1.5x). Polars
appends this variable to its own settings (the documented override, pola-rs PR 21829); a value
already in the environment wins over ours, and once Polars is loaded the variable is Polars'
own, so it is left alone.
"""

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

POLARS_ALLOCATOR = "background_thread:true,dirty_decay_ms:3000,muzzy_decay_ms:0"
if "polars" not in sys.modules:
    os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR)

_API = {
    "starsmith.contract": ("BuildContext", "Cadence", "Column", "Completion", "Guard", "Input",
                           "Kind", "Model", "Source", "Strategy", "Window", "dimension_columns"),
    "starsmith.dimensions": ("ChangeDetection", "DeletePolicy", "DimensionSpec",
                             "DuplicatePolicy", "LatePolicy", "SCDType"),
    "starsmith.dimensions.date_dim": ("DATE_SCHEMA", "date_dimension", "date_key"),
    "starsmith.facts.spec": ("Additivity", "FactSpec", "FactType", "KeyLookup", "MissingKey"),
    "starsmith.quality.expect": ("Expect",),
    "starsmith.quality.checks": ("Freshness", "References", "Volume"),
    "starsmith.quality.rules": ("not_in", "quarantine_when"),
    "starsmith.errors": ("ConfigError", "DataError", "ModelError", "StarsmithError"),
    "starsmith.project": ("Project", "load_project"),
    "starsmith.discover": ("load_catalogue",),
    "starsmith.loaders.extract.spec": ("Postgres",),
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = [
    "DATE_SCHEMA",
    "Additivity",
    "BuildContext",
    "Cadence",
    "ChangeDetection",
    "Column",
    "Completion",
    "ConfigError",
    "DataError",
    "DeletePolicy",
    "DimensionSpec",
    "DuplicatePolicy",
    "Expect",
    "FactSpec",
    "FactType",
    "Freshness",
    "Guard",
    "Input",
    "KeyLookup",
    "Kind",
    "LatePolicy",
    "MissingKey",
    "Model",
    "ModelError",
    "Postgres",
    "Project",
    "References",
    "SCDType",
    "Source",
    "StarsmithError",
    "Strategy",
    "Volume",
    "Window",
    "date_dimension",
    "date_key",
    "dimension_columns",
    "load_catalogue",
    "load_project",
    "not_in",
    "quarantine_when",
]

if TYPE_CHECKING:
    from starsmith.contract import (
        BuildContext,
        Cadence,
        Column,
        Completion,
        Guard,
        Input,
        Kind,
        Model,
        Source,
        Strategy,
        Window,
        dimension_columns,
    )
    from starsmith.dimensions import (
        ChangeDetection,
        DeletePolicy,
        DimensionSpec,
        DuplicatePolicy,
        LatePolicy,
        SCDType,
    )
    from starsmith.dimensions.date_dim import DATE_SCHEMA, date_dimension, date_key
    from starsmith.discover import load_catalogue
    from starsmith.errors import ConfigError, DataError, ModelError, StarsmithError
    from starsmith.facts.spec import Additivity, FactSpec, FactType, KeyLookup, MissingKey
    from starsmith.loaders.extract.spec import Postgres
    from starsmith.project import Project, load_project
    from starsmith.quality.checks import Freshness, References, Volume
    from starsmith.quality.expect import Expect
    from starsmith.quality.rules import not_in, quarantine_when


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'starsmith' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
