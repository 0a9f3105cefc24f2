"""``SQLStore``: the ``PaymentStore`` written once over a ``Database``, from its parts.

A backend subclasses it and says how to connect (``_connect``); the schema, the queries and
the records are the same on every backend.
"""

from __future__ import annotations

from typing import Self

from .batches import Batches
from .database import Database
from .exact import ExactPayments
from .reservations import Reservations
from .schema import migrate

__all__ = ["SQLStore"]


class SQLStore(Reservations, Batches, ExactPayments):
    """A ``PaymentStore`` on a SQL database; ``async with store:`` opens and closes it."""

    async def _connect(self) -> Database:
        raise NotImplementedError

    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent); raises what ``migrate``
        raises, with the connection closed again."""
        if self._db is not None:
            return
        db = await self._connect()
        try:
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        """Release the connection or pool (idempotent)."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
