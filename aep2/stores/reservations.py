"""Intents and reservations: the gateway's hot path, and the mandates it records.

``reserve`` is one ``INSERT … SELECT … WHERE <limits>`` statement: the check and the write
are one atomic transaction and one round trip. The statement reads the intent's committed
total and the payer's outstanding total from their rows (kept by the schema's triggers);
only a refused reservation pays for a second query that names the reason.

Concurrency: SQLite runs one writer at a time, so the statement is serialised as a whole.
PostgreSQL runs reservations side by side: ``FOR UPDATE`` locks the intent's row, then the
payer's, and a reservation that waited re-checks the limits against the rows as the one
before it left them (read-committed re-evaluation), so two replicas never admit more than
the intent covers, nor reserve one nonce twice (the unique key).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ..eddsa import Signature
from ..errors import ErrorCode, PaymentError
from ..intent import SignedIntent
from ..mandate import Mandate
from ..payload import intent_json, parse_intent
from ..store import MandateRecord, MandateStatus, Reservation
from .database import StoreBase
from .records import MANDATE_COLUMNS, mandate_record

__all__ = ["Reservations"]

# What settled after the block the cached escrow balance was read at (a short index range:
# only settlements newer than the cached read); the queue's part is the payer's row.
_SETTLED_SINCE = """(SELECT COALESCE(SUM(amount), 0) FROM mandates
    WHERE payer = :payer AND asset = :asset AND status = 'settled' AND settled_block > CAST(:block AS BIGINT))"""

# Parameters are cast: PostgreSQL cannot infer the type of a bare parameter compared with
# another, and SQLite reads the casts as the same integers, text and reals.
_RESERVE = f"""
INSERT INTO mandates (payment_id, intent_id, nonce, payee, amount, deadline, request_hash,
                      r8x, r8y, s, payer, asset, status, accepted_at)
SELECT CAST(:payment_id AS TEXT), i.intent_id, CAST(:nonce AS BIGINT), CAST(:payee AS TEXT),
       CAST(:amount AS BIGINT), CAST(:deadline AS BIGINT), CAST(:request_hash AS TEXT),
       CAST(:r8x AS TEXT), CAST(:r8y AS TEXT), CAST(:s AS TEXT), o.payer, o.asset, 'accepted',
       CAST(:now AS DOUBLE PRECISION)
FROM intents AS i JOIN payer_outstanding AS o ON o.payer = :payer AND o.asset = :asset
WHERE i.intent_id = :intent_id
  AND CAST(:amount AS BIGINT) <= CAST(:max_per_payment AS BIGINT)
  AND i.committed + CAST(:amount AS BIGINT) <= CAST(:max_amount AS BIGINT)
  AND o.amount + {_SETTLED_SINCE} + CAST(:amount AS BIGINT) <= CAST(:escrow AS BIGINT)
"""
_RESERVE_SQL = {"sqlite": _RESERVE, "postgresql": _RESERVE + "FOR UPDATE OF i, o"}

_REFUSAL = f"""
SELECT i.committed,
       COALESCE((SELECT amount FROM payer_outstanding WHERE payer = :payer AND asset = :asset), 0)
       + {_SETTLED_SINCE} AS outstanding,
       EXISTS (SELECT 1 FROM mandates WHERE intent_id = :intent_id AND nonce = :nonce) AS nonce_used
FROM intents AS i WHERE i.intent_id = :intent_id
"""

_INT64_MAX = 2**63 - 1


class Reservations(StoreBase):
    """Intents, reservations and the mandates' reads (part of ``SQLStore``)."""

    async def save_intent(self, signed_intent: SignedIntent) -> None:
        """Record a verified intent and its payer's outstanding row (idempotent)."""
        intent = signed_intent.intent
        # The payer's row first: a reservation joins it, and a lone row is harmless.
        await self.db.execute(
            "INSERT INTO payer_outstanding (payer, asset) VALUES (:payer, :asset) ON CONFLICT (payer, asset) DO NOTHING",
            {"payer": intent.payer, "asset": intent.asset},
        )
        await self.db.execute(
            "INSERT INTO intents (intent_id, payer, asset, body) VALUES (:intent_id, :payer, :asset, :body) "
            "ON CONFLICT (intent_id) DO NOTHING",
            {
                "intent_id": intent.intent_id,
                "payer": intent.payer,
                "asset": intent.asset,
                "body": json.dumps(intent_json(signed_intent)),
            },
        )

    async def get_intent(self, intent_id: bytes) -> SignedIntent | None:
        """A previously saved intent, or ``None``."""
        row = await self.db.fetchrow("SELECT body FROM intents WHERE intent_id = :intent_id", {"intent_id": intent_id})
        return parse_intent(json.loads(row["body"])) if row else None

    async def reserve(
        self, mandate: Mandate, signature: Signature, payer: str, asset: str, limits: Reservation, now: float
    ) -> str:
        """Atomically check and record an accepted mandate; returns its payment id.

        Raises ``PaymentError`` as ``PaymentStore.reserve`` says (``nonce_used``,
        ``budget_exceeded``, ``per_payment_cap_exceeded``, ``insufficient_escrow``), or
        ``unknown_intent`` for an intent never saved.
        """
        params = {
            "payment_id": mandate.payment_id,
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
            "now": float(now),
            "max_per_payment": min(limits.max_per_payment, _INT64_MAX),
            "max_amount": min(limits.max_amount, _INT64_MAX),
            "escrow": min(limits.escrow_balance, _INT64_MAX),
            "block": limits.escrow_block,
        }
        try:
            inserted = await self.db.execute(_RESERVE_SQL[self.db.dialect], params)
        except self.db.integrity_errors:
            raise PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already used") from None
        if inserted == 1:
            return mandate.payment_id
        raise await self._refusal(mandate, params)

    async def _refusal(self, mandate: Mandate, params: dict[str, Any]) -> PaymentError:
        row = await self.db.fetchrow(_REFUSAL, params)
        if row is None:
            return PaymentError(ErrorCode.UNKNOWN_INTENT, "intentId: not recorded")
        if row["nonce_used"]:
            return PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already used")
        if mandate.amount > params["max_per_payment"]:
            return PaymentError(
                ErrorCode.PER_PAYMENT_CAP_EXCEEDED, f"mandate.amount: {mandate.amount} > cap {params['max_per_payment']}"
            )
        committed, outstanding = int(row["committed"]), int(row["outstanding"])
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
        """Undo an accepted reservation whose request was not served (status ≥ 400)."""
        await self.db.execute(
            "DELETE FROM mandates WHERE payment_id = :payment_id AND status = 'accepted'", {"payment_id": payment_id}
        )

    async def get_mandate(self, payment_id: str) -> MandateRecord | None:
        """One mandate by payment id, or ``None``."""
        row = await self.db.fetchrow(
            f"SELECT {MANDATE_COLUMNS} FROM mandates WHERE payment_id = :payment_id", {"payment_id": payment_id}
        )
        return mandate_record(row) if row else None

    async def mandates(self, status: MandateStatus | None = None) -> list[MandateRecord]:
        """All mandates, or those in one status, ordered by intent then nonce."""
        where = "WHERE status = :status" if status else ""
        rows = await self.db.fetch(
            f"SELECT {MANDATE_COLUMNS} FROM mandates {where} ORDER BY intent_id, nonce",
            {"status": str(status)} if status else None,
        )
        return [mandate_record(row) for row in rows]

    async def accepted_mandates(self) -> list[MandateRecord]:
        """All ``accepted`` mandates, ordered by intent then nonce."""
        return await self.mandates(MandateStatus.ACCEPTED)

    async def fail_mandates(self, payment_ids: Sequence[str], reason: str) -> None:
        """Mark ``accepted`` mandates ``failed`` with ``reason``, atomically."""
        if not payment_ids:
            return
        async with self.db.transaction() as tx:
            await tx.executemany(
                "UPDATE mandates SET status = 'failed', reason = :reason "
                "WHERE payment_id = :payment_id AND status = 'accepted'",
                [{"payment_id": payment_id, "reason": reason} for payment_id in payment_ids],
            )
