"""Opening a schema 1 store: batches gain their signed transaction, unless one is in flight."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
from eth_account import Account

from aep2.eddsa import SessionKey
from aep2.intent import Intent
from aep2.mandate import Mandate
from aep2.sqlite_store import SCHEMA_VERSION, SQLiteStore
from aep2.store import Reservation

OWNER = Account.create()
KEY = SessionKey(0xC0FFEE)
ASSET = "0x" + "11" * 20
PAYEE = "0x" + "22" * 20


async def schema_1_store(path: str, *, submitted: bool) -> None:
    """Write a store as schema 1 left it: one batch, ``proving`` or ``submitted``."""
    store = SQLiteStore(path)
    await store.open()
    intent = Intent(
        payer=OWNER.address, asset=ASSET, session_key=KEY.public_key, max_amount=1_000, max_per_payment=100,
        valid_after=0, valid_before=2**40, chain_id=31337, verifying_contract="0x" + "33" * 20,
    )
    await store.save_intent(intent.sign(OWNER.key))
    mandate = Mandate(intent.intent_id, PAYEE, 10, 0, 2**39, 7)
    limits = Reservation(1_000, 100, 10_000, 0)
    payment_id = await store.reserve(mandate, KEY.sign(1), OWNER.address, ASSET, limits, time.time())
    batch = await store.seal_batch([payment_id], time_ref=1)
    if submitted:
        await store.mark_batch_submitted(batch.batch_id, "0x" + "ab" * 32, b"raw", 0)
    for column in ("raw_tx", "tx_nonce"):
        await store.conn.execute(f"ALTER TABLE batches DROP COLUMN {column}")
    await store.conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    await store.close()


def schema(path: str) -> tuple[int, set[str]]:
    """The store's schema version and the columns of its batches table."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        columns = {row[0] for row in db.execute("SELECT name FROM pragma_table_info('batches')")}
    return version, columns


async def test_schema_1_store_records_batch_transactions_after_opening(tmp_path):
    path = str(tmp_path / "s.sqlite")
    await schema_1_store(path, submitted=False)
    store = SQLiteStore(path)
    await store.open()
    assert schema(path)[0] == SCHEMA_VERSION
    [batch] = await store.open_batches()
    assert batch.raw_tx is None and batch.tx_nonce is None
    await store.mark_batch_submitted(batch.batch_id, "0x" + "cd" * 32, b"\x02signed", 7)
    submitted = await store.get_batch(batch.batch_id)
    assert (submitted.status, submitted.tx_hash, submitted.raw_tx, submitted.tx_nonce) == (
        "submitted", "0x" + "cd" * 32, b"\x02signed", 7,
    )
    await store.close()


async def test_schema_1_store_with_a_batch_in_flight_is_refused_unchanged(tmp_path):
    path = str(tmp_path / "s.sqlite")
    await schema_1_store(path, submitted=True)
    store = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="submitted batch"):
        await store.open()
    await store.close()
    version, columns = schema(path)
    assert version == 1 and {"raw_tx", "tx_nonce"}.isdisjoint(columns)
