"""starsmith: the CLI and project configuration, wiring the warehouse's packages together.

Importing it also configures the process's Polars allocator, which must happen before Polars is
first imported (jemalloc reads its settings once, at its first allocation): every entry point
(the CLI, the worker, a build step through ``orchestration``) imports this package first.

Why: Polars sets jemalloc to keep freed pages 0.5 s, then 1 s more ("muzzy"), and jemalloc
purges only when it is next called, so a step's transient frames (the SCD builder's joins and
sorts) stayed resident through its publish. A background thread that purges them after 0.4 s,
with no muzzy stage, measured 733 -> 606 MiB peak on a 10M-row dimension's night at the same
step time (``benchmarks/scd2_merge.py``); purging after 0.1 s saved 70 MiB more but cost 20% in
fresh-page faults, as the builder re-faulted pages it had just freed. Polars appends this
variable to its own settings (the documented override, pola-rs PR 21829); a value already in
the environment wins over ours, and once Polars is loaded the variable is Polars' own, so it is
left alone.
"""

import os
import sys

POLARS_ALLOCATOR = "background_thread:true,dirty_decay_ms:400,muzzy_decay_ms:0"
if "polars" not in sys.modules:
    os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR)
