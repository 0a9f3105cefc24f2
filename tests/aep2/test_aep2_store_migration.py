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


async def test_a_batch_records_its_proof_time_block_and_gas(new_store_location):
    async with create_store(new_store_location()) as store:
        batch = await store.seal_batch([], time_ref=1)
        assert (batch.prove_seconds, batch.block, batch.gas_used) == (None, None, None)
        await store.mark_batch_submitted(batch.batch_id, "0x" + "cd" * 32, b"\x02signed", 7, prove_seconds=2.75)
        submitted = await store.get_batch(batch.batch_id)
        assert (submitted.prove_seconds, submitted.block, submitted.gas_used) == (2.75, None, None)
        # positional arguments as before, the figures by keyword only
        await store.mark_batch_settled(batch.batch_id, "0x" + "cd" * 32, 41, gas_used=482_935)
        settled = await store.get_batch(batch.batch_id)
        assert (settled.status, settled.tx_hash, settled.block, settled.prove_seconds, settled.gas_used) == (
            "settled", "0x" + "cd" * 32, 41, 2.75, 482_935,
        )
        with pytest.raises(TypeError):
            await store.mark_batch_settled(batch.batch_id, "0x01", 1, 5)  # type: ignore[misc]


async def test_a_schema_2_store_gains_the_batch_figures_and_keeps_its_batches(new_store_location):
    location = new_store_location()
    async with create_store(location) as store:
        old = await store.seal_batch([], time_ref=1)
        await store.mark_batch_submitted(old.batch_id, "0x" + "ab" * 32, b"\x02old", 3)
        # Back to what release 2 wrote: no figure columns, version 2.
        for column in ("settled_block", "prove_seconds", "gas_used"):
            await store.db.execute(f"ALTER TABLE batches DROP COLUMN {column}")
        await store.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    async with create_store(location) as store:
        assert await version_of(location) == SCHEMA_VERSION == 3
        kept = await store.get_batch(old.batch_id)
        assert (kept.status, kept.tx_hash, kept.raw_tx, kept.tx_nonce) == ("submitted", "0x" + "ab" * 32, b"\x02old", 3)
        assert (kept.block, kept.prove_seconds, kept.gas_used) == (None, None, None)
        await store.mark_batch_settled(old.batch_id, "0x" + "ab" * 32, 12, gas_used=300_000)
        assert (await store.get_batch(old.batch_id)).gas_used == 300_000
    async with create_store(location) as store:  # migrated once: opening again changes nothing
        assert (await store.get_batch(old.batch_id)).block == 12
