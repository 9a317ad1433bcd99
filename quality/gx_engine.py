"""Run a model's expectations with great-expectations on its staged rows.

One ephemeral GX context per process (GX's import and context cost seconds: paid once by a
long-lived worker, never per model). The staged rows go to GX's pandas engine through Arrow; the
validation only reads them. Each result becomes one plain row for the results table.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from starsmith.errors import ConfigError
from starsmith.quality.expect import SEVERITIES, Expect

_LOCK = threading.Lock()
_CONTEXT: Any = None


@dataclass(frozen=True)
class Outcome:
    expectation: Expect
    success: bool
    observed_value: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    unexpected_sample: list[Any]
    unexpected_rows: list[int]


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT = ctx
    return _CONTEXT


def _domain(e: Expect) -> Any:
    """The GX expectation object; a bad declaration is a configuration error, not a retry."""
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )
    from great_expectations.expectations.metadata_types import FailureSeverity

    try:
        return ExpectationConfiguration(type=e.type, kwargs=e.kwargs,
                                        severity=FailureSeverity(SEVERITIES[e.severity])
                                        ).to_domain_obj()
    except Exception as err:  # GX raises pydantic and its own errors for bad arguments
        raise ConfigError(f"great-expectations refused {e.describe()}: {err}".strip(),
                          fix="Fix the expectation declared beside the model") from err


def run_expectations(frame: pl.DataFrame, name: str, expectations: Sequence[Expect]
                     ) -> list[Outcome]:
    """Validate ``frame`` against the expectations; one outcome per expectation, in order."""
    import great_expectations as gx

    with _LOCK:  # GX's context registries are not thread-safe; validation itself is quick
        ctx = _context()
        source = f"staged_{name}"
        if source in [d.name for d in ctx.data_sources.all().values()]:
            ctx.data_sources.delete(source)
        batch_def = ctx.data_sources.add_pandas(source).add_dataframe_asset(name) \
            .add_batch_definition_whole_dataframe("staged")
        suite = gx.ExpectationSuite(name=f"{name}_suite",
                                    expectations=[_domain(e) for e in expectations])
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
        result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    outcomes = []
    for exp, res in zip(expectations, result.results, strict=True):
        r = res.to_json_dict().get("result") or {}
        observed = r.get("observed_value")
        outcomes.append(Outcome(
            expectation=exp, success=bool(res.success),
            observed_value=None if observed is None else json.dumps(observed, default=str),
            unexpected_count=r.get("unexpected_count"),
            unexpected_percent=r.get("unexpected_percent"),
            unexpected_sample=list(r.get("partial_unexpected_list") or [])[:20],
            unexpected_rows=[int(i) for i in r.get("unexpected_index_list") or []
                             if isinstance(i, int)],
        ))
    return outcomes
