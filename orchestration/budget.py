"""A step's memory budget: how many fact partitions to build at once, and DuckDB's share.

Polars' streaming engine alone did not keep a large join under a cap, so the budget
is kept the way a database keeps a work_mem: by the size of the unit of work. A fact rebuild is
split into batches of event-date partitions, each built, keyed and staged before the next is
read, so the peak is one batch's working set plus what the process already holds.

The batch size is measured, not guessed: the first batch is one partition (a probe). Around each
batch the process's peak resident memory is reset and read back (Linux ``clear_refs``), so the
growth a partition caused is known; the next batch is as many partitions as fit between what the
process holds now and the budget, less DuckDB's share (it spills past it) and a margin, and at
most GROWTH times the largest batch measured so far: one partition can cost far less than those
after it (the first event date of a history holds only the few rows that landed late onto it),
so the figure is checked on batches growing toward the size it allows. A growth is read as at
least FRAMES_FLOOR times the batch's input and output frames: memory the allocator kept from
before serves a small batch without growing the process, so a small batch read low and the
batch sized from it outgrew the budget. Where the peak cannot be read, the frames times a
working-set factor stand in.
A partition is never split (it is the unit a rebuild replaces atomically), so one larger than
what the budget leaves is built alone, with a warning naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from starsmith.errors import ConfigError
from starsmith.log import get_logger

log = get_logger(__name__)

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Where the peak cannot be measured: bytes a partition holds while built, per byte of its input
# plus output frames (benchmarks/fact_incremental.py measured 6-8 on the demo facts).
WORKING_SET_FACTOR = 10
DUCKDB_SHARE = 4  # DuckDB's memory_limit is a quarter of the budget; it spills past it
MARGIN = 16  # a sixteenth of the budget is kept free for allocator slack
GROWTH = 16  # a batch is at most this many times the largest one measured before it
# A batch holds at least its input and output frames and a copy of one in flight: a growth
# read below twice the frames is memory the allocator reused (benchmarks/star_build.py's fact
# grew 1.7-1.9x its frames in batches of ~900 partitions; the demo facts 6-8x)
FRAMES_FLOOR = 2
# A step of many batches reads a looked-up dimension's versions once, whole, when they fit this
# share of the budget (all its dimensions together), or WHOLE_VERSIONS bytes without a budget;
# a larger one is read batch by batch, the versions of the batch's keys only.
WHOLE_VERSIONS_SHARE = 8
WHOLE_VERSIONS = 512 * 2**20
# Without a budget or a fact's own batch_days: a full rebuild, which counts each partition's
# event rows, takes partitions until a batch holds about BATCH_ROWS rows (a 6M-row fact over
# 2,406 days: ~4.2 s in 78 batches of 31 days, ~3.3 s in 13 of ~500k rows, each batch paying
# its queries and engine calls once; 1M rows gained nothing more and held 0.2 GB more); other
# rebuilds take BATCH_DAYS partitions at a time.
BATCH_ROWS = 500_000
BATCH_DAYS = 31


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


def release_free_memory() -> None:
    """Hand memory freed by the last batch back to the system (glibc keeps it otherwise, and it
    would count against the budget); a no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """This process's peak resident memory since start or the last reset; 0 if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def whole_versions_allowance(budget: int) -> int:
    """Bytes a step may hold in dimension versions read once for all its batches; what they
    hold is resident, so the batches after them are sized around it."""
    return budget // WHOLE_VERSIONS_SHARE if budget else WHOLE_VERSIONS


def duckdb_limit(budget: str, memory_limit: str) -> str:
    """DuckDB's memory_limit under a budget: its share, never above the configured limit."""
    if not budget:
        return memory_limit
    share = max(parse_size(budget) // DUCKDB_SHARE, 64 * 2**20)
    return f"{min(share, parse_size(memory_limit)) // 2**20}MiB"


@dataclass
class Batcher:
    """Groups event-date partitions into batches that fit a budget (or ``fixed`` at a time, or
    about BATCH_ROWS rows when ``rows`` counts each partition's)."""

    partitions: Sequence[date]
    fixed: int | None  # partitions per batch without a budget (the spec's batch_days)
    budget: int = 0  # bytes; 0: no budget
    rows: Sequence[int] = ()  # each partition's event rows, when counted
    per_partition: int = 0  # bytes a partition added at worst; 0: not measured yet
    probed: bool = False  # the probe is measured: it stands in until a batch after it is
    done: int = 0
    largest: int = 0  # partitions in the largest batch measured so far
    before: int = 0  # resident bytes when the current batch started
    tracked: bool = False  # the current batch's peak can be read
    warned: bool = False
    # how the process's memory is read (tests give readings of their own)
    resident: Callable[[], int] = resident_bytes
    peak: Callable[[], int] = peak_bytes
    reset: Callable[[], bool] = reset_peak

    def next(self) -> list[date]:
        """The next batch; empty when every partition is built."""
        left = self.partitions[self.done:]
        if not self.budget:
            size = self.fixed or self._by_rows()
        elif not self.per_partition:
            size = 1  # the probe
        else:
            free = (self.budget - self.budget // DUCKDB_SHARE - self.budget // MARGIN
                    - self.resident())
            size = min(max(1, free // self.per_partition), GROWTH * max(self.largest, 1))
            if self.probed and self.per_partition > free and left and not self.warned:
                self.warned = True
                log.warning("partition %s needs ~%d MiB, over what the budget leaves (%d MiB);"
                            " partitions are built one at a time", left[0],
                            self.per_partition >> 20, max(free, 0) >> 20)
        batch = list(left[:size])
        self.done += len(batch)
        if self.budget:
            release_free_memory()
            self.tracked = self.reset()
            self.before = self.resident()
        return batch

    def measured(self, partitions: int, input_bytes: float, output_bytes: float) -> None:
        """Record what the batch just built cost; later batches are sized from the worst."""
        if not self.budget or not partitions:
            return
        self.largest = max(self.largest, partitions)
        grew = self.peak() - self.before if self.tracked else 0
        frames = input_bytes + output_bytes
        cost = (int(max(grew, frames * FRAMES_FLOOR) / partitions) if grew > 0
                else int(frames * WORKING_SET_FACTOR / partitions))
        # The probe also pays one-off costs (lazy imports, first reads, thread pools), so the
        # batches after it replace its figure; from then on the worst batch sizes the rest.
        self.per_partition = max(self.per_partition, cost) if self.probed else cost
        if self.done > partitions:
            self.probed = True

    def rest(self) -> list[list[date]]:
        """Every batch left, at once (without a budget: none depends on what one cost)."""
        assert not self.budget, "a budget sizes each batch from the ones before it"
        batches = []
        while self.remaining:
            batches.append(self.next())
        return batches

    def _by_rows(self) -> int:
        """Partitions from the next on until they hold BATCH_ROWS rows (at least one); without
        counts, BATCH_DAYS."""
        if len(self.rows) != len(self.partitions):
            return BATCH_DAYS
        held, size = 0, 0
        for n in self.rows[self.done:]:
            if size and held + n > BATCH_ROWS:
                break
            held, size = held + n, size + 1
        return max(size, 1)

    @property
    def remaining(self) -> int:
        return len(self.partitions) - self.done
