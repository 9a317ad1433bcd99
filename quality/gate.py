"""The quality gate between staging and publish: run the model's suite, decide, record.

An ``error`` expectation that fails stops the publish (a non-retryable DataError: the previous
table stays, dependants are skipped). A ``warn`` failure is recorded and the build goes on. A
row-level expectation that passes only thanks to its ``mostly`` threshold sends its failing rows
to ``<model>__quarantine`` with the rule as the reason, instead of publishing them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime

import polars as pl

from starsmith.contract import Model
from starsmith.errors import DataError
from starsmith.quality.checks import KeyProof, References, Warehouse
from starsmith.quality.contract import audit_staged
from starsmith.quality.gx_engine import Outcome, run_expectations
from starsmith.quality.sql_engine import run_sql, supported

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
    results: pl.DataFrame  # one row per expectation or check, for the results table
    failed: list[str]  # error-severity failures, described: the publish must not happen
    quarantine: dict[int, str]  # row index -> reason, for rows a "mostly" rule let through


def _describe_failure(what: str, count: int | None, percent: float | None, observed: str | None,
                      sample: list[object]) -> str:
    shown = ", ".join(repr(v) for v in sample[:5])
    amount = (f"{count} unexpected ({percent:.2f}%)" if count is not None and percent is not None
              else f"observed {observed}")
    return f"{what}: {amount}" + (f", e.g. {shown}" if shown else "")


ENGINE_ENV = "STARSMITH_QUALITY_ENGINE"  # "gx" runs every expectation through GX


def evaluate(frame: pl.DataFrame, model: Model, wh: Warehouse | None, staged: str, *,
             audit: bool = False, known_unique: bool = False,
             held: pl.DataFrame | None = None) -> list[Outcome]:
    """Common expectation types by one SQL pass over the staged rows, the rest by GX.

    ``audit``: check the model contract first (in that same pass when there is one), so a
    broken contract stops the step before any expectation is judged; ``known_unique``: its
    unique key is proven unique already (quality/contract.py); ``held``: the staged rows
    themselves, in memory, where the contract alone is counted (``audit_staged``).
    """
    exps = model.expectations
    fast = [i for i, e in enumerate(exps) if wh is not None and staged and supported(e)
            and os.environ.get(ENGINE_ENV, "auto") != "gx"]
    slow = [i for i in range(len(exps)) if i not in fast]
    found: dict[int, Outcome] = {}
    if audit and not fast:
        assert wh is not None, "the contract audit runs in the warehouse"
        audit_staged(wh, staged, model, known_unique=known_unique, held=held)
    if fast:
        assert wh is not None
        found |= dict(zip(fast, run_sql(wh, staged, [exps[i] for i in fast],
                                        contract=model if audit else None,
                                        known_unique=known_unique), strict=True))
    if slow:
        found |= dict(zip(slow, run_expectations(frame, model.name, [exps[i] for i in slow]),
                          strict=True))
    return [found[i] for i in range(len(exps))]


def judge(frame: pl.DataFrame, model: Model, run_id: str, logical_date: date,
          wh: Warehouse | None = None, staged: str = "",
          pending: Mapping[str, str] | None = None, *, audit: bool = False,
          known_unique: bool = False, proofs: Mapping[str, KeyProof] | None = None,
          held: pl.DataFrame | None = None) -> Verdict:
    """Run the model's expectations (GX, on the staged rows) and checks (SQL, in the warehouse);
    with ``audit``, the model contract before them (a broken one raises a DataError).
    ``proofs``: columns whose keys exist in their dimension by construction, by column; their
    References checks report from the proof instead of querying (quality/checks.py).
    ``held``: the staged rows themselves, in memory (see ``audit_staged``)."""
    outcomes = evaluate(frame, model, wh, staged, audit=audit, known_unique=known_unique,
                        held=held)
    checked = datetime(logical_date.year, logical_date.month, logical_date.day)
    base: dict[str, object] = {"run_id": run_id, "model": model.name, "layer": model.kind.value,
            "logical_date": logical_date, "checked_at": checked}
    rows: list[dict[str, object]] = [base | {
        "expectation": o.expectation.type, "column_name": o.expectation.column,
        "kwargs": o.expectation.kwargs_json, "severity": o.expectation.severity,
        "success": o.success, "observed_value": o.observed_value,
        "unexpected_count": o.unexpected_count, "unexpected_percent": o.unexpected_percent,
        "unexpected_sample": json.dumps(o.unexpected_sample, default=str),
    } for o in outcomes]
    failed = [_describe_failure(o.expectation.describe(), o.unexpected_count,
                                o.unexpected_percent, o.observed_value, o.unexpected_sample)
              for o in outcomes if not o.success and o.expectation.severity == "error"]
    for check in model.checks:
        assert wh is not None, "warehouse checks need the warehouse"
        proven = (check.proven_by((proofs or {}).get(check.column))
                  if isinstance(check, References) else None)
        for r in proven if proven is not None else check.run(wh, staged, model.name,
                                                             logical_date, pending or {}):
            rows.append(base | {
                "expectation": r.name, "column_name": r.column,
                "kwargs": json.dumps(asdict(check), default=str), "severity": r.severity,
                "success": r.success, "observed_value": r.observed,
                "unexpected_count": r.unexpected_count, "unexpected_percent": r.unexpected_percent,
                "unexpected_sample": json.dumps(list(r.sample), default=str),
            })
            if not r.success and r.severity == "error":
                failed.append(_describe_failure(f"{r.name} ({r.column})", r.unexpected_count,
                                                r.unexpected_percent, r.observed, list(r.sample)))
    quarantine: dict[int, str] = {}
    for o in outcomes:
        if o.success and "mostly" in o.expectation.kwargs and model.dimension is None:
            for row in o.unexpected_rows:
                quarantine.setdefault(row, f"failed {o.expectation.describe()}")
    return Verdict(pl.DataFrame(rows, schema=RESULT_SCHEMA), failed, quarantine)


def refuse(verdict: Verdict, model: Model) -> None:
    """Raise the gate's error, naming every failed blocking rule with a sample."""
    if not verdict.failed:
        return
    raise DataError(f"{len(verdict.failed)} blocking expectation(s) failed on {model.name}: "
                    + "; ".join(verdict.failed), where=f"the staged rows of {model.name}",
                    fix="The published table was left as it was and its dependants were "
                    "skipped; see _starsmith.quality_results")
