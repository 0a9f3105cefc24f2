"""Durable nonce and spend tracking per intent (stdlib ``sqlite3``, one file, WAL).

A restarted agent must never reuse a nonce nor overspend its intent, so every payment is
recorded *before* its mandate is signed:

``allocate``
    checks ``amount <= cap`` and ``spent + reserved + amount <= maxAmount`` and takes the
    next nonce, atomically (a thread lock plus ``BEGIN IMMEDIATE``, so several processes may
    share the file). The payment is ``reserved``.
``confirm``
    the gateway accepted it: ``reserved`` → ``confirmed``, the receipt is stored.
``release``
    the gateway refused it: ``reserved`` → ``released`` and the amount returns to the budget.
    The nonce is never handed out again: nonces are one-time values per intent, settled in
    any order (docs/PROTOCOL.md §3), so gaps left by released payments cost nothing.

A payment still ``reserved`` after a crash keeps counting against the budget: the gateway
may have accepted it. Amounts are token base units, stored as decimal text because intent
budgets go up to 2^96.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any

from aep2.intent import Intent, SignedIntent
from aep2.mandate import MAX_NONCE

from .errors import BudgetExceeded, PayerError, PerPaymentCapExceeded

__all__ = ["PayerState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (
    intent_id   BLOB PRIMARY KEY,
    max_amount  TEXT NOT NULL,
    cap         TEXT NOT NULL,
    next_nonce  INTEGER NOT NULL DEFAULT 0,
    spent       TEXT NOT NULL DEFAULT '0',
    reserved    TEXT NOT NULL DEFAULT '0',
    known       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS payments (
    intent_id   BLOB NOT NULL,
    nonce       INTEGER NOT NULL,
    amount      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'confirmed', 'released')),
    receipt     TEXT,
    created_at  REAL NOT NULL,
    PRIMARY KEY (intent_id, nonce)
);
"""


class PayerState:
    """Nonces, reservations and receipts of one or more intents.

    ``path`` is a SQLite file (created with WAL journaling) or ``":memory:"``. Safe to share
    between threads. Intents must be ``register``-ed before ``allocate``.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    # -- intents ---------------------------------------------------------------------------

    def register(self, intent: Intent | SignedIntent) -> bytes:
        """Record an intent's limits (idempotent); returns its intent id."""
        if isinstance(intent, SignedIntent):
            intent = intent.intent
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO intents (intent_id, max_amount, cap) VALUES (?, ?, ?)",
                (intent.intent_id, str(intent.max_amount), str(intent.cap)),
            )
        return intent.intent_id

    def allocate(self, intent_id: bytes, amount: int) -> int:
        """Reserve ``amount`` under the intent and return a fresh nonce.

        Raises ``PerPaymentCapExceeded`` or ``BudgetExceeded`` (nothing reserved) when the
        intent does not allow it, and ``PayerError`` for an unregistered intent or when the
        nonce space (``2^40``) is used up.
        """
        if amount < 0:
            raise ValueError(f"amount: {amount} is negative")
        with self._transaction() as db:
            row = self._intent_row(db, intent_id)
            max_amount, cap, next_nonce, spent, reserved = (
                int(row[0]),
                int(row[1]),
                row[2],
                int(row[3]),
                int(row[4]),
            )
            if amount > cap:
                raise PerPaymentCapExceeded(
                    f"amount: {amount} exceeds the intent's maxPerPayment {cap} (intent 0x{intent_id.hex()})"
                )
            if spent + reserved + amount > max_amount:
                raise BudgetExceeded(
                    f"amount: {amount} would exceed the intent's maxAmount {max_amount} "
                    f"(spent {spent}, reserved {reserved}; intent 0x{intent_id.hex()})"
                )
            if next_nonce > MAX_NONCE:
                raise PayerError(f"nonce: {next_nonce} exceeds 2^40 - 1 (intent 0x{intent_id.hex()})")
            db.execute(
                "UPDATE intents SET next_nonce = ?, reserved = ? WHERE intent_id = ?",
                (next_nonce + 1, str(reserved + amount), intent_id),
            )
            db.execute(
                "INSERT INTO payments (intent_id, nonce, amount, status, created_at) VALUES (?, ?, ?, 'reserved', ?)",
                (intent_id, next_nonce, str(amount), time.time()),
            )
        return next_nonce

    def confirm(self, intent_id: bytes, nonce: int, receipt: dict[str, Any] | None = None) -> None:
        """The gateway accepted the payment: count it as spent, store ``receipt``, mark the intent known."""
        with self._transaction() as db:
            amount = self._take_reserved(db, intent_id, nonce)
            row = self._intent_row(db, intent_id)
            db.execute(
                "UPDATE intents SET spent = ?, reserved = ?, known = 1 WHERE intent_id = ?",
                (str(int(row[3]) + amount), str(int(row[4]) - amount), intent_id),
            )
            db.execute(
                "UPDATE payments SET status = 'confirmed', receipt = ? WHERE intent_id = ? AND nonce = ?",
                (json.dumps(receipt) if receipt is not None else None, intent_id, nonce),
            )

    def release(self, intent_id: bytes, nonce: int) -> None:
        """The gateway refused the payment: return its amount to the budget (the nonce stays used)."""
        with self._transaction() as db:
            amount = self._take_reserved(db, intent_id, nonce)
            row = self._intent_row(db, intent_id)
            db.execute(
                "UPDATE intents SET reserved = ? WHERE intent_id = ?",
                (str(int(row[4]) - amount), intent_id),
            )
            db.execute(
                "UPDATE payments SET status = 'released' WHERE intent_id = ? AND nonce = ?",
                (intent_id, nonce),
            )

    # -- "does the gateway know this intent?" ----------------------------------------------

    def is_known(self, intent_id: bytes) -> bool:
        """Whether a gateway accepted a payment from this intent (so the intent may be omitted)."""
        with self._lock:
            row = self._db.execute("SELECT known FROM intents WHERE intent_id = ?", (intent_id,)).fetchone()
        return bool(row and row[0])

    def forget(self, intent_id: bytes) -> None:
        """Send the intent again with the next payment (the gateway answered ``unknown_intent``)."""
        with self._transaction() as db:
            db.execute("UPDATE intents SET known = 0 WHERE intent_id = ?", (intent_id,))

    # -- reading -----------------------------------------------------------------------------

    def spent(self, intent_id: bytes) -> int:
        """Base units confirmed by the gateway."""
        return self._amounts(intent_id)[0]

    def reserved(self, intent_id: bytes) -> int:
        """Base units signed but neither confirmed nor released (in flight, or lost in a crash)."""
        return self._amounts(intent_id)[1]

    def remaining(self, intent_id: bytes) -> int:
        """``maxAmount - spent - reserved``."""
        spent, reserved, max_amount = self._amounts(intent_id)
        return max_amount - spent - reserved

    def next_nonce(self, intent_id: bytes) -> int:
        """The nonce the next ``allocate`` returns."""
        with self._lock:
            return self._intent_row(self._db, intent_id)[2]

    def receipts(self, intent_id: bytes | None = None) -> list[dict[str, Any]]:
        """Receipts (``PAYMENT-RESPONSE`` objects) of confirmed payments, oldest first."""
        query = "SELECT receipt FROM payments WHERE status = 'confirmed' AND receipt IS NOT NULL"
        params: tuple[Any, ...] = ()
        if intent_id is not None:
            query += " AND intent_id = ?"
            params = (intent_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, nonce", params).fetchall()
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PayerState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _amounts(self, intent_id: bytes) -> tuple[int, int, int]:
        with self._lock:
            row = self._intent_row(self._db, intent_id)
        return int(row[3]), int(row[4]), int(row[0])

    @staticmethod
    def _intent_row(db: sqlite3.Connection, intent_id: bytes) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT max_amount, cap, next_nonce, spent, reserved FROM intents WHERE intent_id = ?",
            (intent_id,),
        ).fetchone()
        if row is None:
            raise PayerError(f"intentId: 0x{intent_id.hex()} is not registered with this state")
        return tuple(row)

    @staticmethod
    def _take_reserved(db: sqlite3.Connection, intent_id: bytes, nonce: int) -> int:
        row = db.execute(
            "SELECT amount, status FROM payments WHERE intent_id = ? AND nonce = ?", (intent_id, nonce)
        ).fetchone()
        if row is None:
            raise PayerError(f"nonce: {nonce} was never allocated (intent 0x{intent_id.hex()})")
        if row[1] != "reserved":
            raise PayerError(f"nonce: {nonce} is already {row[1]} (intent 0x{intent_id.hex()})")
        return int(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._lock, self._db)


class _Transaction:
    """Hold the thread lock and an immediate (write-locked) SQLite transaction."""

    def __init__(self, lock: threading.Lock, db: sqlite3.Connection) -> None:
        self._lock = lock
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
