"""The load strategies, written once as SQL trees and rendered for each engine by sqlglot.

DuckDB and BigQuery run the same statements: a strategy is a list of statements that the target
runs inside one transaction together with the run-log row, so a publish is all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import sqlglot
from sqlglot import exp


def _table(name: str) -> exp.Table:
    """A table name (``schema.table``, or already quoted), or a table function such as
    ``read_parquet('...')``."""
    if "(" in name or '"' in name:
        table = sqlglot.maybe_parse(name, into=exp.Table, dialect="duckdb")
        assert isinstance(table, exp.Table)
        return table
    return exp.to_table(".".join(f'"{p}"' for p in name.split(".")))


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def _keys_match(keys: Sequence[str], left: str, right: str) -> exp.Expr:
    return exp.and_(*[exp.EQ(this=_col(k, left), expression=_col(k, right)) for k in keys])


def replace_all(target: str, staged: str) -> list[exp.Expr]:
    """Full refresh: the target becomes the staged table."""
    return [exp.Create(this=_table(target), kind="TABLE", replace=True,
                       expression=exp.select("*").from_(_table(staged)))]


def create_like(target: str, staged: str) -> exp.Expr:
    """An empty target with the staged table's columns, for the first incremental publish."""
    return exp.Create(this=_table(target), kind="TABLE", exists=True,
                      expression=exp.select("*").from_(_table(staged)).limit(0))


def replace_keys(target: str, staged: str, keys: Sequence[str],
                 columns: Sequence[str]) -> list[exp.Expr]:
    """Delete every row of the keys the staged table holds, then insert the staged rows.

    The SCD strategy, by surrogate key: the staged rows are the new and changed versions, so the
    target's other rows are never rewritten. One key column uses ``IN`` (measured ~20% faster
    than ``EXISTS`` on DuckDB at 10M rows); a compound key uses a correlated ``EXISTS``.
    """
    if len(keys) == 1:
        cond: exp.Expr = exp.In(this=_col(keys[0]), query=exp.Subquery(
            this=exp.select(_col(keys[0])).from_(_table(staged))))
        delete = exp.Delete(this=_table(target), where=exp.Where(this=cond))
    else:
        exists = exp.Exists(this=exp.select("1").from_(exp.alias_(_table(staged), "s", table=True))
                            .where(_keys_match(keys, "s", "t")))
        delete = exp.Delete(this=exp.alias_(_table(target), "t", table=True),
                            where=exp.Where(this=exists))
    return [delete, insert_from(target, staged, columns)]


def overwrite_partitions(target: str, staged: str, partition: str, columns: Sequence[str],
                         values: Sequence[object] | None = None) -> list[exp.Expr]:
    """Replace the given partitions (default: those the staged rows fall in) with the staged rows.

    Naming the partitions explicitly matters: a re-run whose batch lost every row of a day must
    still empty that day's partition.
    """
    if values is not None:
        cond: exp.Expr = exp.In(this=_col(partition),
                                      expressions=[_literal(v) for v in values])
    else:
        parts = exp.select(_col(partition)).from_(_table(staged)).distinct()
        cond = exp.In(this=_col(partition), query=exp.Subquery(this=parts))
    delete = exp.Delete(this=_table(target), where=exp.Where(this=cond))
    return [delete, insert_from(target, staged, columns)]


def merge(target: str, staged: str, keys: Sequence[str],
          columns: Sequence[str]) -> list[exp.Expr]:
    """Upsert by key: matched rows take the staged values, new keys are inserted."""
    sets = [exp.EQ(this=_col(c), expression=_col(c, "s")) for c in columns if c not in keys]
    sql = exp.Merge(
        this=exp.alias_(_table(target), "t", table=True),
        using=exp.alias_(_table(staged), "s", table=True),
        on=_keys_match(keys, "t", "s"),
        whens=exp.Whens(expressions=[
            exp.When(matched=True, then=exp.Update(expressions=sets)),
            exp.When(matched=False, then=exp.Insert(
                this=exp.Tuple(expressions=[_col(c) for c in columns]),
                expression=exp.Tuple(expressions=[_col(c, "s") for c in columns]))),
        ]),
    )
    return [sql]


def _literal(value: object) -> exp.Expr:
    if isinstance(value, date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("DATE"))
    if isinstance(value, int):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def insert_from(target: str, staged: str, columns: Sequence[str]) -> exp.Expr:
    """``INSERT INTO target (columns) SELECT columns FROM staged``: by name, never by position."""
    return exp.insert(exp.select(*[_col(c) for c in columns]).from_(_table(staged)),
                      _table(target), columns=[exp.to_identifier(c, quoted=True) for c in columns])


def semi_join(alias: str, frame: str, columns: Sequence[str]) -> str:
    """``SEMI JOIN frame ON`` equal columns, as SQL text (``USING`` does not transpile to EXISTS)."""
    cond = " AND ".join(f'{alias}."{c}" = _sj."{c}"' for c in columns)
    return f"SEMI JOIN {frame} _sj ON {cond}"


def keys_in(alias: str, frame: str, columns: Sequence[str]) -> str:
    """A condition: the row's key is among the frame's, as SQL text. One column is an ``IN``
    subquery: DuckDB read 150k of 10M rows ~20% faster that way than by ``SEMI JOIN``."""
    if len(columns) == 1:
        return f'{alias}."{columns[0]}" IN (SELECT "{columns[0]}" FROM {frame})'
    cond = " AND ".join(f'{alias}."{c}" = _k."{c}"' for c in columns)
    return f"EXISTS (SELECT 1 FROM {frame} _k WHERE {cond})"


def render(statements: Sequence[exp.Expr], dialect: str) -> list[str]:
    return [s.sql(dialect=dialect) for s in statements]


def parse_check(sql: str, dialect: str) -> exp.Expr:
    """Parse SQL in a dialect; used to check rendered statements round-trip."""
    return sqlglot.parse_one(sql, read=dialect)
