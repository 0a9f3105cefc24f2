"""Opening a schema 1 store (ordered nonces, the previous contract) is refused, unchanged:
its mandates can only be settled by the release that accepted them. On SQLite and on
PostgreSQL alike."""

from __future__ import annotations

import contextlib
import sqlite3

import asyncpg
import pytest

from aep2.stores import SCHEMA_VERSION, create_store
from aep2.stores.postgres import is_postgres_url


async def version_of(location: str) -> int:
    """The recorded schema version, read past the store (which would migrate first)."""
    query = "SELECT value FROM meta WHERE key = 'schema_version'"
    if is_postgres_url(location):
        conn = await asyncpg.connect(location)
        try:
            return int(await conn.fetchval(query))
        finally:
            await conn.close()
    with contextlib.closing(sqlite3.connect(location)) as db:
        return int(db.execute(query).fetchone()[0])


async def test_a_schema_1_store_is_refused_and_left_unchanged(new_store_location):
    location = new_store_location()
    async with create_store(location) as store:
        await store.db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = create_store(location)
    with pytest.raises(RuntimeError, match="predates one-time nonces"):
        await store.open()
    await store.close()
    assert await version_of(location) == 1


async def test_a_new_store_records_batch_transactions(new_store_location):
    location = new_store_location()
    async with create_store(location) as store:
        assert await version_of(location) == SCHEMA_VERSION
        batch = await store.seal_batch([], time_ref=1)
        await store.mark_batch_submitted(batch.batch_id, "0x" + "cd" * 32, b"\x02signed", 7)
        submitted = await store.get_batch(batch.batch_id)
        assert (submitted.status, submitted.tx_hash, submitted.raw_tx, submitted.tx_nonce) == (
            "submitted", "0x" + "cd" * 32, b"\x02signed", 7,
        )
