"""A step's memory budget: how many fact partitions to build at once, and DuckDB's share.

Polars' streaming engine alone did not keep a large join under a cap (FACTS.md), so the budget
is kept the way a database keeps a work_mem: by the size of the unit of work. A fact rebuild is
split into batches of event-date partitions, each built, keyed and staged before the next is
read, so the peak is one batch's working set plus what the process already holds.

The batch size is measured, not guessed: the first batch is one partition (a probe); its input
and output sizes, times the working-set factor measured by ``benchmarks/fact_incremental.py``,
give the cost of a partition, and the remaining partitions are grouped to fit what is left of
the budget. A partition is never split (it is the unit a rebuild replaces atomically), so a single
partition larger than the budget is built alone, with a warning naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from starsmith.errors import ConfigError
from starsmith.log import get_logger

log = get_logger(__name__)

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Peak bytes a partition holds while built, per byte of its input plus output frames: the
# transform's intermediates, the lookups' narrow frames, the hstack and the Parquet writer
# (benchmarks/fact_incremental.py measured 6-8 on the demo facts; 10 leaves headroom).
WORKING_SET_FACTOR = 10
DUCKDB_SHARE = 4  # DuckDB's memory_limit is a quarter of the budget; it spills past it


def parse_size(text: str) -> int:
    """``"1GB"``, ``"512MiB"``, ``"2 GiB"`` or a plain byte count, as bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not found or found.group(2) not in UNITS:
        raise ConfigError(f"cannot read the size {text!r}", where="the memory budget",
                          fix="Write it as a number and a unit, e.g. 1GB or 512MiB")
    return int(float(found.group(1)) * UNITS[found.group(2)])


def resident_bytes() -> int:
    """This process's resident memory now (Linux); 0 where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def duckdb_limit(budget: str, memory_limit: str) -> str:
    """DuckDB's memory_limit under a budget: its share, never above the configured limit."""
    if not budget:
        return memory_limit
    share = max(parse_size(budget) // DUCKDB_SHARE, 64 * 2**20)
    return f"{min(share, parse_size(memory_limit)) // 2**20}MiB"


@dataclass
class Batcher:
    """Groups event-date partitions into batches that fit a budget (or ``fixed`` at a time)."""

    partitions: Sequence[date]
    fixed: int  # partitions per batch without a budget (the spec's batch_days)
    budget: int = 0  # bytes; 0: no budget
    per_partition: int = 0  # measured bytes a partition needs; 0: not measured yet
    done: int = 0

    def __post_init__(self) -> None:
        # What the process held before the first batch: the budget pays for it too.
        self.baseline = resident_bytes() if self.budget else 0

    def next(self) -> list[date]:
        """The next batch; empty when every partition is built."""
        left = self.partitions[self.done:]
        if not self.budget:
            size = self.fixed
        elif not self.per_partition:
            size = 1  # the probe
        else:
            free = self.budget - self.baseline - self.budget // DUCKDB_SHARE
            size = max(1, free // self.per_partition)
            if size == 1 and self.per_partition > free and left:
                log.warning("partition %s needs ~%d MiB, over what the budget leaves (%d MiB);"
                            " it is built alone", left[0], self.per_partition >> 20,
                            max(free, 0) >> 20)
        batch = list(left[:size])
        self.done += len(batch)
        return batch

    def measured(self, partitions: int, input_bytes: float, output_bytes: float) -> None:
        """Record what a batch of ``partitions`` held; later batches are sized from the worst."""
        if self.budget and partitions:
            cost = int((input_bytes + output_bytes) * WORKING_SET_FACTOR / partitions)
            self.per_partition = max(self.per_partition, cost)

    @property
    def remaining(self) -> int:
        return len(self.partitions) - self.done
