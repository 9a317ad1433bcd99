"""The DuckDB target (the embedded default)."""

from starsmith.loaders.duckdb.warehouse import DuckDBWarehouse
from starsmith.loaders.target import Publish

__all__ = ["DuckDBWarehouse", "Publish"]
