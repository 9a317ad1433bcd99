"""The memory budget's arithmetic: sizes, DuckDB's share, and batches sized from a probe."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from orchestration.budget import DUCKDB_SHARE, WORKING_SET_FACTOR, Batcher, duckdb_limit, parse_size
from starsmith.errors import ConfigError

DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(40)]


@pytest.mark.parametrize(("text", "size"), [
    ("1GB", 10**9), ("512MiB", 512 * 2**20), ("2 gib", 2 * 2**30), ("1.5GB", 1_500_000_000),
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
    b = Batcher(DAYS, fixed=31)
    assert [len(b.next()), len(b.next())] == [31, 9] and b.remaining == 0


def test_a_probe_partition_sizes_the_batches_that_follow() -> None:
    budget = 1000 * 2**20
    b = Batcher(DAYS, fixed=31, budget=budget)
    b.baseline = 100 * 2**20  # what the process held before the build
    assert b.next() == DAYS[:1]  # the probe
    b.measured(1, input_bytes=2 * 2**20, output_bytes=3 * 2**20)
    free = budget - b.baseline - budget // DUCKDB_SHARE
    per = 5 * 2**20 * WORKING_SET_FACTOR
    second = b.next()
    assert second == DAYS[1:1 + free // per] and len(second) == 13
    b.measured(len(second), input_bytes=len(second) * 4 * 2**20, output_bytes=len(second) * 2**20)
    assert len(b.next()) == 13  # sized from the worst partition seen, not the last
    b.measured(1, input_bytes=40 * 2**20, output_bytes=0)  # a heavy day: smaller batches after
    assert len(b.next()) == 1


def test_a_partition_bigger_than_the_budget_is_built_alone_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    b = Batcher(DAYS[:3], fixed=31, budget=64 * 2**20)
    b.baseline = 0
    b.next()
    b.measured(1, input_bytes=100 * 2**20, output_bytes=0)
    assert b.next() == DAYS[1:2]
    assert "partition 2024-01-02 needs ~1000 MiB" in caplog.text
