"""The x402 ``exact`` EVM scheme (EIP-3009 ``transferWithAuthorization``), settled before the answer.

What standard x402 clients send (``specs/schemes/exact/scheme_exact_evm.md``):
``payload = {"signature": "0x…", "authorization": {"from", "to", "value", "validAfter",
"validBefore", "nonce"}}``, signed under the token's EIP-712 domain. Following the spec's
flow, the gateway has a facilitator (``aep2.x402.facilitator.Facilitator``: in-process or
reached by URL) verify it — signature (ECDSA or ERC-1271), amount, window, the nonce unused,
a fresh balance, a simulation of the transfer — records the authorization (one request per
nonce), serves, settles it through the facilitator, and sends the response only once the
transfer is mined, with its hash in ``PAYMENT-RESPONSE``. A request the app answers with
≥ 400 settles nothing.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from aep2.errors import ErrorCode, PaymentError
from aep2.store import SETTLEMENT_UNKNOWN, ExactPaymentRecord, PaymentStore
from aep2.x402.facilitator import Facilitator
from aep2.x402.models import ExactEvmPayload, PaymentRequirements, SettleResponse

from ..config import GatewayConfig
from .base import AcceptedPayment, PaidRequest, offer

__all__ = ["ExactScheme"]

#: ``release_key`` prefix of a payment taken over by ``resume_exact_payment``.
_RESUMED = "resumed:"


class ExactScheme:
    """The ``exact`` scheme (a ``Scheme``) of one gateway, verified and settled by ``facilitator``.

    ``token_name`` / ``token_version``: the asset's EIP-712 domain, sent in ``extra`` so
    clients sign under it (read from the token at start-up, ``gateway.token``).
    """

    name = "exact"
    settles_before_response = True

    def __init__(
        self, config: GatewayConfig, store: PaymentStore, facilitator: Facilitator, *, token_name: str, token_version: str
    ) -> None:
        self.config = config
        self.store = store
        self.facilitator = facilitator
        self.token_name = token_name
        self.token_version = token_version

    def requirements(self, amount: int) -> PaymentRequirements:
        """The ``exact`` ``accepts`` entry; ``extra`` is the token's EIP-712 ``name``/``version``."""
        return offer(self.config, self.name, amount, {"name": self.token_name, "version": self.token_version})

    async def verify(self, request: PaidRequest, amount: int) -> AcceptedPayment:
        """Check the authorization here (shape, recipient, value) and at the facilitator (the
        rest), then record it. Raises ``PaymentError`` with the spec's code
        (``invalid_exact_evm_payload_*``, ``insufficient_funds``,
        ``invalid_exact_evm_transaction_simulation_failed``, …), or ``invalid_exact_evm_nonce_already_used``
        when another request carries the same authorization."""
        try:
            payload = ExactEvmPayload.model_validate(request.envelope.payload)
        except ValidationError as exc:
            raise PaymentError(ErrorCode.INVALID_PAYLOAD, _first_error("payload", exc)) from None
        auth = payload.authorization
        if auth.to.lower() != self.config.payee.lower():
            raise PaymentError(
                ErrorCode.EXACT_RECIPIENT_MISMATCH, f"payload.authorization.to: {auth.to} is not {self.config.payee}"
            )
        if int(auth.value) != amount:
            raise PaymentError(ErrorCode.EXACT_VALUE_MISMATCH, f"payload.authorization.value: {auth.value} ≠ price {amount}")
        nonce = auth.nonce.lower()
        # A retry of a payment whose settlement answer was lost: settle it again (idempotent at
        # the facilitator) instead of refusing an authorization that may already have paid.
        if await self.store.resume_exact_payment(nonce, payload.signature, time.time(), self.config.max_timeout_seconds):
            return AcceptedPayment(nonce, self.name, auth.from_, amount, _RESUMED + nonce)
        verdict = await self.facilitator.verify(request.envelope, request.versioned_requirements())
        if not verdict.is_valid:
            raise PaymentError(
                verdict.invalid_reason or ErrorCode.INVALID_PAYLOAD, verdict.invalid_message or "refused by the facilitator"
            )
        payer = verdict.payer or auth.from_
        await self.store.save_exact_payment(
            ExactPaymentRecord(
                nonce=nonce,
                payer=payer,
                payee=self.config.payee,
                asset=self.config.asset,
                amount=amount,
                authorization=auth.to_wire(),
                signature=payload.signature,
                status="accepted",
            )
        )
        return AcceptedPayment(nonce, self.name, payer, amount, nonce)

    async def settle(self, request: PaidRequest, accepted: AcceptedPayment) -> SettleResponse:
        """Settle through the facilitator and record the outcome; the answer carries the
        transaction hash. When the facilitator cannot be reached (raised) or does not know the
        outcome (``unexpected_settle_error``), the payment stays ``accepted`` and is marked
        ``SETTLEMENT_UNKNOWN``: a retry of the same payment settles it. Raises what the
        facilitator raises."""
        try:
            outcome = await self.facilitator.settle(request.envelope, request.versioned_requirements())
        except Exception:
            await self.store.update_exact_payment(accepted.payment_id, "accepted", None, SETTLEMENT_UNKNOWN)
            raise
        if outcome.success:
            await self.store.update_exact_payment(accepted.payment_id, "settled", outcome.transaction, None)
        elif outcome.error_reason == ErrorCode.UNEXPECTED_SETTLE_ERROR:
            await self.store.update_exact_payment(
                accepted.payment_id, "accepted", outcome.transaction or None, SETTLEMENT_UNKNOWN
            )
        else:
            reason = outcome.error_reason or ErrorCode.UNEXPECTED_SETTLE_ERROR
            await self.store.update_exact_payment(
                accepted.payment_id, "failed", outcome.transaction or None, f"{reason}: {outcome.error_message or ''}"
            )
        extra = {**(outcome.extra or {}), "paymentId": accepted.payment_id, "scheme": self.name}
        extra["status"] = "settled" if outcome.success else "failed"
        return outcome.model_copy(update={"extra": extra, "network": request.network})

    async def release(self, accepted: AcceptedPayment) -> None:
        """Forget the authorization of a request that was not served, so it can be used again;
        a resumed one (its transfer may be mined) goes back to ``SETTLEMENT_UNKNOWN``."""
        if accepted.release_key.startswith(_RESUMED):
            await self.store.update_exact_payment(accepted.payment_id, "accepted", None, SETTLEMENT_UNKNOWN)
        else:
            await self.store.delete_exact_payment(accepted.release_key)


def _first_error(prefix: str, exc: ValidationError) -> str:
    """``prefix.field.path: message`` of a pydantic error, naming the wire field."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in (prefix, *error["loc"]))
    return f"{where}: {error['msg']}"
