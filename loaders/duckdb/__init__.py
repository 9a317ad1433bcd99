"""The DuckDB target (the embedded default)."""

from loaders.duckdb.warehouse import DuckDBWarehouse
from loaders.target import Publish

__all__ = ["DuckDBWarehouse", "Publish"]
