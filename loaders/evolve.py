"""Model changes against what the warehouse holds: what `plan` reports and a publish applies.

Like dbt's ``on_schema_change: append_new_columns`` and SQLMesh's plan: a column added to a model
is added to its table (and its quarantine table) before the publish; a column removed, renamed or
retyped is a breaking change, refused before any data moves, naming the column and the command
that rebuilds the table. A changed transform (same columns) is reported by its fingerprint, so the
team can decide to rebuild history with ``--full-refresh``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from starsmith.contract import Model
from starsmith.errors import ModelError


class Describes(Protocol):
    def table_types(self, table: str) -> dict[str, str] | None: ...

    def model_types(self, schema: pl.Schema) -> dict[str, str]: ...


@dataclass(frozen=True)
class SchemaDiff:
    """How a model's declared columns differ from its published table."""

    added: dict[str, str] = field(default_factory=dict)  # column -> the engine type to add
    removed: tuple[str, ...] = ()
    retyped: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (table, model)

    @property
    def breaking(self) -> bool:
        return bool(self.removed or self.retyped)

    def reasons(self) -> list[str]:
        out = [f"column {c!r} added ({t})" for c, t in self.added.items()]
        out += [f"column {c!r} removed" for c in self.removed]
        out += [f"column {c!r} changed type: table {a}, model {b}" for c, (a, b) in
                self.retyped.items()]
        return out


# Polars types whose Arrow form DuckDB reads differently from the staged Parquet form (the
# staging step writes these through a file): their declared type cannot be compared by name.
_UNCOMPARABLE = (pl.Duration, pl.Array, pl.Int128, pl.UInt128)


def schema_diff(wh: Describes, model: Model) -> SchemaDiff | None:
    """None when the table does not exist yet."""
    table = wh.table_types(model.name)
    if table is None:
        return None
    declared = wh.model_types(model.schema)
    added = {c: t for c, t in declared.items() if c not in table}
    removed = tuple(c for c in table if c not in declared)
    retyped = {c: (table[c], t) for c, t in declared.items() if c in table and table[c] != t
               and not isinstance(model.schema[c], _UNCOMPARABLE)
               and model.schema[c] != pl.Datetime("ms")}
    return SchemaDiff(added, removed, retyped)


def refuse_breaking(model: Model, diff: SchemaDiff) -> None:
    """Raise a non-retryable ModelError naming each breaking change and the way out."""
    if diff.breaking:
        raise ModelError(
            f"model {model.name} no longer matches its table: "
            + "; ".join(r for r in diff.reasons() if "added" not in r),
            where=f"table {model.name}",
            fix=f"Nothing was written. Rebuild it from history with `starsmith build -s "
                f"{model.name}+ --full-refresh`, or restore the column")
