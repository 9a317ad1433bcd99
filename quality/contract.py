"""The model contract checked on staged rows, before publish (write, audit, publish).

These checks come from the spec itself (declared non-null columns, the unique key), so every
model is gated even before it declares an expectation suite. They run as one SQL query on the
staged table, in the warehouse, without moving the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import polars as pl

from starsmith.errors import DataError

if TYPE_CHECKING:  # models.contract imports the quality declarations: no runtime cycle
    from models.contract import Model


class Queryable(Protocol):
    def query(self, query: str, params: list[object] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame: ...


def contract_counts_sql(staged: str, model: Model) -> str:
    parts = [f'count(*) FILTER (WHERE "{c.name}" IS NULL) AS "null:{c.name}"'
             for c in model.columns if not c.nullable]
    if model.unique_key:
        keys = ", ".join(f'"{k}"' for k in model.unique_key)
        key = keys if len(model.unique_key) == 1 else f"({keys})"
        label = ",".join(model.unique_key)
        parts.append(f'count({key}) - count(DISTINCT {key}) AS "duplicate:{label}"')
    return f"SELECT {', '.join(parts) or '0 AS none'} FROM {staged}"


def audit_staged(wh: Queryable, staged: str, model: Model) -> None:
    """Raise a non-retryable DataError naming every broken contract rule; publish nothing."""
    counts = wh.query(contract_counts_sql(staged, model)).row(0, named=True)
    broken = {k: v for k, v in counts.items() if k != "none" and v}
    if broken:
        detail = "; ".join(f"{v} row(s) with {k.split(':')[0]} {k.split(':')[1]}"
                           for k, v in broken.items())
        raise DataError(f"staged rows of {model.name} break the model contract: {detail}",
                        where=staged, fix="The published table was left as it was; fix the "
                        "transform or the source, then build again")
