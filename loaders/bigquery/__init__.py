"""The BigQuery target (in progress): tables from model specs; loads come next (issue #5)."""
