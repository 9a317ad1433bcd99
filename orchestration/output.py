"""What a model's build hands to the publish: rows to stage and how to publish them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

import polars as pl
from sqlglot import exp

from starsmith.contract import QUARANTINE_REASON, BuildContext, Model
from starsmith.errors import ModelError, StarsmithError
from starsmith.loaders.target import RowHashes
from starsmith.quality.checks import KeyProof

Statements = Callable[[str, str], list[exp.Expr]]
"""(target table, staged table) -> the strategy's statements for one atomic publish."""


@dataclass
class StepOutput:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    statements: Statements
    rows_read: int
    counts: dict[str, int] = field(default_factory=dict)
    days: list[date] = field(default_factory=list)
    also_staged: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # dimension -> its staged new members
    parts: list[str] = field(default_factory=list)  # rows already staged batch by batch
    rows_written: int = 0  # set when the rows were staged in parts
    quarantine_scope: tuple[str, list[date]] | None = None  # default: the logical date
    asof: pl.DataFrame | None = None  # a range's dimension: the states it replaced (asof.py)
    hashes: RowHashes | None = None  # a snapshot dimension's stored hashes (row_hashes.py)
    # the unique key is proven unique over every row staged (a fact's key hashes): the
    # contract's audit does not count repeats again (quality/contract.py)
    known_unique: bool = False
    # columns whose keys exist in their dimension by construction (a fact's lookups): their
    # References checks report from the proof (orchestration/fact_keys.py)
    proofs: dict[str, KeyProof] = field(default_factory=dict)


def conform(frame: pl.DataFrame, model: Model) -> pl.DataFrame:
    """The declared columns, in order, with the declared types: the model's output contract.

    A cast never loses data silently: a value it would round (money computed at a finer scale
    than declared) or overflow is refused, naming the column, instead of being published wrong.
    """
    missing = [c for c in model.schema.names() if c not in frame.columns]
    if missing:
        raise ModelError(f"the transform of {model.name} did not produce column(s) {missing}",
                         where=f"model {model.name}",
                         fix="Produce every declared column, or remove it from the spec")
    for name, declared in model.schema.items():
        refuse_lossy(frame[name], declared, model)
    return frame.select(pl.col(c).cast(t) for c, t in model.schema.items())


def refuse_lossy(col: pl.Series, declared: pl.DataType, model: Model) -> None:
    if col.dtype == declared:
        return
    where = f"model {model.name}, column {col.name!r}"
    try:
        cast = col.cast(declared)
    except pl.exceptions.PolarsError as err:
        raise ModelError(f"column {col.name!r} of {model.name} does not fit its declared type "
                         f"{declared} (produced {col.dtype}): {str(err).splitlines()[0]}",
                         where=where, fix="Declare a wider type, or fix the transform") from err
    if not declared.is_decimal() or not (col.dtype.is_decimal() or col.dtype.is_float()):
        return
    back = cast.cast(col.dtype)
    lost = col.filter(back.ne_missing(col))
    if lost.len():
        raise ModelError(
            f"column {col.name!r} of {model.name} is {col.dtype} but declared {declared}: the cast "
            f"would round {lost.len()} value(s), e.g. {lost[0]}",
            where=where,
            fix="Declare the scale the values have (e.g. Decimal(18,4) for a product of two "
                "Decimal(15,2)), or round explicitly in the transform: "
                "expr.round(2, mode='half_away_from_zero')")


def run_transform(model: Model, inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext
                  ) -> pl.DataFrame:
    """Run a model's transform; a mistake in it (an unknown column, a wrong type, a missing
    input) is a non-retryable ModelError naming the model and its inputs' columns, not a raw
    engine traceback retried five times."""
    try:
        return model.transform(inputs, ctx).collect()
    except StarsmithError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        seen = "; ".join(f"{n}: {', '.join(f.collect_schema().names())}"
                         for n, f in inputs.items())
        raise ModelError(f"the transform of {model.name} failed: {type(err).__name__}: {first}",
                         where=f"model {model.name} (inputs {seen or 'none'})",
                         fix="Fix the transform or the model's declared inputs; a retry "
                             "cannot help") from err


def split_quarantine(frame: pl.DataFrame, model: Model) -> tuple[pl.DataFrame, pl.DataFrame]:
    if QUARANTINE_REASON not in frame.columns:
        return frame, pl.DataFrame({"reason": []}, schema={"reason": pl.String()})
    if frame[QUARANTINE_REASON].null_count() == frame.height:  # most days: nothing to hold
        return frame.drop(QUARANTINE_REASON), frame.clear().rename({QUARANTINE_REASON: "reason"})
    bad = frame.filter(pl.col(QUARANTINE_REASON).is_not_null())
    good = frame.filter(pl.col(QUARANTINE_REASON).is_null()).drop(QUARANTINE_REASON)
    return good, bad.rename({QUARANTINE_REASON: "reason"})
