"""BigQuery tables from the demo catalogue, created in the emulator with the official client."""

from __future__ import annotations

import polars as pl
import pytest

from starsmith.errors import ConfigError
from starsmith.loaders.bigquery.tables import bigquery_type, current_view_sql, label, table_for
from starsmith.scaffold import demo_catalogue as load_catalogue
from tests.bigquery_emulator import PROJECT, Emulator


def test_types_map_to_bigquery() -> None:
    assert bigquery_type(pl.Int32()) == ("INT64", "NULLABLE")
    assert bigquery_type(pl.Decimal(14, 2)) == ("NUMERIC(14, 2)", "NULLABLE")
    assert bigquery_type(pl.Decimal(38, 12)) == ("BIGNUMERIC(38, 12)", "NULLABLE")
    assert bigquery_type(pl.Datetime("us")) == ("DATETIME", "NULLABLE")
    assert bigquery_type(pl.Datetime("us", "UTC")) == ("TIMESTAMP", "NULLABLE")
    assert bigquery_type(pl.List(pl.String())) == ("STRING", "REPEATED")
    with pytest.raises(ConfigError, match="type Object has no BigQuery equivalent"):
        bigquery_type(pl.Object(), "m.c")
    assert label("build-2024-01-02T00:00") == "build-2024-01-02t00_00"


@pytest.mark.bigquery
def test_every_model_becomes_a_described_partitioned_clustered_table(emulator: Emulator) -> None:
    client = emulator.client()
    client.create_dataset("star", exists_ok=True)
    cat = load_catalogue()
    for name in cat.order:
        client.create_table(table_for(cat.models[name], PROJECT, "star", "build-2024-01-02"))
    sales = client.get_table(f"{PROJECT}.star.fact_sales")
    assert sales.description == cat.models["fact_sales"].description
    assert sales.time_partitioning.field == "sale_date"
    assert sales.clustering_fields == ["customer_key", "product_key", "store_key"]
    assert sales.labels == {"model": "fact_sales", "run_id": "build-2024-01-02",
                            "managed_by": "starsmith"}
    fields = {f.name: f for f in sales.schema}
    assert fields["net_amount"].field_type in ("NUMERIC", "DECIMAL")
    assert fields["order_id"].mode == "REQUIRED"
    assert fields["customer_key"].description == "customer when the order was placed"
    dim = client.get_table(f"{PROJECT}.star.dim_customer")
    assert dim.time_partitioning is None and dim.clustering_fields == ["customer_id"]
    assert {f.name for f in dim.schema} >= {"customer_key", "valid_from", "valid_to", "is_current"}


@pytest.mark.bigquery
def test_each_scd_dimension_gets_a_current_view(emulator: Emulator) -> None:
    client = emulator.client()
    client.create_dataset("star2", exists_ok=True)
    model = load_catalogue().model("dim_store")
    client.create_table(table_for(model, PROJECT, "star2", "r"))
    client.query(f"INSERT INTO `{PROJECT}.star2.dim_store` (store_key, store_id, store_name, "
                 "city, region, valid_from, valid_to, is_current, is_inferred, run_id) VALUES "
                 "(1, 1, 'A', 'Porto', 'North', DATETIME '2024-01-01', DATETIME '2024-01-05', "
                 "false, false, 'r'), (2, 1, 'B', 'Porto', 'North', DATETIME '2024-01-05', "
                 "DATETIME '9999-12-31', true, false, 'r')").result()
    sql = current_view_sql(model, PROJECT, "star2")
    assert sql is not None
    client.query(sql).result()
    rows = list(client.query(f"SELECT store_key FROM `{PROJECT}.star2.dim_store_current`")
                .result())
    assert [r["store_key"] for r in rows] == [2]
