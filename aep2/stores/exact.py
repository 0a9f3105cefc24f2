"""x402 ``exact`` payments the gateway settles as its own facilitator, and the responses kept
for x402 ``payment-identifier`` retries."""

from __future__ import annotations

import json
import time

from ..errors import ErrorCode, PaymentError
from ..store import SETTLEMENT_UNKNOWN, CachedResponse, ExactPaymentRecord, ExactStatus
from .database import StoreBase
from .records import EXACT_COLUMNS, exact_record

__all__ = ["ExactPayments"]


class ExactPayments(StoreBase):
    """``exact`` payments and payment identifiers (part of ``SQLStore``)."""

    async def save_exact_payment(self, record: ExactPaymentRecord) -> None:
        """Record an ``exact`` payment; raises ``PaymentError(authorization_used)`` on a reused nonce."""
        try:
            await self.db.execute(
                'INSERT INTO exact_payments (nonce, payer, payee, asset, amount, "authorization", signature, '
                "status, created_at) VALUES (:nonce, :payer, :payee, :asset, :amount, :authorization, :signature, "
                ":status, :now)",
                {
                    "nonce": record.nonce,
                    "payer": record.payer,
                    "payee": record.payee,
                    "asset": record.asset,
                    "amount": record.amount,
                    "authorization": json.dumps(record.authorization),
                    "signature": record.signature,
                    "status": str(record.status),
                    "now": time.time(),
                },
            )
        except self.db.integrity_errors:
            raise PaymentError(ErrorCode.AUTHORIZATION_USED, f"authorization.nonce: {record.nonce} already used") from None

    async def update_exact_payment(
        self, nonce: str, status: ExactStatus, tx_hash: str | None, reason: str | None
    ) -> None:
        """Move an ``exact`` payment to ``status`` with its transaction and reason."""
        await self.db.execute(
            "UPDATE exact_payments SET status = :status, tx_hash = :tx_hash, reason = :reason WHERE nonce = :nonce",
            {"nonce": nonce, "status": str(status), "tx_hash": tx_hash, "reason": reason},
        )

    async def delete_exact_payment(self, nonce: str) -> None:
        """Forget an ``accepted`` ``exact`` payment whose request was not served."""
        await self.db.execute("DELETE FROM exact_payments WHERE nonce = :nonce AND status = 'accepted'", {"nonce": nonce})

    async def resume_exact_payment(self, nonce: str, signature: str, now: float, stale_after: float) -> bool:
        """Take over an ``accepted`` payment with this ``signature`` whose outcome is unknown
        (``SETTLEMENT_UNKNOWN``, or older than ``stale_after`` seconds); returns whether the
        caller now owns it. One statement: of two concurrent retries one wins."""
        row = await self.db.fetchrow(
            "UPDATE exact_payments SET reason = NULL, created_at = :now WHERE nonce = :nonce AND signature = :signature "
            "AND status = 'accepted' AND (reason = :unknown OR created_at < :cutoff) RETURNING nonce",
            {"now": now, "nonce": nonce, "signature": signature, "unknown": SETTLEMENT_UNKNOWN,
             "cutoff": now - stale_after},
        )
        return row is not None

    async def exact_payments(self, status: ExactStatus | None = None) -> list[ExactPaymentRecord]:
        """``exact`` payments, all or in one status, oldest first."""
        where = "WHERE status = :status" if status else ""
        rows = await self.db.fetch(
            f"SELECT {EXACT_COLUMNS} FROM exact_payments {where} ORDER BY created_at",
            {"status": str(status)} if status else None,
        )
        return [exact_record(row) for row in rows]

    async def claim_payment_identifier(
        self, payment_identifier: str, payload_hash: str, now: float, stale_after: float
    ) -> CachedResponse | None:
        """Start the request of ``payment_identifier`` bound to ``payload_hash``; ``None`` when
        the caller is to process it, else the response cached for the identical payload.

        Raises ``PaymentError`` with ``payment_identifier_conflict`` (another payload) or
        ``payment_in_progress`` (a claim younger than ``stale_after`` seconds, not completed).
        """
        params = {"id": payment_identifier, "hash": payload_hash, "now": now, "cutoff": now - stale_after}
        async with self.db.transaction() as tx:
            claimed = await tx.fetchrow(
                "INSERT INTO payment_identifiers (payment_identifier, payload_hash, claimed_at) "
                "VALUES (:id, :hash, :now) ON CONFLICT (payment_identifier) DO UPDATE "
                "SET claimed_at = excluded.claimed_at WHERE payment_identifiers.response IS NULL "
                "AND payment_identifiers.payload_hash = excluded.payload_hash "
                "AND payment_identifiers.claimed_at < :cutoff RETURNING payment_identifier",
                params,
            )
            if claimed is not None:
                return None
            row = await tx.fetchrow(
                "SELECT payload_hash, response FROM payment_identifiers WHERE payment_identifier = :id", params
            )
        assert row is not None  # the insert conflicted with it
        if row["payload_hash"] != payload_hash:
            raise PaymentError(
                ErrorCode.PAYMENT_IDENTIFIER_CONFLICT,
                f"extensions.payment-identifier.info.id: {payment_identifier} was used with another payment",
            )
        if row["response"] is None:
            raise PaymentError(
                ErrorCode.PAYMENT_IN_PROGRESS,
                f"extensions.payment-identifier.info.id: {payment_identifier} is still being processed; retry",
            )
        data = json.loads(row["response"])
        return CachedResponse(data["status"], [tuple(h) for h in data["headers"]], bytes.fromhex(data["body"]))

    async def complete_payment_identifier(self, payment_identifier: str, response: CachedResponse) -> None:
        """Keep the paid response of a claimed identifier for its retries."""
        data = {"status": response.status, "headers": response.headers, "body": response.body.hex()}
        await self.db.execute(
            "UPDATE payment_identifiers SET response = :response WHERE payment_identifier = :id",
            {"id": payment_identifier, "response": json.dumps(data)},
        )

    async def drop_payment_identifier(self, payment_identifier: str) -> None:
        """Forget a claim whose request was refused or not charged: a retry is processed anew."""
        await self.db.execute(
            "DELETE FROM payment_identifiers WHERE payment_identifier = :id AND response IS NULL",
            {"id": payment_identifier},
        )
