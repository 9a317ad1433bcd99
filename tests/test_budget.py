"""The memory budget's arithmetic: sizes, DuckDB's share, and batches sized from a probe."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from starsmith.errors import ConfigError
from starsmith.orchestration.budget import (
    BATCH_DAYS,
    BATCH_ROWS,
    DUCKDB_SHARE,
    MARGIN,
    WORKING_SET_FACTOR,
    Batcher,
    duckdb_limit,
    parse_size,
    peak_bytes,
    reset_peak,
    resident_bytes,
)

DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(100)]
MIB = 2**20


@pytest.mark.parametrize(("text", "size"), [
    ("1GB", 10**9), ("512MiB", 512 * MIB), ("2 gib", 2 * 2**30), ("1.5GB", 1_500_000_000),
    ("4096", 4096),
])
def test_sizes_read_as_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1XB", "-1GB"])
def test_a_bad_size_is_a_config_error_saying_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError, match=r"e\.g\. 1GB or 512MiB"):
        parse_size(text)


def test_duckdb_gets_a_share_of_the_budget_never_above_its_limit() -> None:
    assert duckdb_limit("", "4GB") == "4GB"
    assert duckdb_limit("2GiB", "4GB") == "512MiB"
    assert duckdb_limit("2GiB", "256MiB") == "256MiB"
    assert duckdb_limit("100MiB", "4GB") == "64MiB"  # DuckDB needs a floor to run at all


def test_without_a_budget_batches_are_batch_days_long() -> None:
    b = Batcher(DAYS[:40], fixed=31)
    assert [len(b.next()), len(b.next())] == [31, 9] and b.remaining == 0


def test_without_batch_days_counted_partitions_make_batches_of_batch_rows() -> None:
    rows = [BATCH_ROWS // 4] * 10 + [BATCH_ROWS * 3] + [1] * 5  # a heavy day is built alone
    b = Batcher(DAYS[:16], fixed=None, rows=rows)
    sizes = []
    while b.remaining:
        sizes.append(len(b.next()))
    assert sizes == [4, 4, 2, 1, 5]
    uncounted = Batcher(DAYS[:40], fixed=None)  # a night's or a range's partitions
    assert len(uncounted.next()) == BATCH_DAYS
    assert len(Batcher(DAYS[:16], fixed=3, rows=rows).next()) == 3  # the model's own setting


class Process:
    """Memory readings a test controls: what is resident, and the peak since the last reset."""

    def __init__(self, resident: int) -> None:
        self.now = self.high = resident

    def grow(self, by: int) -> None:  # a batch allocates, then frees back to where it was
        self.high = max(self.high, self.now + by)

    def reset(self) -> bool:
        self.high = self.now
        return True


def batcher(proc: Process, budget: int, days: list[date] = DAYS) -> Batcher:
    return Batcher(days, fixed=31, budget=budget, resident=lambda: proc.now,
                   peak=lambda: proc.high, reset=proc.reset)


def test_a_probe_partition_sizes_the_batches_that_follow_from_what_it_grew() -> None:
    budget = 1000 * MIB
    proc = Process(resident=100 * MIB)
    b = batcher(proc, budget)
    free = budget - budget // DUCKDB_SHARE - budget // MARGIN - proc.now  # 587.5 MiB
    assert b.next() == DAYS[:1]  # the probe
    proc.grow(50 * MIB)
    b.measured(1, input_bytes=1, output_bytes=1)  # the measured growth wins over the frames
    second = b.next()
    assert second == DAYS[1:12] and len(second) == free // (50 * MIB) == 11
    proc.grow(11 * 25 * MIB)  # the probe paid one-off costs: the next batch's figure replaces it
    b.measured(11, 1, 1)
    assert len(b.next()) == free // (25 * MIB) == 23
    proc.grow(23 * 20 * MIB)  # cheaper partitions: the worst seen since still sizes them
    b.measured(23, 1, 1)
    proc.now = 400 * MIB  # the process holds more now (DuckDB's buffers, say): smaller batches
    assert len(b.next()) == (budget - budget // DUCKDB_SHARE - budget // MARGIN - proc.now) // (
        25 * MIB) == 11


def test_without_a_readable_peak_the_frames_stand_in() -> None:
    proc = Process(resident=0)
    b = Batcher(DAYS, fixed=31, budget=1000 * MIB, resident=lambda: proc.now,
                peak=lambda: 0, reset=lambda: False)
    b.next()
    b.measured(1, input_bytes=2 * MIB, output_bytes=3 * MIB)
    assert b.per_partition == 5 * MIB * WORKING_SET_FACTOR


def test_a_partition_bigger_than_the_budget_is_built_alone_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    proc = Process(resident=0)
    b = batcher(proc, 64 * MIB, DAYS[:5])
    for _ in range(2):  # the probe, then a batch after it: both too big for the budget
        b.next()
        proc.grow(100 * MIB)
        b.measured(1, 1, 1)
    assert [b.next(), b.next()] == [DAYS[2:3], DAYS[3:4]]
    assert caplog.text.count("partition 2024-01-03 needs ~100 MiB") == 1


def test_this_process_memory_can_be_read_here() -> None:
    """The readings the budget relies on work on this machine (Linux /proc)."""
    assert resident_bytes() > 0 and reset_peak() and peak_bytes() >= resident_bytes() // 2


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_budget_stops_the_build_before_any_step_with_a_clear_error(
        how: str, tmp_path: Path) -> None:
    from starsmith.scaffold import init_project

    init_project(tmp_path, sample=True)
    env = {**os.environ, "COLUMNS": "200"}
    args = [str(Path(sys.executable).with_name("starsmith")), "build", "--in-process"]
    if how == "flag":
        args += ["--memory-budget", "lots"]
    else:
        env["STARSMITH_MEMORY_BUDGET"] = "lots"
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot read the size 'lots'" in done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / ".state").exists()  # nothing was built or opened


def test_importing_starsmith_first_sets_the_polars_allocator() -> None:
    """Every entry point imports starsmith before Polars: its allocator then purges freed pages
    on a background thread; a value the operator set wins; after Polars, nothing is touched."""
    from starsmith import POLARS_ALLOCATOR

    def conf(code: str, **env: str) -> str:
        out = subprocess.run([sys.executable, "-c", code + "; import os; "
                              "print(os.environ['_RJEM_MALLOC_CONF'])"], check=True,
                             capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
                             | env)
        return out.stdout.strip()

    assert conf("import starsmith, polars").endswith("," + POLARS_ALLOCATOR)
    assert conf("import starsmith, polars", _RJEM_MALLOC_CONF="narenas:1").endswith(",narenas:1")
    assert POLARS_ALLOCATOR not in conf("import polars, starsmith")
