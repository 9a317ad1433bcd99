"""The text an extract builds from what it is given: the connection URI it opens, the messages it
shows (never a password), and the SQL it wraps a user's query in."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import sqlglot

from starsmith.loaders.extract.connections import mask
from starsmith.loaders.extract.postgres import with_timeout
from starsmith.loaders.extract.spec import Postgres


def test_a_password_is_masked_whole_even_with_a_space_or_percent_encoded() -> None:
    said = "connection to server failed: password=se cret rejected for user=etl"
    assert "cret" not in mask(said, "se cret")
    uri_said = "could not connect to postgresql://etl:p@ss@db:5432/shop"
    assert "p@ss" not in mask(uri_said, "p%40ss")
    assert "ss@db" not in mask(uri_said, "p%40ss")


def test_the_connect_timeout_is_added_without_reencoding_other_options() -> None:
    uri = "postgresql://etl@db:5432/shop?options=-c%20search_path%3Dshop&sslmode="
    got = with_timeout(uri)
    assert got.startswith(uri)  # the options exactly as given (%20, not "+"), blank kept
    assert dict(parse_qsl(urlsplit(got).query))["connect_timeout"]
    assert with_timeout(got) == got  # set once


def test_a_query_ending_in_a_comment_keeps_its_closing_parenthesis() -> None:
    spec = Postgres(connection="shop", query="SELECT id, amount FROM orders -- the day's rows")
    sql = f"SELECT * FROM {spec.relation}"
    parsed = sqlglot.parse_one(sql, read="postgres")
    assert parsed.find(sqlglot.exp.Subquery) is not None
