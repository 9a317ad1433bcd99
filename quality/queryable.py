"""What a quality rule needs of a warehouse: one query method over the staged rows.

Its own module so that the rule declarations (``checks.py``, imported by the model contract)
and the contract audit (which names the Model type) do not import each other.
"""

from __future__ import annotations

from typing import Protocol

import polars as pl


class Queryable(Protocol):
    row_index: str  # SQL for a staged row's position (engines differ: see the targets)

    def query(self, query: str, params: list[object] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame: ...
