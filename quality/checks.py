"""Checks that look beyond the staged rows: referential integrity, freshness, volume.

great-expectations validates one batch; these rules compare the staged rows with the warehouse
(the dimension a fact points into, the previous run's row count), so they run as SQL next to the
data. Their results go to the same results table, with the same severities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from starsmith.dimensions.spec import UNKNOWN_KEY
from starsmith.quality.queryable import Queryable


class Warehouse(Queryable, Protocol):
    def exists(self, table: str) -> bool: ...


@dataclass(frozen=True)
class CheckResult:
    name: str
    column: str
    severity: str
    success: bool
    observed: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: tuple[object, ...] = ()


@dataclass(frozen=True)
class KeyProof:
    """A fact column every key of which exists in ``dimension`` by construction: the step set
    it itself, from versions it read from the published dimension (or members it adds to it in
    the same publish, or reserved members the dimension holds), over ``rows`` staged rows, of
    which ``unknown`` are -1. Its References check needs no query (orchestration/fact_keys.py)."""

    dimension: str
    key: str
    rows: int
    unknown: int


@dataclass(frozen=True)
class References:
    """Every key exists in the dimension, and the share of -1 "Unknown" stays under a limit."""

    column: str
    dimension: str
    key: str = ""
    max_unknown_rate: float = 0.05
    severity: str = "error"

    def proven_by(self, proof: KeyProof | None) -> list[CheckResult] | None:
        """The check's results from a proof about its column, or None when the proof is not
        about this dimension and key (the check then runs as SQL)."""
        if proof is None or (proof.dimension, proof.key) != (self.dimension,
                                                             self.key or self.column):
            return None
        return self._results(proof.rows, proof.unknown, 0, [])

    def run(self, wh: Warehouse, staged: str, model: str, day: date,
            pending: Mapping[str, str]) -> list[CheckResult]:
        key = self.key or self.column
        keys = f'SELECT "{key}" FROM main."{self.dimension}"'
        if self.dimension in pending:  # members this publish adds (inferred by the facts)
            keys += f' UNION ALL SELECT "{key}" FROM {pending[self.dimension]}'
        joined = (f'FROM {staged} s LEFT JOIN (SELECT DISTINCT "{key}" FROM ({keys}) k) d '
                  f'ON s."{self.column}" = d."{key}"')
        row = wh.query(f"""
            SELECT count(*) AS n,
                   count(*) FILTER (WHERE s."{self.column}" = {UNKNOWN_KEY}) AS unknown,
                   count(*) FILTER (WHERE d."{key}" IS NULL) AS orphans {joined}""").row(0, named=True)
        row["sample"] = []
        if row["orphans"]:
            found = wh.query(f'SELECT DISTINCT s."{self.column}" AS v {joined} '
                             f'WHERE d."{key}" IS NULL ORDER BY 1 LIMIT 20')
            row["sample"] = found["v"].to_list()
        return self._results(int(row["n"]), int(row["unknown"] or 0), int(row["orphans"] or 0),
                             list(row["sample"] or ()))

    def _results(self, rows: int, unknown: int, orphans: int, sample: list[object]
                 ) -> list[CheckResult]:
        key = self.key or self.column
        n = max(rows, 1)
        rate = unknown / n
        return [
            CheckResult(f"references {self.dimension}.{key}", self.column, self.severity,
                        orphans == 0, f"{orphans} orphan key(s)", orphans, 100 * orphans / n,
                        tuple(sample)),
            CheckResult(f"unknown member rate <= {self.max_unknown_rate:.2%}", self.column,
                        self.severity, rate <= self.max_unknown_rate, f"{rate:.4%}",
                        unknown, 100 * rate),
        ]


@dataclass(frozen=True)
class Freshness:
    """The newest event is within ``max_hours`` of the end of the logical date."""

    column: str
    max_hours: float = 48
    severity: str = "warn"

    def run(self, wh: Warehouse, staged: str, model: str, day: date,
            pending: Mapping[str, str]) -> list[CheckResult]:
        newest = wh.query(f'SELECT max("{self.column}") AS m FROM {staged}')["m"][0]
        end = datetime(day.year, day.month, day.day) + timedelta(days=1)
        if newest is None:
            return [CheckResult(f"freshness <= {self.max_hours}h", self.column, self.severity,
                                False, "no rows")]
        newest_dt = newest if isinstance(newest, datetime) else datetime(
            newest.year, newest.month, newest.day) + timedelta(days=1)
        lag = (end - newest_dt).total_seconds() / 3600
        return [CheckResult(f"freshness <= {self.max_hours}h", self.column, self.severity,
                            lag <= self.max_hours, f"newest {newest}, {lag:.1f}h before day end")]


@dataclass(frozen=True)
class Volume:
    """The row count is within [min_ratio, max_ratio] of the previous successful run's."""

    min_ratio: float = 0.5
    max_ratio: float = 2.0
    severity: str = "warn"

    def run(self, wh: Warehouse, staged: str, model: str, day: date,
            pending: Mapping[str, str]) -> list[CheckResult]:
        now = int(wh.query(f"SELECT count(*) AS n FROM {staged}")["n"][0])
        prev = wh.query("SELECT rows_written AS n FROM _starsmith.run_log WHERE model = ? AND "
                        "status = 'success' AND logical_date < ? ORDER BY logical_date DESC, "
                        "finished_at DESC LIMIT 1", [model, day])
        name = f"volume within {self.min_ratio}x..{self.max_ratio}x of the previous run"
        if not prev.height or not prev["n"][0]:
            return [CheckResult(name, "", self.severity, True, f"{now} rows; no previous run")]
        ratio = now / int(prev["n"][0])
        return [CheckResult(name, "", self.severity, self.min_ratio <= ratio <= self.max_ratio,
                            f"{now} rows, {ratio:.2f}x the previous {int(prev['n'][0])}")]


Check = References | Freshness | Volume
