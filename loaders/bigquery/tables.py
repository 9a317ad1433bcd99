"""BigQuery tables made from model specs: types, descriptions, partitioning, clustering, labels.

Analysts query what this creates, so the table says what the spec says: every column's
description and nullability, the table description, DATE partitioning of facts on their event
date, clustering on the keys queries filter and join on, and labels naming the model and the run.
Each SCD dimension also gets a ``<dim>_current`` view of its open versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl
from sqlglot import exp

from starsmith.contract import Model
from starsmith.errors import ConfigError

MAX_CLUSTER = 4  # BigQuery allows four clustering columns


def bigquery_type(dtype: pl.DataType, where: str = "") -> tuple[str, str]:
    """(BigQuery type, mode) for a Polars type; naive datetimes become DATETIME, not TIMESTAMP."""
    if isinstance(dtype, pl.List):
        inner_type = dtype.inner if isinstance(dtype.inner, pl.DataType) else dtype.inner()
        inner, _ = bigquery_type(inner_type, where)
        return inner, "REPEATED"
    if dtype.is_integer():
        return "INT64", "NULLABLE"
    if dtype.is_float():
        return "FLOAT64", "NULLABLE"
    if isinstance(dtype, pl.Decimal):
        precision, scale = dtype.precision or 38, dtype.scale
        fits = scale <= 9 and precision - scale <= 29
        return (f"NUMERIC({precision}, {scale})" if fits else
                f"BIGNUMERIC({min(precision, 76)}, {scale})"), "NULLABLE"
    if isinstance(dtype, pl.Datetime):
        return ("TIMESTAMP" if dtype.time_zone else "DATETIME"), "NULLABLE"
    simple = {pl.Boolean: "BOOL", pl.String: "STRING", pl.Date: "DATE", pl.Time: "TIME",
              pl.Binary: "BYTES"}
    for cls, name in simple.items():
        if isinstance(dtype, cls):
            return name, "NULLABLE"
    raise ConfigError(f"type {dtype} has no BigQuery equivalent", where=where,
                      fix="Cast the column to a supported type in the transform")


def schema_for(model: Model) -> list[Any]:
    from google.cloud import bigquery

    fields = []
    for col in model.columns:
        kind, mode = bigquery_type(col.dtype, f"{model.name}.{col.name}")
        if mode == "NULLABLE" and not col.nullable:
            mode = "REQUIRED"
        base, _, params = kind.partition("(")
        if params:
            precision, scale = (int(x) for x in params.rstrip(")").split(","))
            field = bigquery.SchemaField(col.name, base, mode=mode, description=col.description,
                                         precision=precision, scale=scale)
        else:
            field = bigquery.SchemaField(col.name, base, mode=mode, description=col.description)
        fields.append(field)
    return fields


def clustering_for(model: Model) -> list[str]:
    """The keys queries join and filter on: a fact's dimension keys, a dimension's natural key."""
    if model.fact:
        keys = [lk.output for lk in model.fact.lookups]
    elif model.dimension:
        keys = list(model.dimension.natural_key)
    else:
        keys = list(model.unique_key)
    return [k for k in keys if k in model.schema.names()][:MAX_CLUSTER]


def label(value: str) -> str:
    """A BigQuery label value: lowercase letters, digits, _ and -, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "_", value.lower())[:63]


def table_for(model: Model, project: str, dataset: str, run_id: str) -> Any:
    from google.cloud import bigquery

    table = bigquery.Table(f"{project}.{dataset}.{model.name}", schema=schema_for(model))
    table.description = model.description
    if model.fact and model.partition_by and model.schema[model.partition_by] == pl.Date():
        table.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=model.partition_by)
    clustering = clustering_for(model)
    if clustering:
        table.clustering_fields = clustering
    table.labels = {"model": label(model.name), "run_id": label(run_id), "managed_by": "starsmith"}
    return table


def current_view_sql(model: Model, project: str, dataset: str) -> str | None:
    """``CREATE OR REPLACE VIEW <dim>_current``: the open version of every key, for analysts."""
    if model.dimension is None:
        return None
    source = exp.to_table(f"`{project}`.`{dataset}`.`{model.name}`", dialect="bigquery")
    view = exp.to_table(f"`{project}`.`{dataset}`.`{model.name}_current`", dialect="bigquery")
    query = exp.select("*").from_(source).where(exp.column("is_current"))
    return exp.Create(this=view, kind="VIEW", replace=True, expression=query).sql("bigquery")


_ALIASES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def _kind(field: Any) -> str:
    base = str(field.field_type).partition("(")[0].strip()  # the emulator says "NUMERIC(10, 2)"
    return _ALIASES.get(base, base)


@dataclass(frozen=True)
class SchemaChange:
    """How a published table differs from its model: columns to add, or why it cannot evolve."""

    added: tuple[Any, ...] = ()
    relaxed: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()


def compare(model: Model, table: Any) -> SchemaChange:
    """Additive changes (a new nullable column, a column made nullable) evolve in place; a
    dropped or renamed column, a changed type or a new required column need a full refresh."""
    have = {f.name: f for f in table.schema}
    want = {f.name: f for f in schema_for(model)}
    added, relaxed, bad = [], [], []
    for name, field in want.items():
        old = have.get(name)
        if old is None:
            if field.mode == "REQUIRED":
                bad.append(f"new column {name} is required (not null): existing rows have none")
            else:
                added.append(field)
        elif _kind(old) != _kind(field):
            bad.append(f"column {name} changes type {_kind(old)} -> {_kind(field)}")
        elif old.mode == "REQUIRED" and field.mode != "REQUIRED":
            relaxed.append(name)
    bad += [f"column {name} is no longer in the model (dropped or renamed)"
            for name in have if name not in want]
    return SchemaChange(tuple(added), tuple(relaxed), tuple(bad))


def evolve(client: Any, model: Model, table: Any, change: SchemaChange, run_id: str) -> Any:
    """Apply an additive change and refresh descriptions and labels; metadata only, no data."""
    from google.cloud import bigquery

    described = {f.name: f.description for f in schema_for(model)}
    fields = []
    for f in table.schema:
        api = f.to_api_repr()
        if f.name in change.relaxed:
            api["mode"] = "NULLABLE"
        if described.get(f.name) and api.get("description") != described[f.name]:
            api["description"] = described[f.name]
        fields.append(bigquery.SchemaField.from_api_repr(api))
    table.schema = fields + list(change.added)
    table.description = model.description
    table.labels = {**(table.labels or {}), "model": label(model.name), "run_id": label(run_id),
                    "managed_by": "starsmith"}
    return client.update_table(table, ["schema", "description", "labels"])


def incompatible_error(model: Model, table_id: str, change: SchemaChange) -> ConfigError:
    return ConfigError(
        f"the model {model.name} no longer fits its BigQuery table: "
        + "; ".join(change.incompatible), where=table_id,
        fix=f"Nothing was loaded. Rebuild it with `starsmith build --target bigquery --select "
        f"{model.name} --full-refresh` (or restore the column in the model)")
