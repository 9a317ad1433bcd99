"""Step SQL and load strategies, rendered for BigQuery: one source text, mapped by sqlglot.

Build steps write their queries once, in DuckDB's dialect, over ``main.<table>`` (the star),
``_starsmith.<table>`` (run metadata) and frames passed by name. Here sqlglot parses them, points
those names at the target's datasets and the uploaded frames, and writes BigQuery SQL (``SEMI
JOIN`` becomes ``EXISTS``, ``FILTER`` becomes ``COUNTIF``, ``EXCLUDE`` becomes ``EXCEPT``...).

The strategies of ``loaders/sql.py`` are mapped the same way, with BigQuery's rules:
- A table is created from its spec (descriptions, partitioning, clustering) before the
  transaction, since DDL cannot run inside one. So a full replace deletes and inserts rather
  than recreating, and "create if missing" disappears.
- In ``merge`` mode each replace (all rows, changed keys, rebuilt partitions) becomes one
  ``MERGE ... ON FALSE`` bounded by the delete's condition.
- ``delete_insert`` mode keeps the statement pairs and writes a key ``MERGE`` as the equivalent
  delete plus insert. It is for engines that cannot run a MERGE inside a transaction (the local
  emulator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import polars as pl
import sqlglot
from sqlglot import exp

from starsmith.errors import ConfigError
from starsmith.loaders import sql
from starsmith.loaders.bigquery.tables import bigquery_type

MERGE_MODES = ("merge", "delete_insert")


def qualified(project: str, dataset: str, table: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(table, quoted=True),
                     db=exp.to_identifier(dataset, quoted=True),
                     catalog=exp.to_identifier(project, quoted=True))


def ref_text(project: str, dataset: str, table: str) -> str:
    """A staged table as text that both dialects parse: ``"project"."dataset"."table"``."""
    return f'"{project}"."{dataset}"."{table}"'


def map_tables(tree: exp.Expr, project: str, datasets: Mapping[str, str],
               frames: Mapping[str, exp.Expr]) -> exp.Expr:
    """Point ``main.x``/``_starsmith.x`` at their datasets and frame names at uploaded tables."""
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    for table in list(tree.find_all(exp.Table)):
        if table.catalog:
            continue
        if table.db in datasets:
            table.replace(qualified(project, datasets[table.db], table.name).as_(
                table.alias, table=True) if table.alias else qualified(
                    project, datasets[table.db], table.name))
        elif not table.db and table.name in frames and table.name not in ctes:
            found = frames[table.name].copy()
            alias = table.alias or table.name
            table.replace(found.subquery(alias) if isinstance(found, exp.Select)
                          else found.as_(alias, table=True))
    positional = [m for m in tree.find_all(exp.Placeholder, bfs=False) if not m.this]
    for i, mark in enumerate(positional):  # ``?`` -> ``@p0``: named and positional cannot mix
        mark.set("this", f"p{i}")
    return tree


def to_bigquery(query: str | exp.Expr, project: str, datasets: Mapping[str, str],
                frames: Mapping[str, exp.Expr] | None = None) -> str:
    tree = sqlglot.parse_one(query, read="duckdb") if isinstance(query, str) else query.copy()
    return map_tables(tree, project, datasets, frames or {}).sql(dialect="bigquery")


INLINE_VALUES = 20_000  # frames up to this many values travel as a query parameter


def inline_frame(name: str, frame: pl.DataFrame) -> tuple[exp.Select, Any | None]:
    """A small frame as ``SELECT s.* FROM UNNEST(@name) AS s``: no load job, no table to drop."""
    from google.cloud import bigquery

    kinds = {c: bigquery_type(t, c)[0].partition("(")[0] for c, t in frame.schema.items()}
    if not frame.height:
        cols = ", ".join(f"CAST(NULL AS {k}) AS `{c}`" for c, k in kinds.items())
        return sqlglot.parse_one(f"SELECT * FROM (SELECT {cols}) WHERE FALSE",
                                 read="bigquery"), None  # type: ignore[return-value]
    rows = [bigquery.StructQueryParameter(None, *[
        bigquery.ScalarQueryParameter(c, kinds[c], v) for c, v in row.items()])
        for row in frame.iter_rows(named=True)]
    select = sqlglot.parse_one(f"SELECT s.* FROM UNNEST(@{name}) AS s", read="bigquery")
    return select, bigquery.ArrayQueryParameter(name, "STRUCT", rows)  # type: ignore[return-value]


def _replace_all(stmt: exp.Create, columns: Sequence[str]) -> list[exp.Expr]:
    select = stmt.expression
    assert isinstance(select, exp.Select)
    source = select.args["from_"].this
    target = stmt.this
    return [exp.Delete(this=target.copy(), where=exp.Where(this=exp.true())),
            exp.insert(exp.select(*[exp.column(c, quoted=True) for c in columns]).from_(
                source.copy()), target.copy(),
                columns=[exp.to_identifier(c, quoted=True) for c in columns])]


def _merge_as_replace(stmt: exp.Merge) -> list[exp.Expr]:
    """A full-row upsert is the staged keys deleted, then the staged rows inserted."""
    keys = [eq.this.name for eq in stmt.args["on"].find_all(exp.EQ)]
    insert = next(w.args["then"] for w in stmt.args["whens"].expressions
                  if isinstance(w.args.get("then"), exp.Insert))
    columns = [c.name for c in insert.this.expressions]
    target, source = stmt.this.copy(), stmt.args["using"].copy()
    target.set("alias", None)
    source.set("alias", None)
    return sql.replace_keys(target.sql("duckdb"), source.sql("duckdb"), keys, columns)


def _qualify(cond: exp.Expr, alias: str) -> exp.Expr:
    """Name the target in a delete's condition; subqueries keep their own columns."""
    cond = cond.copy()
    for col in list(cond.find_all(exp.Column)):
        if not col.table and col.find_ancestor(exp.Subquery, exp.Select) is None:
            col.set("table", exp.to_identifier(alias))
    return cond


def _replace_as_merge(delete: exp.Delete, insert: exp.Insert) -> exp.Merge:
    """A delete of some target rows plus an insert of the staged rows, as one ``MERGE ... ON
    FALSE``: every staged row is inserted, and only the rows the delete named are deleted (the
    changed keys of an SCD2 dimension, the rebuilt partitions of a fact)."""
    target = delete.this.copy()
    alias = target.alias or "t"
    if not target.alias:
        target = target.as_(alias, table=True)
    select = insert.expression
    source = select.args["from_"].this.copy()
    columns = [c.name for c in insert.this.expressions]
    where = delete.args["where"].this
    return exp.Merge(
        this=target, using=source.as_("src", table=True), on=exp.false(),
        whens=exp.Whens(expressions=[
            exp.When(matched=False, then=exp.Insert(
                this=exp.Tuple(expressions=[exp.column(c, quoted=True) for c in columns]),
                expression=exp.Tuple(expressions=[exp.column(c, "src", quoted=True)
                                                  for c in columns]))),
            exp.When(matched=False, source=True, condition=_qualify(where, alias),
                     then=exp.var("DELETE")),
        ]))


def _pairs(statements: Sequence[exp.Expr]) -> list[exp.Expr]:
    """Each DELETE followed by an INSERT into the same table becomes one MERGE."""
    out: list[exp.Expr] = []
    i = 0
    while i < len(statements):
        stmt, nxt = statements[i], statements[i + 1] if i + 1 < len(statements) else None
        if (isinstance(stmt, exp.Delete) and isinstance(nxt, exp.Insert)
                and isinstance(nxt.expression, exp.Select) and stmt.args.get("where")
                and stmt.this.name == nxt.this.this.name and stmt.this.db == nxt.this.this.db):
            out.append(_replace_as_merge(stmt, nxt))
            i += 2
            continue
        out.append(stmt)
        i += 1
    return out


def publish_statements(statements: Sequence[exp.Expr], columns: Sequence[str],
                       merge_mode: str = "merge") -> list[exp.Expr]:
    """The strategy's statements in the form BigQuery runs inside one transaction.

    In ``merge`` mode (real BigQuery) a replace of keys or partitions runs as one MERGE that
    touches only those rows; ``delete_insert`` keeps the two statements (the emulator).
    """
    if merge_mode not in MERGE_MODES:
        raise ConfigError(f"unknown BigQuery merge mode {merge_mode!r}", where="the target",
                          fix=f"Use one of {', '.join(MERGE_MODES)}")
    out: list[exp.Expr] = []
    for stmt in statements:
        if isinstance(stmt, exp.Create) and stmt.args.get("replace"):
            out += _replace_all(stmt, columns)
        elif isinstance(stmt, exp.Create) and stmt.args.get("exists"):
            continue  # the table was created from its spec before the transaction
        elif isinstance(stmt, exp.Merge) and merge_mode == "delete_insert":
            out += _merge_as_replace(stmt)
        else:
            out.append(stmt)
    return _pairs(out) if merge_mode == "merge" else out


def parameter(value: Any, index: int) -> Any:
    """A positional query parameter for ``?``, typed from the Python value."""
    from google.cloud import bigquery

    kinds: list[tuple[type, str]] = [(bool, "BOOL"), (int, "INT64"), (float, "FLOAT64"),
                                     (Decimal, "NUMERIC"), (datetime, "DATETIME"),
                                     (date, "DATE"), (time, "TIME"), (str, "STRING"),
                                     (bytes, "BYTES")]
    for cls, name in kinds:
        if isinstance(value, cls):
            if isinstance(value, datetime) and value.tzinfo is not None:
                name = "TIMESTAMP"
            return bigquery.ScalarQueryParameter(f"p{index}", name, value)  # type: ignore[arg-type]
    raise ConfigError(f"cannot pass {type(value).__name__} as a BigQuery parameter")
