"""The one interface the store's SQL runs through, so that each query is written once for
SQLite and PostgreSQL.

Queries name their parameters (``:name``) and read rows by column name. ``transaction()`` is
the one transaction helper: statements on the database it yields commit together, or not at
all if the block raises. A statement outside a transaction commits on its own.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Mapping, Protocol, Sequence

__all__ = ["Database", "Dialect", "Row", "StoreBase"]

#: A result row, read by column name (``aiosqlite.Row`` or ``asyncpg.Record``).
Row = Mapping[str, Any]
Dialect = Literal["sqlite", "postgresql"]


class Database(Protocol):
    """An open connection (SQLite) or pool (PostgreSQL) that runs named-parameter SQL."""

    #: Which SQL the database speaks, for the few statements that differ.
    dialect: Dialect
    #: What a statement raises when it breaks a unique constraint.
    integrity_errors: tuple[type[Exception], ...]

    async def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run one statement; returns how many rows it inserted, updated or deleted."""

    async def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run one statement once per parameter mapping in ``rows``."""

    async def fetch(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Run one query; returns every row."""

    async def fetchrow(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """Run one query; returns its first row, or ``None``."""

    def transaction(self) -> AbstractAsyncContextManager[Database]:
        """A database whose statements commit together when the block exits normally and
        roll back when it raises (the exception propagates)."""

    async def close(self) -> None:
        """Close the connection or pool."""


class StoreBase:
    """What the store's parts share: the open ``Database``."""

    _db: Database | None = None

    @property
    def db(self) -> Database:
        """The open database; raises ``RuntimeError`` before ``open()`` or after ``close()``."""
        if self._db is None:
            raise RuntimeError("store is not open: call `await store.open()` first")
        return self._db
