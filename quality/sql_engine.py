"""A fast path for the common expectations: the same rules, counted by one SQL pass in DuckDB.

great-expectations on pandas took 5-6x a Polars pass here, and its SQL engine needs patches to
run on DuckDB; at 10M rows that makes validation slower than the build it guards. The
expectation types below are evaluated with GX's semantics (unexpected counts and percentages over
the non-null values, ``mostly`` against that share, a sample of 20 unexpected values, row indices
for quarantine) as one aggregate query over the staged rows, plus one GROUP BY per uniqueness
rule. Every other type still runs through GX. ``tests/test_quality_engines.py`` checks that both
engines agree on every type here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from starsmith.quality.contract import contract_checks, refuse_broken
from starsmith.quality.expect import Expect
from starsmith.quality.gx_engine import Outcome
from starsmith.quality.queryable import Queryable

if TYPE_CHECKING:  # models.contract imports the quality declarations: no runtime cycle
    from starsmith.contract import Model


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else "'" + value.replace("'", "''") + "'"


def _between(kw: dict[str, Any]) -> str:
    col, parts = _q(kw["column"]), []
    if kw.get("min_value") is not None:
        parts.append(f"{col} {'<=' if kw.get('strict_min') else '<'} {_lit(kw['min_value'])}")
    if kw.get("max_value") is not None:
        parts.append(f"{col} {'>=' if kw.get('strict_max') else '>'} {_lit(kw['max_value'])}")
    return " OR ".join(parts) or "false"


# type -> the condition that makes a non-null row unexpected
ROW_RULES: dict[str, Callable[[dict[str, Any]], str]] = {
    "expect_column_values_to_not_be_null": lambda kw: f"{_q(kw['column'])} IS NULL",
    "expect_column_values_to_be_in_set": lambda kw:
        f"{_q(kw['column'])} NOT IN ({', '.join(_lit(v) for v in kw['value_set'])})",
    "expect_column_values_to_not_be_in_set": lambda kw:
        f"{_q(kw['column'])} IN ({', '.join(_lit(v) for v in kw['value_set'])})",
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_match_regex": lambda kw:
        f"NOT regexp_matches({_q(kw['column'])}, {_lit(kw['regex'])})",
}
UNIQUE_RULES = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
TABLE_RULES = {"expect_table_row_count_to_be_between"}
# type -> the aggregates it needs, and its observed value from them (GX's metric definitions)
AGG_RULES: dict[str, tuple[Callable[[str], list[str]], Callable[[list[Any]], Any]]] = {
    "expect_column_proportion_of_unique_values_to_be_between": (
        lambda c: [f"count(DISTINCT {c})", f"count({c})"],
        lambda v: v[0] / v[1] if v[1] else 0.0),
    "expect_column_unique_value_count_to_be_between": (
        lambda c: [f"count(DISTINCT {c})"], lambda v: int(v[0])),
}


def supported(e: Expect) -> bool:
    return (e.type in ROW_RULES or e.type in UNIQUE_RULES or e.type in TABLE_RULES
            or e.type in AGG_RULES)


def _within(value: Any, kw: dict[str, Any]) -> bool:
    """GX's ``min_value``/``max_value`` test, with ``strict_min``/``strict_max``."""
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if value is None:
        return False
    above = lo is None or (value > lo if kw.get("strict_min") else value >= lo)
    below = hi is None or (value < hi if kw.get("strict_max") else value <= hi)
    return bool(above and below)


def _unique_keep(kw: dict[str, Any]) -> str:
    """Which rows a uniqueness rule looks at, as GX decides (``ignore_row_if``)."""
    cols = [_q(c) for c in kw.get("column_list") or [kw["column"]]]
    mode = kw.get("ignore_row_if", "all_values_are_missing" if "column_list" in kw
                  else "any_value_is_missing")
    if mode == "never":
        return "true"
    joiner = " AND " if mode == "any_value_is_missing" else " OR "
    return "(" + joiner.join(f"{c} IS NOT NULL" for c in cols) + ")"


def _unique_unexpected(wh: Queryable, staged: str, kw: dict[str, Any]) -> str:
    """Rows whose key occurs more than once; NULLs compare equal, as in GX's pandas engine."""
    key = ", ".join(_q(c) for c in kw.get("column_list") or [kw["column"]])
    return (f"SELECT * EXCLUDE (_n) FROM (SELECT *, count(*) OVER (PARTITION BY {key}) AS _n "
            f"FROM {staged} WHERE {_unique_keep(kw)}) WHERE _n > 1")


def run_sql(wh: Queryable, staged: str, expectations: Sequence[Expect], *,
            contract: Model | None = None, known_unique: bool = False) -> list[Outcome]:
    """Evaluate supported expectations on the staged table; one outcome each, in order.

    With ``contract``, the model's contract rules are counted in the same query and a broken one
    raises (as ``audit_staged`` would) before any expectation is judged: one pass over the
    staged rows instead of two. ``known_unique``: the contract's unique key is proven unique
    already (quality/contract.py).
    """
    checks = (contract_checks(staged, contract, known_unique=known_unique)
              if contract is not None else [])
    aggs = ["count(*) AS n", *[f"{sql} AS k{j}" for j, (_, sql) in enumerate(checks)]]
    for i, e in enumerate(expectations):
        kw = e.kwargs
        if e.type in ROW_RULES:
            col = _q(kw["column"])
            nonnull = "count(*)" if e.type == "expect_column_values_to_not_be_null" \
                else f"count({col})"
            aggs += [f"count(*) FILTER (WHERE {ROW_RULES[e.type](kw)}) AS u{i}", f"{nonnull} AS d{i}"]
        elif e.type in AGG_RULES:
            aggs += [f"{a} AS a{i}_{j}" for j, a in enumerate(AGG_RULES[e.type][0](_q(kw["column"])))]
        elif e.type in UNIQUE_RULES:  # counted here too: one query for the suite, not 1 + 2 a rule
            cols = kw.get("column_list") or [kw["column"]]
            # On the contract's unique key, a kept contract (checked below, before any outcome)
            # means every key occurs once, so no subset of rows repeats one: no second GROUP BY.
            implied = contract is not None and set(cols) == set(contract.unique_key)
            key = ", ".join(_q(c) for c in cols)
            repeats = ("0" if implied else
                       f"(SELECT coalesce(sum(CASE WHEN _n > 1 THEN _n ELSE 0 END), 0) FROM "
                       f"(SELECT count(*) AS _n FROM {staged} WHERE {_unique_keep(kw)} "
                       f"GROUP BY {key}))")
            aggs += [f"{repeats} AS u{i}", f"count(*) FILTER (WHERE {_unique_keep(kw)}) AS d{i}"]
    counts = wh.query(f"SELECT {', '.join(aggs)} FROM {staged}").row(0, named=True)
    if contract is not None:
        refuse_broken({label: counts[f"k{j}"] for j, (label, _) in enumerate(checks)}, staged,
                      contract)
    total = int(counts["n"])
    outcomes = []
    for i, e in enumerate(expectations):
        kw = e.kwargs
        if e.type in TABLE_RULES:
            outcomes.append(Outcome(e, _within(total, kw), json.dumps(total), None, None, [], []))
            continue
        if e.type in AGG_RULES:
            parts = [counts[k] for k in sorted(k for k in counts if k.startswith(f"a{i}_"))]
            observed = AGG_RULES[e.type][1](parts)
            outcomes.append(Outcome(e, _within(observed, kw), json.dumps(observed), None, None,
                                    [], []))
            continue
        if e.type in ROW_RULES:
            where = f"({ROW_RULES[e.type](kw)})"
            bad, denom = int(counts[f"u{i}"]), int(counts[f"d{i}"])
            column = kw["column"]
            rows_sql = f"SELECT * FROM {staged} WHERE {where}"
        else:
            rows_sql = _unique_unexpected(wh, staged, kw)
            bad, denom = int(counts[f"u{i}"]), int(counts[f"d{i}"])
            cols = kw.get("column_list") or [kw["column"]]
            column = cols[0] if len(cols) == 1 else ""
            where = ""
        share = 100 * bad / denom if denom else 0.0
        ok = (1 - bad / denom if denom else 1.0) >= float(kw.get("mostly", 1.0))
        sample: list[Any] = []
        indices: list[int] = []
        if bad:
            head = wh.query(f"SELECT * FROM ({rows_sql}) LIMIT 20")
            listed = kw.get("column_list") or []
            sample = (head[column].to_list() if column else
                      [dict(zip(listed, r, strict=True)) for r in head.select(listed).iter_rows()])
            if ok and "mostly" in kw and where:
                found = wh.query(f"SELECT i FROM (SELECT {wh.row_index} AS i, * "
                                 f"FROM {staged}) WHERE {where}")
                indices = [int(x) for x in found["i"].to_list()]
        outcomes.append(Outcome(e, ok, None, bad, share, sample, indices))
    return outcomes
