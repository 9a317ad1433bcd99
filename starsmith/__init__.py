"""starsmith: the CLI and project configuration, wiring the warehouse's packages together.

Importing it also configures the process's Polars allocator, which must happen before Polars is
first imported (jemalloc reads its settings once, at its first allocation): every entry point
(the CLI, the worker, a build step through ``orchestration``) imports this package first.

Why: Polars sets jemalloc to keep freed pages 0.5 s (then 1 s more, "muzzy"), and jemalloc
purges only when it is next called, so a step's transient frames (the SCD builder's joins and
sorts) stayed resident through its publish. Purging after 100 ms on a background thread
measured 692 -> 534 MiB peak on a 10M-row dimension's night, and no slower
(``benchmarks/scd2_merge.py``); purging at once, without the thread, cost 25% in fresh-page
faults. Polars appends this variable to its own settings (the documented override, pola-rs
PR 21829); a value already in the environment wins over ours, and once Polars is loaded the
variable is Polars' own, so it is left alone.
"""

import os
import sys

POLARS_ALLOCATOR = "background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0"
if "polars" not in sys.modules:
    os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR)
