"""The DuckDB target (the embedded default)."""

from loaders.duckdb.warehouse import DuckDBWarehouse, Publish

__all__ = ["DuckDBWarehouse", "Publish"]
