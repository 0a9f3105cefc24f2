"""``SQLiteStore``: the zero-configuration ``PaymentStore``, one file via aiosqlite.

Durability: WAL with ``synchronous=NORMAL`` survives a crash of the process (what the
gateway needs: a reservation is committed before the response is sent); pass
``synchronous="FULL"`` to also survive power loss, at one fsync per payment. Several
processes (gateway, settlement processor) may open the same file; SQLite runs their writes
one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any, AsyncIterator, Mapping, Sequence

import aiosqlite

from .base import SQLStore
from .database import Database, Dialect, Row

__all__ = ["SQLiteStore", "SQLiteDatabase"]


class SQLiteDatabase:
    """A ``Database`` on one aiosqlite connection.

    One connection has one transaction at a time: a lock gives the connection to one
    statement, or to one ``transaction()`` block, at a time, so no statement lands inside
    another caller's transaction.
    """

    dialect: Dialect = "sqlite"
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock | None = None) -> None:
        self._conn = conn
        # None inside a transaction: the block already holds the connection.
        self._lock = lock

    def _turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._lock if self._lock is not None else contextlib.nullcontext()

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        async with self._turn():
            cursor = await self._conn.execute(sql, params or {})
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        async with self._turn():
            await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self._turn():
            return list(await self._conn.execute_fetchall(sql, params or {}))

    async def fetchrow(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        # Read to the end: a statement left half-read would hold the transaction open.
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        if self._lock is None:
            raise RuntimeError("transactions do not nest")
        async with self._lock:
            # IMMEDIATE: take the write lock now, so other processes wait at BEGIN (busy
            # timeout) rather than fail on a lock upgrade halfway through.
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteDatabase(self._conn)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def close(self) -> None:
        await self._conn.close()


class SQLiteStore(SQLStore):
    """The default ``PaymentStore``: ``path`` is a file (or ``":memory:"`` for one process).

    ``synchronous``: ``"NORMAL"`` or ``"FULL"`` (see the module docstring); anything else
    raises ``ValueError``.
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous: must be 'NORMAL' or 'FULL'")
        self.path = path
        self._synchronous = synchronous

    async def _connect(self) -> Database:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={self._synchronous}")
        await conn.execute("PRAGMA busy_timeout=10000")
        return SQLiteDatabase(conn, asyncio.Lock())
