"""Opening a schema 1 store (ordered nonces, the previous contract) is refused, unchanged:
its mandates can only be settled by the release that accepted them."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from aep2.sqlite_store import SCHEMA_VERSION, SQLiteStore


def version_of(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


async def test_a_schema_1_store_is_refused_and_left_unchanged(tmp_path):
    path = str(tmp_path / "s.sqlite")
    async with SQLiteStore(path) as store:
        await store.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="predates one-time nonces"):
        await store.open()
    await store.close()
    assert version_of(path) == 1


async def test_a_new_store_records_batch_transactions(tmp_path):
    async with SQLiteStore(str(tmp_path / "s.sqlite")) as store:
        assert version_of(store.path) == SCHEMA_VERSION
        batch = await store.seal_batch([], time_ref=1)
        await store.mark_batch_submitted(batch.batch_id, "0x" + "cd" * 32, b"\x02signed", 7)
        submitted = await store.get_batch(batch.batch_id)
        assert (submitted.status, submitted.tx_hash, submitted.raw_tx, submitted.tx_nonce) == (
            "submitted", "0x" + "cd" * 32, b"\x02signed", 7,
        )
