"""A full rebuild under a memory budget stays under it when the readings it sizes batches from
read low. Two ways they did on the SSB star's fact (benchmarks/star_build.py), each taking the
process past a 2 GB budget:

- the first event date of a history holds only the rows that landed late onto it, so the one
  partition the budget probes with cost almost nothing, and the next batch took all the others;
  batches now grow at most GROWTH times the largest one measured;
- a batch of hundreds of partitions reused memory the allocator had kept from before, so it
  grew the process by a fraction of what it needed; once the allocator handed that memory back,
  the batch sized from the reading outgrew the budget. A reading now counts at least
  FRAMES_FLOOR times the batch's frames.

Readings are simulated, as in tests/test_budget.py.
"""

from __future__ import annotations

from datetime import date, timedelta

from starsmith.orchestration.budget import DUCKDB_SHARE, FRAMES_FLOOR, GROWTH, MARGIN, Batcher

MIB = 2**20
DAYS = [date(1992, 1, 1) + timedelta(days=i) for i in range(3000)]


class Process:
    """A process whose partitions each cost ``cost`` bytes while built, but the first: ~0."""

    def __init__(self, resident: int, cost: int) -> None:
        self.now = self.high = resident
        self.cost = cost

    def build(self, batch: list[date]) -> None:
        self.high = max(self.high, self.now + sum(self.cost for d in batch if d != DAYS[0]))

    def reset(self) -> bool:
        self.high = self.now
        return True


def rebuild(budget: int, proc: Process) -> tuple[list[int], int]:
    """Every partition, batch after batch: (the batch sizes, the highest peak)."""
    b = Batcher(DAYS, fixed=31, budget=budget, resident=lambda: proc.now,
                peak=lambda: proc.high, reset=proc.reset)
    sizes, peak = [], 0
    while b.remaining:
        batch = b.next()
        proc.build(batch)
        peak = max(peak, proc.high)
        # the frames say little: a few bytes a partition (the working-set guess from them too)
        b.measured(len(batch), input_bytes=len(batch), output_bytes=len(batch))
        sizes.append(len(batch))
    return sizes, peak


def test_a_cheap_probe_does_not_size_one_batch_past_the_budget() -> None:
    budget, proc = 1000 * MIB, Process(resident=200 * MIB, cost=MIB)
    sizes, peak = rebuild(budget, proc)
    assert sizes[:3] == [1, GROWTH, GROWTH**2]  # the probe said ~0: growth is checked
    assert peak <= budget - budget // DUCKDB_SHARE - budget // MARGIN
    fits = (budget - budget // DUCKDB_SHARE - budget // MARGIN - proc.now) // MIB
    assert max(sizes) == fits  # once measured, batches are as large as the budget allows
    assert sum(sizes) == len(DAYS)


def test_growth_does_not_slow_a_budget_that_fits_partitions_by_the_hundred() -> None:
    budget, proc = 8000 * MIB, Process(resident=200 * MIB, cost=MIB // 4)
    sizes, _ = rebuild(budget, proc)
    assert len(sizes) <= 5 and sum(sizes) == len(DAYS)


class Allocator(Process):
    """Partitions of ``cost`` bytes, half of it their frames; the first batches reuse memory
    the allocator kept (up to four fifths of what they need), until it hands it back."""

    def __init__(self, resident: int, cost: int, kept: int, kept_for: int) -> None:
        super().__init__(resident, cost)
        self.kept, self.kept_for, self.built = kept, kept_for, 0

    def build(self, batch: list[date]) -> None:
        need = sum(self.cost for d in batch if d != DAYS[0])
        self.high = max(self.high, self.now + need - min(self.kept, need * 4 // 5))
        self.built += 1
        if self.built == self.kept_for:  # a background purge: the process shrinks
            self.now, self.kept = self.now - self.kept, 0


def test_memory_reused_from_before_does_not_size_a_batch_past_the_budget() -> None:
    budget = 2000 * MIB
    proc = Allocator(resident=750 * MIB, cost=4 * MIB // 5, kept=200 * MIB, kept_for=4)
    b = Batcher(DAYS[:2400], fixed=31, budget=budget, resident=lambda: proc.now,
                peak=lambda: proc.high, reset=proc.reset)
    peak, sizes = 0, []
    while b.remaining:
        batch = b.next()
        proc.build(batch)
        peak = max(peak, proc.high)
        frames = sum(proc.cost for d in batch if d != DAYS[0]) / FRAMES_FLOOR
        b.measured(len(batch), input_bytes=frames / 2, output_bytes=frames / 2)
        sizes.append(len(batch))
    assert sizes[:4] == [1, 1, GROWTH, GROWTH**2]  # the probe cost nothing: it probes again
    assert peak <= budget - budget // DUCKDB_SHARE - budget // MARGIN, sizes
