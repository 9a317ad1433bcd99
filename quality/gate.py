"""The quality gate between staging and publish: run the model's suite, decide, record.

An ``error`` expectation that fails stops the publish (a non-retryable DataError: the previous
table stays, dependants are skipped). A ``warn`` failure is recorded and the build goes on. A
row-level expectation that passes only thanks to its ``mostly`` threshold sends its failing rows
to ``<model>__quarantine`` with the rule as the reason, instead of publishing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from models.contract import Model
from quality.gx_engine import Outcome, run_expectations
from starsmith.errors import DataError

RESULT_SCHEMA = pl.Schema({
    "run_id": pl.String(), "model": pl.String(), "layer": pl.String(),
    "logical_date": pl.Date(), "expectation": pl.String(), "column_name": pl.String(),
    "kwargs": pl.String(), "severity": pl.String(), "success": pl.Boolean(),
    "observed_value": pl.String(), "unexpected_count": pl.Int64(),
    "unexpected_percent": pl.Float64(), "unexpected_sample": pl.String(),
    "checked_at": pl.Datetime("us"),
})


@dataclass(frozen=True)
class Verdict:
    results: pl.DataFrame  # one row per expectation, for the results table
    failed: list[Outcome]  # error-severity failures: the publish must not happen
    quarantine: dict[int, str]  # row index -> reason, for rows a "mostly" rule let through


def judge(frame: pl.DataFrame, model: Model, run_id: str, logical_date: date) -> Verdict:
    outcomes = run_expectations(frame, model.name, model.expectations)
    checked = datetime(logical_date.year, logical_date.month, logical_date.day)
    results = pl.DataFrame([{
        "run_id": run_id, "model": model.name, "layer": model.kind.value,
        "logical_date": logical_date, "expectation": o.expectation.type,
        "column_name": o.expectation.column, "kwargs": o.expectation.kwargs_json,
        "severity": o.expectation.severity, "success": o.success,
        "observed_value": o.observed_value, "unexpected_count": o.unexpected_count,
        "unexpected_percent": o.unexpected_percent,
        "unexpected_sample": json.dumps(o.unexpected_sample, default=str),
        "checked_at": checked,
    } for o in outcomes], schema=RESULT_SCHEMA)
    failed = [o for o in outcomes if not o.success and o.expectation.severity == "error"]
    quarantine: dict[int, str] = {}
    for o in outcomes:
        if o.success and "mostly" in o.expectation.kwargs and model.dimension is None:
            for row in o.unexpected_rows:
                quarantine.setdefault(row, f"failed {o.expectation.describe()}")
    return Verdict(results, failed, quarantine)


def refuse(verdict: Verdict, model: Model) -> None:
    """Raise the gate's error, naming every failed blocking expectation with a sample."""
    if not verdict.failed:
        return
    parts = []
    for o in verdict.failed:
        sample = ", ".join(repr(v) for v in o.unexpected_sample[:5])
        count = (f"{o.unexpected_count} unexpected ({o.unexpected_percent:.2f}%)"
                 if o.unexpected_count is not None and o.unexpected_percent is not None
                 else f"observed {o.observed_value}")
        parts.append(f"{o.expectation.describe()}: {count}" + (f", e.g. {sample}" if sample else ""))
    raise DataError(f"{len(parts)} blocking expectation(s) failed on {model.name}: "
                    + "; ".join(parts), where=f"the staged rows of {model.name}",
                    fix="The published table was left as it was and its dependants were "
                    "skipped; see _starsmith.quality_results")
