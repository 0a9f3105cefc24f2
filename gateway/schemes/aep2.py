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

The stateless checks (1 after the envelope, 2 without the store and the cache, 3) are
``aep2.verification``'s, shared with the facilitator (``facilitator.aep2``), so both refuse a
payment with the same code and message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aep2.errors import ErrorCode, PaymentError
from aep2.intent import Intent, SignedIntent
from aep2.mandate import nonce_window
from aep2.payload import ParsedPayload, accepted_receipt, parse_payload
from aep2.store import PaymentStore, Reservation
from aep2.verification import BoundRequest, Terms, check_consent, check_intent, check_mandate, check_price
from aep2.x402.models import PaymentRequirements, SettleResponse

from ..chain import ChainCache, EscrowState
from ..config import GatewayConfig
from .base import AcceptedPayment, PaidRequest, offer

__all__ = ["AEP2Scheme"]


class AEP2Scheme:
    """The ``aep2`` scheme (a ``Scheme``) bound to one gateway's config, store and chain cache.

    Settling a served payment means keeping its reservation: the processor proves and
    settles the mandate in a batch later (docs/PROTOCOL.md §7), so the receipt has no
    transaction yet (``transaction: ""``, ``extra.status: "accepted"``).
    """

    name = "aep2"
    settles_before_response = False

    def __init__(self, config: GatewayConfig, store: PaymentStore, chain: ChainCache) -> None:
        self.config = config
        self.store = store
        self.chain = chain
        self.terms = Terms(
            config.chain_id, config.settlement, config.asset, config.processor, config.min_deadline_seconds
        )
        # intent id -> verified signed intent; a verified intent never needs re-checking.
        self._intents: dict[bytes, SignedIntent] = {}

    def requirements(self, amount: int) -> PaymentRequirements:
        """The ``aep2`` ``accepts`` entry: ``extra`` names the Settlement contract, the
        processor intents must name, and the shortest mandate deadline accepted (seconds)."""
        config = self.config
        extra = {
            "settlement": config.settlement,
            "processor": config.processor,
            "minDeadlineSeconds": config.min_deadline_seconds,
        }
        return offer(config, self.name, amount, extra)

    async def verify(self, request: PaidRequest, amount: int) -> AcceptedPayment:
        """``verify_and_reserve`` for a paid request."""
        return await self.verify_and_reserve(
            request.envelope.payload,
            amount=amount,
            method=request.method,
            path_and_query=request.path_and_query,
            body=request.body,
        )

    async def settle(self, request: PaidRequest, accepted: AcceptedPayment) -> SettleResponse:
        """The receipt of a served mandate: accepted, to be settled by the processor."""
        return accepted_receipt(accepted.payment_id, accepted.payer, accepted.amount, request.network)

    async def release(self, accepted: AcceptedPayment) -> None:
        """Free the nonce and the reserved amount of a mandate whose request was not served."""
        await self.store.release(accepted.release_key)

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

        check_price(mandate, payee=config.payee, amount=amount)
        signed_intent = await self._intent(parsed.intent_id, parsed.signed_intent)
        intent = signed_intent.intent
        check_mandate(
            mandate,
            parsed.signature,
            intent,
            payee=config.payee,
            now=now,
            min_deadline_seconds=config.min_deadline_seconds,
            request=BoundRequest(method, path_and_query, body),
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
            check_consent(intent.payer, config.processor, escrow.consent_until)
        if settled >> bit & 1:
            raise PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already settled on chain")

        try:
            pid = await self._reserve(parsed, intent, escrow, now)
        except PaymentError as exc:
            if exc.code != ErrorCode.INSUFFICIENT_ESCROW:
                raise
            # The payer may have just deposited or cancelled a withdrawal: re-read once before refusing.
            fresh = await self._escrow(intent.payer, intent.asset, max_age=1.0)
            check_consent(intent.payer, config.processor, fresh.consent_until)
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
        check_intent(signed, intent_id, self.terms)
        await self.store.save_intent(signed)
        self._intents[intent_id] = signed
        return signed


def _escrow_refusal(exc: PaymentError, escrow: EscrowState, processor: str) -> PaymentError:
    """The store's ``insufficient_escrow``, naming the processor whose escrow account counts
    (funds deposited with another processor do not) and how a pending withdrawal reduced it."""
    reason = f"{exc.reason} (escrow with processor {processor}"
    if escrow.pending_withdrawal:
        reason += f": balance {escrow.balance} - pending withdrawal {escrow.pending_withdrawal}"
    return PaymentError(exc.code, reason + ")")
