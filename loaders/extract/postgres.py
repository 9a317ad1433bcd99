"""A PostgreSQL session through ADBC: Arrow record batches straight from the wire protocol
(``COPY ... TO STDOUT (FORMAT binary)`` under the hood), never a Python object per row.

Every driver error becomes a typed starsmith error, with any password scrubbed from the message:
a refused or dropped connection is retryable (the server restarts, the network comes back); bad
credentials, an unknown database or role, a missing privilege or bad SQL are ConfigErrors (a
retry cannot help, the project or the secrets must change); an unknown table or column is a
DataError (the source changed under the contract).

What one extract reads is one snapshot: the session runs a ``REPEATABLE READ READ ONLY``
transaction, so the high watermark and the rows read below it are taken from the same state of
the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa

from starsmith.errors import ConfigError, DataError, RetryableError, StarsmithError
from starsmith.loaders.extract.connections import mask, password_of

CONNECT_TIMEOUT_S = 10
_CONFIG_MARKERS = ("password authentication failed", "authentication failed", "no password",
                   "does not exist", "no pg_hba.conf entry", "permission denied",
                   "invalid dsn", "invalid uri", "invalid connection option")
_RETRY_MARKERS = ("connection refused", "could not connect", "timeout expired", "timed out",
                  "could not translate host", "server closed the connection",
                  "terminating connection", "connection reset", "no route to host",
                  "the database system is starting up", "the database system is shutting down",
                  "too many connections", "network is unreachable", "broken pipe")


def with_timeout(uri: str) -> str:
    """The URI with a ``connect_timeout``, unless it sets one: an unreachable host fails (and is
    retried) in seconds rather than hanging on the operating system's TCP timeout."""
    if "://" not in uri:  # a keyword DSN
        return uri if "connect_timeout" in uri else f"{uri} connect_timeout={CONNECT_TIMEOUT_S}"
    parts = urlsplit(uri)
    if "connect_timeout" in dict(parse_qsl(parts.query, keep_blank_values=True)):
        return uri
    # appended as text: re-encoding the others would turn an option's %20 into a "+", which
    # libpq does not read as a space
    extra = f"connect_timeout={CONNECT_TIMEOUT_S}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def typed(err: Exception, connection: str, secret: str, doing: str) -> StarsmithError:
    """The driver's error as a starsmith error naming the connection, never its password."""
    text = mask(str(err), secret).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    lower = text.lower()
    state = str(getattr(err, "sqlstate", "") or "")
    where = f"connection {connection!r}"
    if state in ("42703", "42P01") or ("does not exist" in lower and ("column" in lower
                                                                     or "relation" in lower)):
        return DataError(f"{doing}: {first}", where=where,
                         fix="The database changed under the source's contract: restore the "
                             "table or column, or change the source (and its query)")
    if state.startswith(("28", "3D", "42")) or any(m in lower for m in _CONFIG_MARKERS):
        return ConfigError(f"{doing}: {first}", where=where,
                           fix="Check the connection's user, password, database and grants "
                               "(STARSMITH_CONN_<NAME> or the secrets file)")
    if state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300", "40001", "40P01") \
            or any(m in lower for m in _RETRY_MARKERS):
        return RetryableError(f"{doing}: cannot reach the database: {first}", where=where,
                              fix="Check the server is up and reachable; the build retries "
                                  "with backoff")
    return RetryableError(f"{doing}: {first}", where=where,
                          fix="Run the extract again; if it keeps failing, look at the "
                              "server's log")


class Session:
    """One connection running one read-only snapshot transaction."""

    def __init__(self, connection: str, uri: str) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as pg

        self.name = connection
        self._secret = password_of(uri)
        self._errors: type[Exception] = adbc_driver_manager.Error
        try:
            self._conn = pg.connect(with_timeout(uri), autocommit=True)
        except self._errors as err:
            raise self._typed(err, "connecting") from None
        except Exception as err:  # a malformed URI, before the driver speaks to any server
            raise ConfigError(f"connecting: {mask(str(err), self._secret)}",
                              where=f"connection {connection!r}",
                              fix="Check the URI: postgresql://USER:PASSWORD@HOST:PORT/DB"
                              ) from None
        self._cur = self._conn.cursor()
        try:
            self.run("SET TIME ZONE 'UTC'", doing="setting the session's time zone")
            self.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", doing="starting a snapshot")
        except BaseException:  # no __exit__ will run for a session never made: close it here
            self.close()
            raise

    def _typed(self, err: Exception, doing: str) -> StarsmithError:
        return typed(err, self.name, self._secret, doing)

    def _fail(self, err: Exception, doing: str) -> StarsmithError:
        with contextlib.suppress(self._errors):  # the transaction is aborted: end it
            self._cur.execute("ROLLBACK")
        return self._typed(err, doing)

    def run(self, sql: str, params: Sequence[Any] = (), *, doing: str) -> None:
        try:
            self._cur.execute(sql, parameters=tuple(params) if params else None)
        except self._errors as err:
            raise self._fail(err, doing) from None

    def schema(self, sql: str, *, doing: str) -> pa.Schema:
        """The columns ``sql`` returns, without running it."""
        try:
            found: pa.Schema = self._cur.adbc_execute_schema(sql)
        except self._errors as err:
            raise self._fail(err, doing) from None
        return found

    def scalar(self, sql: str, params: Sequence[Any] = (), *, doing: str) -> Any:
        try:
            self._cur.execute(sql, parameters=tuple(params) if params else None)
            table = self._cur.fetch_arrow_table()
        except self._errors as err:
            raise self._fail(err, doing) from None
        return table.column(0)[0].as_py() if table.num_rows else None

    def batches(self, sql: str, params: Sequence[Any] = (), *, doing: str
                ) -> Iterator[pa.RecordBatch]:
        """The rows of ``sql`` as Arrow record batches, streamed."""
        try:
            self._cur.execute(sql, parameters=tuple(params) if params else None)
            reader = self._cur.fetch_record_batch()
            yield from reader
        except self._errors as err:
            raise self._fail(err, doing) from None

    def close(self) -> None:
        with contextlib.suppress(self._errors):
            self._cur.execute("COMMIT")
        for closer in (self._cur.close, self._conn.close):
            with contextlib.suppress(self._errors):
                closer()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
