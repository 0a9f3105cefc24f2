"""Verifying an ``aep2`` payment (deferred mandate) and reserving it, off-chain.

Checks run in this order, each failure a ``PaymentError`` with its own code (see
``aep2.errors``): envelope and schema; network, asset, payee and price; the intent (its
id, EIP-712 domain and signature — verified once per intent and cached); its validity
window, processor and payee allowlist; the session key's signature over the mandate; the
request binding; the deadline; revocation; then the store's atomic reservation (nonce
unused, budget, per-payment cap, escrow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aep2.eddsa import verify
from aep2.errors import ErrorCode, PaymentError
from aep2.intent import ZERO_ADDRESS, SignedIntent
from aep2.mandate import request_hash
from aep2.payload import parse_payload
from aep2.store import PaymentStore, Reservation

from ..chain import ChainCache
from ..config import GatewayConfig

__all__ = ["AEP2Scheme", "AcceptedPayment"]


@dataclass(frozen=True)
class AcceptedPayment:
    """A reserved payment: what the receipt reports."""

    payment_id: str
    scheme: str
    payer: str
    amount: int
    release_key: str


class AEP2Scheme:
    """Verifier for scheme ``aep2`` bound to one gateway's config, store and chain cache."""

    def __init__(self, config: GatewayConfig, store: PaymentStore, chain: ChainCache) -> None:
        self.config = config
        self.store = store
        self.chain = chain
        # intent id -> verified signed intent; a verified intent never needs re-checking.
        self._intents: dict[bytes, SignedIntent] = {}

    async def verify_and_reserve(
        self,
        payload: Any,
        *,
        amount: int,
        method: str,
        path_and_query: str,
        body: bytes,
        now: float | None = None,
    ) -> AcceptedPayment:
        """Verify ``payload`` (the x402 ``payload`` object) for a request priced ``amount``.

        Raises ``PaymentError``; on success the reservation is committed in the store.
        """
        now = time.time() if now is None else now
        parsed = parse_payload(payload)
        mandate = parsed.mandate
        config = self.config

        if mandate.payee != config.payee.lower():
            raise PaymentError(ErrorCode.PAYEE_MISMATCH, f"mandate.payee: {mandate.payee_checksum} is not {config.payee}")
        if mandate.amount != amount:
            raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"mandate.amount: {mandate.amount} ≠ price {amount}")

        signed_intent = await self._intent(parsed.intent_id, parsed.signed_intent)
        intent = signed_intent.intent

        if now < intent.valid_after:
            raise PaymentError(ErrorCode.INTENT_NOT_YET_VALID, f"intent.validAfter: {intent.valid_after} > now")
        if now + config.min_deadline_seconds > intent.valid_before:
            raise PaymentError(
                ErrorCode.INTENT_EXPIRED,
                f"intent.validBefore: {intent.valid_before} leaves under {config.min_deadline_seconds} s to settle",
            )
        if not intent.allows_payee(config.payee):
            raise PaymentError(ErrorCode.PAYEE_NOT_ALLOWED, f"intent.payees: {config.payee} not allowed")

        if not verify(intent.session_key, mandate.message(), parsed.signature):
            raise PaymentError(ErrorCode.INVALID_MANDATE_SIGNATURE, "signature: not the session key's over the mandate")
        expected = request_hash(method, path_and_query, body)
        if mandate.request_hash != expected:
            raise PaymentError(
                ErrorCode.REQUEST_MISMATCH, f"mandate.requestHash: signed for another request than {method} {path_and_query}"
            )
        if mandate.deadline < now + config.min_deadline_seconds:
            raise PaymentError(
                ErrorCode.MANDATE_EXPIRED,
                f"mandate.deadline: {mandate.deadline} is under {config.min_deadline_seconds} s from now",
            )
        if self.chain.revoked(intent.intent_id):
            raise PaymentError(ErrorCode.INTENT_REVOKED, "intentId: revoked on chain")

        escrow, block = await self.chain.escrow(intent.payer, intent.asset)
        limits = Reservation(intent.max_amount, intent.max_per_payment, escrow, block)
        try:
            pid = await self.store.reserve(mandate, parsed.signature, intent.payer, intent.asset, limits, now)
        except PaymentError as exc:
            if exc.code != ErrorCode.INSUFFICIENT_ESCROW:
                raise
            # The payer may have just deposited: re-read the escrow once before refusing.
            fresh, block = await self.chain.escrow(intent.payer, intent.asset, max_age=1.0)
            if (fresh, block) == (escrow, limits.escrow_block):
                raise
            limits = Reservation(intent.max_amount, intent.max_per_payment, fresh, block)
            pid = await self.store.reserve(mandate, parsed.signature, intent.payer, intent.asset, limits, now)
        return AcceptedPayment(pid, "aep2", intent.payer, mandate.amount, pid)

    async def _intent(self, intent_id: bytes, embedded: SignedIntent | None) -> SignedIntent:
        known = self._intents.get(intent_id)
        if known is not None:
            return known
        signed = embedded if embedded is not None else await self.store.get_intent(intent_id)
        if signed is None:
            raise PaymentError(ErrorCode.UNKNOWN_INTENT, "payload.intent: required on first use of this intent")
        intent = signed.intent
        if intent.chain_id != self.config.chain_id or intent.verifying_contract != self.config.settlement:
            raise PaymentError(
                ErrorCode.INTENT_DOMAIN_MISMATCH,
                f"intent.chainId/verifyingContract: {intent.chain_id}/{intent.verifying_contract} is not "
                f"{self.config.chain_id}/{self.config.settlement}",
            )
        if intent.intent_id != intent_id:
            raise PaymentError(ErrorCode.INTENT_ID_MISMATCH, "intentId: not the EIP-712 digest of payload.intent")
        if intent.asset != self.config.asset:
            raise PaymentError(ErrorCode.ASSET_MISMATCH, f"intent.asset: {intent.asset} is not {self.config.asset}")
        if intent.processor not in (ZERO_ADDRESS, self.config.processor):
            raise PaymentError(ErrorCode.PROCESSOR_MISMATCH, f"intent.processor: {intent.processor} does not settle here")
        if not signed.is_valid():
            raise PaymentError(ErrorCode.INVALID_INTENT_SIGNATURE, "intent.signature: not the payer's EIP-712 signature")
        await self.store.save_intent(signed)
        self._intents[intent_id] = signed
        return signed


