"""The BigQuery target: tables from model specs, staged loads, one-transaction publishes."""
