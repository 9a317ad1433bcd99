"""The SQL fast path agrees with great-expectations on every expectation type it evaluates."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from starsmith.loaders.duckdb import DuckDBWarehouse
from starsmith.quality.expect import Expect
from starsmith.quality.gx_engine import run_expectations
from starsmith.quality.sql_engine import AGG_RULES, run_sql, supported

FRAME = pl.DataFrame({
    "id": [1, 2, 2, 3, None, 5, 6, 6],
    "code": ["a", "b", "x", None, "a", "zz", "b", "b"],
    "amount": [1.5, -3.0, 10.0, 99.0, None, 0.0, 7.5, 7.5],
    "email": ["a@b.c", "bad", None, "x@y.z", "q@w.e", "no-at", "r@t.y", "r@t.y"],
})
CASES = [
    Expect("expect_column_values_to_not_be_null", column="id"),
    Expect("expect_column_values_to_not_be_null", column="code", mostly=0.8),
    Expect("expect_column_values_to_be_in_set", column="code", value_set=["a", "b"]),
    Expect("expect_column_values_to_be_in_set", column="code", value_set=["a", "b"], mostly=0.5),
    Expect("expect_column_values_to_not_be_in_set", column="code", value_set=["zz"]),
    Expect("expect_column_values_to_be_between", column="amount", min_value=0, max_value=50),
    Expect("expect_column_values_to_be_between", column="amount", min_value=0, strict_min=True),
    Expect("expect_column_values_to_match_regex", column="email", regex=r"^[^@]+@[^@]+$"),
    Expect("expect_column_values_to_be_unique", column="id"),
    Expect("expect_compound_columns_to_be_unique", column_list=["id", "code"]),
    Expect("expect_compound_columns_to_be_unique", column_list=["id", "code"],
           ignore_row_if="any_value_is_missing"),
    Expect("expect_table_row_count_to_be_between", min_value=1, max_value=5),
    Expect("expect_column_proportion_of_unique_values_to_be_between", column="code",
           min_value=0.5, max_value=1),
    Expect("expect_column_proportion_of_unique_values_to_be_between", column="id",
           min_value=0.9, strict_max=True),
    Expect("expect_column_unique_value_count_to_be_between", column="email", min_value=1,
           max_value=6),
    Expect("expect_column_unique_value_count_to_be_between", column="code", max_value=4,
           strict_max=True),
]


def _norm(value: object) -> str:
    """pandas turns an integer column with NULLs into floats: compare 2 and 2.0 as equal."""
    return str(float(value)) if isinstance(value, int | float) else str(value)


@pytest.mark.parametrize("expectation", CASES, ids=lambda e: e.describe())
def test_sql_and_gx_agree(expectation: Expect, tmp_path: Path) -> None:
    assert supported(expectation)
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    staged = wh.stage("t", "r", FRAME)
    (fast,) = run_sql(wh, staged, [expectation])
    (slow,) = run_expectations(FRAME, "t", [expectation])
    assert fast.success == slow.success
    assert fast.unexpected_count == slow.unexpected_count
    if slow.unexpected_percent is not None:
        assert fast.unexpected_percent == pytest.approx(slow.unexpected_percent)
    if expectation.type != "expect_compound_columns_to_be_unique":  # GX samples dicts there
        assert sorted(map(_norm, fast.unexpected_sample)) == sorted(
            map(_norm, slow.unexpected_sample))
    if fast.success and "mostly" in expectation.kwargs:
        assert fast.unexpected_rows == slow.unexpected_rows
    if expectation.type.startswith("expect_table") or expectation.type in AGG_RULES:
        assert fast.observed_value is not None and slow.observed_value is not None
        assert float(fast.observed_value) == pytest.approx(float(slow.observed_value))


def test_the_suite_pass_also_audits_the_contract(tmp_path: Path) -> None:
    """The step audits the contract in the suite's own query: a broken rule stops it there,
    naming every broken rule; a kept contract leaves the outcomes as they were."""
    from starsmith.contract import Column, Kind, Model, Strategy
    from starsmith.errors import DataError

    model = Model("t", Kind.STAGING, (), (Column("id", pl.Int64(), "the key", nullable=False),
                                          Column("code", pl.String(), "a code")),
                  lambda inputs, ctx: next(iter(inputs.values())), Strategy.FULL,
                  unique_key=("id",), description="a contract table")
    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    suite = [CASES[2], CASES[8]]
    staged = wh.stage("t", "r", FRAME.select("id", "code"))
    with pytest.raises(DataError, match=r"1 row\(s\) with null id; 2 row\(s\) with duplicate id"):
        run_sql(wh, staged, suite, contract=model)
    clean = wh.stage("t", "clean", FRAME.select("id", "code").unique("id").drop_nulls("id"))
    assert run_sql(wh, clean, suite, contract=model) == run_sql(wh, clean, suite)
    # the suite's uniqueness rule on the contract's key is then taken from the contract: the
    # broken case above raised before it could be judged unique
    assert CASES[8].kwargs["column"] == "id" and run_sql(wh, clean, [CASES[8]], contract=model)[
        0].success
