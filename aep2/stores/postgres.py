"""``PostgresStore``: the ``PaymentStore`` on a PostgreSQL server, via asyncpg.

One server serves several gateway replicas and the settlement processor: each process
opens its own pool. Reservations from every replica run side by side, each one atomic
statement that locks the intent's and the payer's rows (``aep2.stores.reservations``).
asyncpg prepares each statement once per connection, so the hot path is one round trip.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any, AsyncIterator, Mapping, Sequence

import asyncpg

from .base import SQLStore
from .database import Database, Dialect, Row

__all__ = ["PostgresStore", "PostgresDatabase", "is_postgres_url"]

_SCHEMES = ("postgresql://", "postgres://")
# ``:name`` but not the second colon of a ``::type`` cast.
_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def is_postgres_url(location: str) -> bool:
    """Whether ``location`` is a libpq URL (``postgresql://…`` or ``postgres://…``)."""
    return location.startswith(_SCHEMES)


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with ``:name`` parameters as PostgreSQL's ``$1``…, and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAMETER.sub(number, sql), tuple(names)


def _bind(sql: str, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    query, names = _numbered(sql)
    return query, [params[name] for name in names] if params is not None else []


class PostgresDatabase:
    """A ``Database`` on an asyncpg pool (each statement borrows a connection) or, inside
    ``transaction()``, on the one connection that holds the transaction."""

    dialect: Dialect = "postgresql"
    integrity_errors: tuple[type[Exception], ...] = (asyncpg.UniqueViolationError,)

    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection) -> None:
        self._executor = executor

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        query, args = _bind(sql, params)
        status = await self._executor.execute(query, *args)
        # A command tag such as "INSERT 0 1" or "UPDATE 3": the count comes last.
        count = status.rpartition(" ")[2]
        return int(count) if count.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        query, names = _numbered(sql)
        await self._executor.executemany(query, [[row[name] for name in names] for row in rows])

    async def fetch(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        query, args = _bind(sql, params)
        return list(await self._executor.fetch(query, *args))

    async def fetchrow(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        query, args = _bind(sql, params)
        return await self._executor.fetchrow(query, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        if not isinstance(self._executor, asyncpg.Pool):
            raise RuntimeError("transactions do not nest")
        async with self._executor.acquire() as conn, conn.transaction():
            yield PostgresDatabase(conn)

    async def close(self) -> None:
        if isinstance(self._executor, asyncpg.Pool):
            await self._executor.close()


class PostgresStore(SQLStore):
    """A ``PaymentStore`` on the PostgreSQL database at ``url`` (``postgresql://user@host:port/db``),
    through a pool of at most ``max_connections`` connections per process.

    Raises ``ValueError`` for a URL that is not ``postgresql://`` or ``postgres://``; ``open()``
    raises what asyncpg raises when the server cannot be reached.
    """

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"url: expected postgresql://…, got {url!r}")
        self.url = url
        self._max_connections = max_connections

    async def _connect(self) -> Database:
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._max_connections)
        return PostgresDatabase(pool)
