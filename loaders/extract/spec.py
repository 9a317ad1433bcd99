"""How a source is extracted from a database: declared in the model files, secrets never.

Kept free of imports from the rest of starsmith but the errors, so that ``starsmith.contract``
can name :class:`Postgres` in :class:`~starsmith.contract.Source` without an import cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starsmith.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Postgres:
    """A source extracted from a PostgreSQL table or query by ``starsmith extract``.

    ``table`` (``"orders"`` or ``"sales.orders"``) or ``query`` (a ``SELECT``), not both.
    ``cursor``: the column that says what changed (``updated_at``, or an ever-growing ``id``):
    each day lands the rows past the previous landed day's high watermark; None lands the full
    table every day (a snapshot). ``connection``: a name, resolved to a URI from the
    environment (``STARSMITH_CONN_<NAME>``) or the project's secrets file, so the model files
    hold no credentials.
    """

    connection: str
    table: str | None = None
    query: str | None = None
    cursor: str | None = None

    def __post_init__(self) -> None:
        where = f"Postgres(connection={self.connection!r})"
        if (self.table is None) == (self.query is None):
            raise ConfigError("a Postgres extract needs a table or a query (one of them)",
                              where=where, fix='Give table="orders" or query="SELECT ..."')
        if not _NAME.fullmatch(self.connection):
            raise ConfigError(f"connection name {self.connection!r} is not a plain name",
                              where=where, fix="Use letters, digits and _ (it names "
                              "STARSMITH_CONN_<NAME> or an entry of the secrets file)")
        if self.table is not None and not all(_NAME.fullmatch(p) for p in self.table.split(".")):
            raise ConfigError(f"table {self.table!r} is not a table name (schema.table)",
                              where=where, fix="Use query=... for anything but a table")
        if self.query is not None and self.query.strip().rstrip(";").strip() == "":
            raise ConfigError("the extract query is empty", where=where)
        if self.cursor is not None and not self.cursor:
            raise ConfigError("cursor must name a column, or be None for a full snapshot",
                              where=where)

    @property
    def relation(self) -> str:
        """What the extract reads, as SQL: the quoted table or the query as a subquery."""
        if self.table is not None:
            return ".".join(f'"{p}"' for p in self.table.split("."))
        assert self.query is not None
        # on a line of its own: a query ending in a -- comment would swallow the parenthesis
        return f"({self.query.strip().rstrip(';')}\n) AS extract_query"

    @property
    def described(self) -> str:
        """The table, or the query's first line, for messages."""
        if self.table is not None:
            return f"table {self.table}"
        first = " ".join(str(self.query).split())
        return f"query {first[:80]}{'...' if len(first) > 80 else ''}"

    @property
    def incremental(self) -> bool:
        return self.cursor is not None
