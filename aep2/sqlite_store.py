"""``PaymentStore`` on SQLite via aiosqlite: one file, WAL, schema created and migrated here.

The hot path (``reserve``) is a single ``INSERT … SELECT … WHERE <limits>`` statement, so the
check and the write are one atomic, durable transaction and one round trip to the
database thread; triggers keep each intent's committed total. Only a refused reservation
pays for a second query that names the reason. Amounts are SQLite integers (below 2^63
base units per figure).

Durability: WAL with ``synchronous=NORMAL`` survives a crash of the process (what the
gateway needs: a reservation is committed before the response is sent); pass
``synchronous="FULL"`` to also survive power loss, at one fsync per payment.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any, Sequence

import aiosqlite

from .eddsa import Signature
from .errors import ErrorCode, PaymentError
from .intent import SignedIntent
from .mandate import Mandate
from .payload import intent_json, parse_intent
from .store import SETTLEMENT_UNKNOWN, BatchRecord, CachedResponse, ExactPaymentRecord, MandateRecord, Reservation

__all__ = ["SQLiteStore", "SCHEMA_VERSION"]

# 2: one-time nonces (no sealed watermark); batches keep their signed transaction.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
    intent_id BLOB PRIMARY KEY,
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    body TEXT NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mandates (
    payment_id TEXT PRIMARY KEY,
    intent_id BLOB NOT NULL REFERENCES intents(intent_id),
    nonce INTEGER NOT NULL,
    payee TEXT NOT NULL,
    amount INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    request_hash TEXT NOT NULL,
    r8x TEXT NOT NULL,
    r8y TEXT NOT NULL,
    s TEXT NOT NULL,
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    status TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    batch_id INTEGER,
    tx_hash TEXT,
    settled_block INTEGER,
    reason TEXT,
    UNIQUE (intent_id, nonce)
);
CREATE INDEX IF NOT EXISTS mandates_by_status ON mandates (status, intent_id, nonce);
CREATE INDEX IF NOT EXISTS mandates_by_payer ON mandates (payer, asset, status, settled_block);
CREATE TABLE IF NOT EXISTS payer_outstanding (
    payer TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (payer, asset)
);
CREATE INDEX IF NOT EXISTS mandates_by_batch ON mandates (batch_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,
    time_ref INTEGER NOT NULL,
    tx_hash TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    raw_tx BLOB,
    tx_nonce INTEGER
);
CREATE TABLE IF NOT EXISTS payment_identifiers (
    payment_identifier TEXT PRIMARY KEY,
    payload_hash TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    response TEXT
);
CREATE TABLE IF NOT EXISTS exact_payments (
    nonce TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL,
    authorization TEXT NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    reason TEXT,
    created_at REAL NOT NULL
);
-- An intent's committed total counts every mandate that is not failed: it is what the
-- intent's maximum is checked against.
-- A payer's outstanding total counts mandates still to come out of the on-chain escrow
-- ('accepted' or 'batched'), so the escrow check is one lookup however long the queue.
CREATE TRIGGER IF NOT EXISTS mandate_inserted AFTER INSERT ON mandates BEGIN
    UPDATE intents SET committed = committed + NEW.amount WHERE intent_id = NEW.intent_id;
    INSERT OR IGNORE INTO payer_outstanding (payer, asset) VALUES (NEW.payer, NEW.asset);
    UPDATE payer_outstanding SET amount = amount + NEW.amount WHERE payer = NEW.payer AND asset = NEW.asset;
END;
CREATE TRIGGER IF NOT EXISTS mandate_deleted AFTER DELETE ON mandates BEGIN
    UPDATE intents SET committed = committed - OLD.amount WHERE intent_id = OLD.intent_id;
    UPDATE payer_outstanding SET amount = amount - OLD.amount
    WHERE payer = OLD.payer AND asset = OLD.asset AND OLD.status IN ('accepted', 'batched');
END;
CREATE TRIGGER IF NOT EXISTS mandate_left_queue AFTER UPDATE OF status ON mandates
WHEN OLD.status IN ('accepted', 'batched') AND NEW.status NOT IN ('accepted', 'batched') BEGIN
    UPDATE payer_outstanding SET amount = amount - OLD.amount WHERE payer = OLD.payer AND asset = OLD.asset;
END;
CREATE TRIGGER IF NOT EXISTS mandate_failed AFTER UPDATE OF status ON mandates
WHEN NEW.status = 'failed' AND OLD.status != 'failed' BEGIN
    UPDATE intents SET committed = committed - OLD.amount WHERE intent_id = OLD.intent_id;
END;
"""

# Outstanding for a payer and asset: everything not yet out of the on-chain escrow as of
# the block the cached balance was read at: the queue's running total, plus what settled
# after that block (a short index range: only settlements newer than the cached read).
_OUTSTANDING = """
((SELECT COALESCE(SUM(amount), 0) FROM payer_outstanding WHERE payer = :payer AND asset = :asset)
 + (SELECT COALESCE(SUM(amount), 0) FROM mandates
    WHERE payer = :payer AND asset = :asset AND status = 'settled' AND settled_block > :block))
"""

_RESERVE = f"""
INSERT INTO mandates (payment_id, intent_id, nonce, payee, amount, deadline, request_hash,
                      r8x, r8y, s, payer, asset, status, accepted_at)
SELECT :payment_id, :intent_id, :nonce, :payee, :amount, :deadline, :request_hash,
       :r8x, :r8y, :s, :payer, :asset, 'accepted', :now
FROM intents
WHERE intent_id = :intent_id
  AND :amount <= :max_per_payment
  AND committed + :amount <= :max_amount
  AND {_OUTSTANDING} + :amount <= :escrow
"""

_MANDATE_COLUMNS = (
    "payment_id, intent_id, nonce, payee, amount, deadline, request_hash, r8x, r8y, s, "
    "payer, asset, status, accepted_at, batch_id, tx_hash, reason"
)


def _mandate_record(row: Sequence[Any]) -> MandateRecord:
    mandate = Mandate(
        intent_id=bytes(row[1]),
        payee=row[3],
        amount=row[4],
        nonce=row[2],
        deadline=row[5],
        request_hash=int(row[6]),
    )
    return MandateRecord(
        payment_id=row[0],
        mandate=mandate,
        signature=Signature(int(row[7]), int(row[8]), int(row[9])),
        payer=row[10],
        asset=row[11],
        status=row[12],
        accepted_at=row[13],
        batch_id=row[14],
        tx_hash=row[15],
        reason=row[16],
    )


class SQLiteStore:
    """The default ``PaymentStore``. ``path`` is a file (or ``":memory:"`` for one process).

    Several processes (gateway, settlement processor) may open the same file.
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous: must be 'NORMAL' or 'FULL'")
        self.path = path
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        # Serialises this connection's multi-statement transactions against its other users.
        self._lock = asyncio.Lock()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open: call `await store.open()` first")
        return self._conn

    async def open(self) -> None:
        """Open the file, switch to WAL and create or migrate the schema."""
        if self._conn is not None:
            return
        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute(f"PRAGMA synchronous={self._synchronous}")
        await self._conn.execute("PRAGMA busy_timeout=10000")
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split(_SCHEMA):
                    await self._conn.execute(statement)
                cursor = await self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                row = await cursor.fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"store schema {version} is newer than this code ({SCHEMA_VERSION})")
                if 0 < version < SCHEMA_VERSION:
                    # Schema 1 ordered nonces per intent; its mandates belong to the old contract.
                    raise RuntimeError(
                        f"store schema {version} predates one-time nonces: settle it with the previous "
                        "release, then start a new store"
                    )
                await self._conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- intents -------------------------------------------------------------------------

    async def save_intent(self, signed_intent: SignedIntent) -> None:
        intent = signed_intent.intent
        await self.conn.execute(
            "INSERT OR IGNORE INTO intents (intent_id, payer, asset, body) VALUES (?, ?, ?, ?)",
            (intent.intent_id, intent.payer, intent.asset, json.dumps(intent_json(signed_intent))),
        )

    async def get_intent(self, intent_id: bytes) -> SignedIntent | None:
        cursor = await self.conn.execute("SELECT body FROM intents WHERE intent_id = ?", (intent_id,))
        row = await cursor.fetchone()
        return parse_intent(json.loads(row[0])) if row else None

    async def intent_ids(self) -> list[bytes]:
        """Every saved intent's id."""
        cursor = await self.conn.execute("SELECT intent_id FROM intents ORDER BY intent_id")
        return [bytes(row[0]) for row in await cursor.fetchall()]

    # -- reservations --------------------------------------------------------------------

    async def reserve(
        self, mandate: Mandate, signature: Signature, payer: str, asset: str, limits: Reservation, now: float
    ) -> str:
        payment_id = mandate.payment_id
        params = {
            "payment_id": payment_id,
            "intent_id": mandate.intent_id,
            "nonce": mandate.nonce,
            "payee": mandate.payee,
            "amount": mandate.amount,
            "deadline": mandate.deadline,
            "request_hash": str(mandate.request_hash),
            "r8x": str(signature.R8x),
            "r8y": str(signature.R8y),
            "s": str(signature.S),
            "payer": payer,
            "asset": asset,
            "now": now,
            "max_per_payment": min(limits.max_per_payment, 2**63 - 1),
            "max_amount": min(limits.max_amount, 2**63 - 1),
            "escrow": min(limits.escrow_balance, 2**63 - 1),
            "block": limits.escrow_block,
        }
        try:
            cursor = await self.conn.execute(_RESERVE, params)
        except sqlite3.IntegrityError:
            raise PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already used") from None
        if cursor.rowcount == 1:
            return payment_id
        raise await self._refusal(mandate, params)

    async def _refusal(self, mandate: Mandate, params: dict[str, Any]) -> PaymentError:
        cursor = await self.conn.execute(
            f"SELECT committed, {_OUTSTANDING} FROM intents WHERE intent_id = :intent_id", params
        )
        row = await cursor.fetchone()
        if row is None:
            return PaymentError(ErrorCode.UNKNOWN_INTENT, "intentId: not recorded")
        committed, outstanding = row
        used = await self.conn.execute(
            "SELECT 1 FROM mandates WHERE intent_id = :intent_id AND nonce = :nonce", params
        )
        if await used.fetchone():
            return PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already used")
        if mandate.amount > params["max_per_payment"]:
            return PaymentError(
                ErrorCode.PER_PAYMENT_CAP_EXCEEDED, f"mandate.amount: {mandate.amount} > cap {params['max_per_payment']}"
            )
        if committed + mandate.amount > params["max_amount"]:
            return PaymentError(
                ErrorCode.BUDGET_EXCEEDED,
                f"mandate.amount: {committed} committed + {mandate.amount} > intent maximum {params['max_amount']}",
            )
        return PaymentError(
            ErrorCode.INSUFFICIENT_ESCROW,
            f"mandate.amount: {outstanding} outstanding + {mandate.amount} > escrow {params['escrow']}",
        )

    async def release(self, payment_id: str) -> None:
        await self.conn.execute("DELETE FROM mandates WHERE payment_id = ? AND status = 'accepted'", (payment_id,))

    async def get_mandate(self, payment_id: str) -> MandateRecord | None:
        cursor = await self.conn.execute(
            f"SELECT {_MANDATE_COLUMNS} FROM mandates WHERE payment_id = ?", (payment_id,)
        )
        row = await cursor.fetchone()
        return _mandate_record(row) if row else None

    async def accepted_mandates(self) -> list[MandateRecord]:
        cursor = await self.conn.execute(
            f"SELECT {_MANDATE_COLUMNS} FROM mandates WHERE status = 'accepted' ORDER BY intent_id, nonce"
        )
        return [_mandate_record(row) for row in await cursor.fetchall()]

    async def mandates(self, status: str | None = None) -> list[MandateRecord]:
        """All mandates, or those in one status, ordered by intent then nonce."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        cursor = await self.conn.execute(
            f"SELECT {_MANDATE_COLUMNS} FROM mandates {where} ORDER BY intent_id, nonce", args
        )
        return [_mandate_record(row) for row in await cursor.fetchall()]

    # -- batches -------------------------------------------------------------------------

    async def seal_batch(self, payment_ids: Sequence[str], time_ref: int) -> BatchRecord:
        async with self._transaction():
            marks = ",".join("?" * len(payment_ids))
            cursor = await self.conn.execute(
                f"SELECT COUNT(*) FROM mandates WHERE payment_id IN ({marks}) AND status = 'accepted'",
                tuple(payment_ids),
            )
            if (await cursor.fetchone())[0] != len(payment_ids):
                raise ValueError("payment_ids: every mandate of a batch must be 'accepted'")
            cursor = await self.conn.execute(
                "INSERT INTO batches (status, time_ref, created_at) VALUES ('proving', ?, ?)", (time_ref, time.time())
            )
            batch_id = cursor.lastrowid
            await self.conn.execute(
                f"UPDATE mandates SET status = 'batched', batch_id = ? WHERE payment_id IN ({marks})",
                (batch_id, *payment_ids),
            )
        return BatchRecord(batch_id, "proving", tuple(payment_ids), time_ref)

    async def open_batches(self) -> list[BatchRecord]:
        cursor = await self.conn.execute(
            "SELECT batch_id FROM batches WHERE status IN ('proving', 'submitted') ORDER BY batch_id"
        )
        return [await self.get_batch(row[0]) for row in await cursor.fetchall()]

    async def get_batch(self, batch_id: int) -> BatchRecord:
        """One batch with its payment ids."""
        cursor = await self.conn.execute(
            "SELECT batch_id, status, time_ref, tx_hash, reason, raw_tx, tx_nonce FROM batches WHERE batch_id = ?",
            (batch_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise KeyError(batch_id)
        ids = await self.conn.execute(
            "SELECT payment_id FROM mandates WHERE batch_id = ? ORDER BY intent_id, nonce", (batch_id,)
        )
        payment_ids = tuple(r[0] for r in await ids.fetchall())
        raw_tx = bytes(row[5]) if row[5] is not None else None
        return BatchRecord(row[0], row[1], payment_ids, row[2], row[3], row[4], raw_tx, row[6])

    async def batches(self) -> list[BatchRecord]:
        """Every batch, oldest first."""
        cursor = await self.conn.execute("SELECT batch_id FROM batches ORDER BY batch_id")
        return [await self.get_batch(row[0]) for row in await cursor.fetchall()]

    async def batch_mandates(self, batch_id: int) -> list[MandateRecord]:
        cursor = await self.conn.execute(
            f"SELECT {_MANDATE_COLUMNS} FROM mandates WHERE batch_id = ? ORDER BY intent_id, nonce", (batch_id,)
        )
        return [_mandate_record(row) for row in await cursor.fetchall()]

    async def mark_batch_submitted(self, batch_id: int, tx_hash: str, raw_tx: bytes, tx_nonce: int) -> None:
        await self.conn.execute(
            "UPDATE batches SET status = 'submitted', tx_hash = ?, raw_tx = ?, tx_nonce = ? WHERE batch_id = ?",
            (tx_hash, raw_tx, tx_nonce, batch_id),
        )

    async def mark_batch_settled(self, batch_id: int, tx_hash: str, block: int) -> None:
        async with self._transaction():
            await self.conn.execute(
                "UPDATE batches SET status = 'settled', tx_hash = ? WHERE batch_id = ?", (tx_hash, batch_id)
            )
            await self.conn.execute(
                "UPDATE mandates SET status = 'settled', tx_hash = ?, settled_block = ? WHERE batch_id = ?",
                (tx_hash, block, batch_id),
            )

    async def fail_batch(self, batch_id: int, reason: str, *, retry: bool) -> None:
        async with self._transaction():
            await self.conn.execute(
                "UPDATE batches SET status = 'failed', reason = ? WHERE batch_id = ?", (reason, batch_id)
            )
            if retry:
                await self.conn.execute(
                    "UPDATE mandates SET status = 'accepted', batch_id = NULL WHERE batch_id = ?", (batch_id,)
                )
            else:
                await self.conn.execute(
                    "UPDATE mandates SET status = 'failed', reason = ? WHERE batch_id = ?", (reason, batch_id)
                )

    async def fail_mandates(self, payment_ids: Sequence[str], reason: str) -> None:
        if not payment_ids:
            return
        marks = ",".join("?" * len(payment_ids))
        await self.conn.execute(
            f"UPDATE mandates SET status = 'failed', reason = ? WHERE status = 'accepted' AND payment_id IN ({marks})",
            (reason, *payment_ids),
        )

    # -- exact payments ------------------------------------------------------------------

    async def save_exact_payment(self, record: ExactPaymentRecord) -> None:
        try:
            await self.conn.execute(
                "INSERT INTO exact_payments (nonce, payer, payee, asset, amount, authorization, signature, "
                "status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.nonce,
                    record.payer,
                    record.payee,
                    record.asset,
                    record.amount,
                    json.dumps(record.authorization),
                    record.signature,
                    record.status,
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError:
            raise PaymentError(ErrorCode.AUTHORIZATION_USED, f"authorization.nonce: {record.nonce} already used") from None

    async def update_exact_payment(self, nonce: str, status: str, tx_hash: str | None, reason: str | None) -> None:
        await self.conn.execute(
            "UPDATE exact_payments SET status = ?, tx_hash = ?, reason = ? WHERE nonce = ?",
            (status, tx_hash, reason, nonce),
        )

    async def delete_exact_payment(self, nonce: str) -> None:
        """Forget an ``exact`` payment whose request was not served."""
        await self.conn.execute("DELETE FROM exact_payments WHERE nonce = ? AND status = 'accepted'", (nonce,))

    async def resume_exact_payment(self, nonce: str, signature: str, now: float, stale_after: float) -> bool:
        cursor = await self.conn.execute(
            "UPDATE exact_payments SET reason = NULL, created_at = ? WHERE nonce = ? AND signature = ? "
            "AND status = 'accepted' AND (reason = ? OR created_at < ?) RETURNING nonce",
            (now, nonce, signature, SETTLEMENT_UNKNOWN, now - stale_after),
        )
        return await cursor.fetchone() is not None

    async def exact_payments(self, status: str | None = None) -> list[ExactPaymentRecord]:
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        cursor = await self.conn.execute(
            "SELECT nonce, payer, payee, asset, amount, authorization, signature, status, tx_hash, reason "
            f"FROM exact_payments {where} ORDER BY created_at",
            args,
        )
        return [
            ExactPaymentRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])
            for r in await cursor.fetchall()
        ]

    # -- payment identifiers (x402 payment-identifier extension) -------------------------

    async def claim_payment_identifier(
        self, payment_identifier: str, payload_hash: str, now: float, stale_after: float
    ) -> CachedResponse | None:
        async with self._lock:
            cursor = await self.conn.execute(
                "INSERT INTO payment_identifiers (payment_identifier, payload_hash, claimed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (payment_identifier) DO UPDATE SET claimed_at = excluded.claimed_at "
                "WHERE response IS NULL AND payload_hash = excluded.payload_hash AND claimed_at < ? "
                "RETURNING payment_identifier",
                (payment_identifier, payload_hash, now, now - stale_after),
            )
            if await cursor.fetchone() is not None:
                return None
            cursor = await self.conn.execute(
                "SELECT payload_hash, response FROM payment_identifiers WHERE payment_identifier = ?",
                (payment_identifier,),
            )
            stored_hash, response = await cursor.fetchone()
        if stored_hash != payload_hash:
            raise PaymentError(
                ErrorCode.PAYMENT_IDENTIFIER_CONFLICT,
                f"extensions.payment-identifier.info.id: {payment_identifier} was used with another payment",
            )
        if response is None:
            raise PaymentError(
                ErrorCode.PAYMENT_IN_PROGRESS,
                f"extensions.payment-identifier.info.id: {payment_identifier} is still being processed; retry",
            )
        data = json.loads(response)
        return CachedResponse(data["status"], [tuple(h) for h in data["headers"]], bytes.fromhex(data["body"]))

    async def complete_payment_identifier(self, payment_identifier: str, response: CachedResponse) -> None:
        data = {"status": response.status, "headers": response.headers, "body": response.body.hex()}
        await self.conn.execute(
            "UPDATE payment_identifiers SET response = ? WHERE payment_identifier = ?",
            (json.dumps(data), payment_identifier),
        )

    async def drop_payment_identifier(self, payment_identifier: str) -> None:
        await self.conn.execute(
            "DELETE FROM payment_identifiers WHERE payment_identifier = ? AND response IS NULL", (payment_identifier,)
        )

    async def totals(self) -> dict:
        """Settled totals: ``{"payers": {payer: base units}, "payees": {payee: base units}}``
        over ``aep2`` mandates, and the same for settled ``exact`` payments."""
        result: dict[str, dict[str, int]] = {"payers": {}, "payees": {}, "exact_payers": {}, "exact_payees": {}}
        for column, key in (("payer", "payers"), ("payee", "payees")):
            cursor = await self.conn.execute(
                f"SELECT {column}, SUM(amount) FROM mandates WHERE status = 'settled' GROUP BY {column}"
            )
            result[key] = {row[0]: row[1] for row in await cursor.fetchall()}
            cursor = await self.conn.execute(
                f"SELECT {column}, SUM(amount) FROM exact_payments WHERE status = 'settled' GROUP BY {column}"
            )
            result["exact_" + key] = {row[0]: row[1] for row in await cursor.fetchall()}
        return result

    # -- helpers -------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def __aenter__(self) -> None:
        await self.store._lock.acquire()
        try:
            await self.store.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store._lock.release()


def _split(script: str) -> list[str]:
    statements, current = [], []
    for line in script.splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        current.append(line)
        joined = "\n".join(current)
        if line.rstrip().endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    return statements
