"""Verifying an ``aep2`` payment (deferred mandate) and reserving it, off-chain.

A served payment must be a paid payment: everything that could keep the processor from
settling the mandate is checked *before* the request is served. Checks run in this order,
each failure a ``PaymentError`` with its own code (see ``aep2.errors``):

1. envelope and schema (``invalid_payload``); payee and price;
2. the intent — its EIP-712 domain, id, asset, processor (it must name ours:
   ``processor_mismatch``) and signature, verified once per intent and cached; its validity
   window (``validBefore`` at least ``min_deadline_seconds`` away, so an unregistered intent
   is still registrable when the processor settles) and payee allowlist;
3. the session key's signature over the mandate; the request binding; the deadline;
4. chain state, from ``ChainCache``: the intent not revoked (``intent_revoked``), the payer's
   consent to our processor given and never withdrawn (``processor_not_authorized``), the
   nonce not settled on chain (``nonce_used``);
5. the store's atomic reservation: nonce unused, budget, per-payment cap, and escrow
   (``insufficient_escrow``) against ``balance - pending withdrawal`` of the payer's escrow
   account with our processor (escrow is per (payer, token, processor); what the payer holds
   with other processors cannot pay our processor's settlements and is not counted).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aep2.eddsa import verify
from aep2.errors import ErrorCode, PaymentError
from aep2.intent import Intent, SignedIntent
from aep2.mandate import nonce_window, request_hash
from aep2.payload import ParsedPayload, parse_payload
from aep2.store import PaymentStore, Reservation

from ..chain import ChainCache, EscrowState
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
        """Verify ``payload`` (the x402 ``payload`` object) for a request priced ``amount``
        (base units) to ``method path_and_query`` with ``body``; ``now`` in unix seconds.

        Returns the reservation, committed in the store. Raises ``PaymentError`` with the
        code of the first failed check (module docstring); chain and store failures raise
        what the reader or store raises (the middleware answers ``chain_unavailable``).
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

        window, bit = nonce_window(mandate.nonce)
        state, escrow, (settled, _) = await asyncio.gather(
            self.chain.intent(intent.intent_id),
            self._escrow(intent.payer, intent.asset),
            self.chain.settled_nonces(intent.intent_id, window),
        )
        if state.revoked:
            raise PaymentError(ErrorCode.INTENT_REVOKED, f"intentId: revoked on chain at {state.revoked_at}")
        if not escrow.consent_current:
            escrow = await self._escrow(intent.payer, intent.asset, max_age=1.0)  # consent may have just been given
            if not escrow.consent_current:
                raise PaymentError(ErrorCode.PROCESSOR_NOT_AUTHORIZED, _consent_reason(intent.payer, config.processor, escrow))
        if settled >> bit & 1:
            raise PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already settled on chain")

        try:
            pid = await self._reserve(parsed, intent, escrow, now)
        except PaymentError as exc:
            if exc.code != ErrorCode.INSUFFICIENT_ESCROW:
                raise
            # The payer may have just deposited or cancelled a withdrawal: re-read once before refusing.
            fresh = await self._escrow(intent.payer, intent.asset, max_age=1.0)
            if not fresh.consent_current:
                raise PaymentError(ErrorCode.PROCESSOR_NOT_AUTHORIZED, _consent_reason(intent.payer, config.processor, fresh))
            if fresh == escrow:
                raise _escrow_refusal(exc, escrow, config.processor) from None
            try:
                pid = await self._reserve(parsed, intent, fresh, now)
            except PaymentError as again:
                if again.code != ErrorCode.INSUFFICIENT_ESCROW:
                    raise
                raise _escrow_refusal(again, fresh, config.processor) from None
        return AcceptedPayment(pid, "aep2", intent.payer, mandate.amount, pid)

    async def _escrow(self, payer: str, asset: str, *, max_age: float | None = None) -> EscrowState:
        return await self.chain.escrow(payer, asset, self.config.processor, max_age=max_age)

    async def _reserve(self, parsed: ParsedPayload, intent: Intent, escrow: EscrowState, now: float) -> str:
        limits = Reservation(intent.max_amount, intent.max_per_payment, escrow.available, escrow.block)
        return await self.store.reserve(parsed.mandate, parsed.signature, intent.payer, intent.asset, limits, now)

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
        if intent.processor != self.config.processor:
            raise PaymentError(
                ErrorCode.PROCESSOR_MISMATCH,
                f"intent.processor: {intent.processor} does not settle here (name {self.config.processor})",
            )
        if not signed.is_valid():
            raise PaymentError(ErrorCode.INVALID_INTENT_SIGNATURE, "intent.signature: not the payer's EIP-712 signature")
        await self.store.save_intent(signed)
        self._intents[intent_id] = signed
        return signed


def _consent_reason(payer: str, processor: str, escrow: EscrowState) -> str:
    if escrow.consent_until == 0:
        return f"intent.payer: {payer} has not authorised processor {processor} (setProcessor)"
    return f"intent.payer: {payer} withdrew consent from processor {processor} (lapses at {escrow.consent_until})"


def _escrow_refusal(exc: PaymentError, escrow: EscrowState, processor: str) -> PaymentError:
    """The store's ``insufficient_escrow``, naming the processor whose escrow account counts
    (funds deposited with another processor do not) and how a pending withdrawal reduced it."""
    reason = f"{exc.reason} (escrow with processor {processor}"
    if escrow.pending_withdrawal:
        reason += f": balance {escrow.balance} - pending withdrawal {escrow.pending_withdrawal}"
    return PaymentError(exc.code, reason + ")")
