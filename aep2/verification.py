"""The stateless checks of an ``aep2`` payment: what needs neither the chain nor a store.

Shared by every verifier of ``aep2`` mandates — the gateway (``gateway.schemes.aep2``) and
the facilitator (``facilitator.aep2``) — so both refuse the same payments with the same
codes and messages. Each check raises ``PaymentError`` (``aep2.errors``) naming the field;
they are meant to run in this order (the gateway's, pinned by its tests):

1. ``check_price``: the mandate pays the expected payee the expected amount;
2. ``check_intent``: the signed intent is for this deployment (EIP-712 domain), ``intentId``
   is its digest, its asset and processor are ours, and the payer signed it
   (docs/PROTOCOL.md §2);
3. ``check_mandate``: the intent's validity window leaves ``min_deadline_seconds`` to settle,
   its allowlist has the payee, the session key signed the mandate, the mandate is bound to
   the request (only when the request is known: a facilitator never sees it), and its
   deadline is at least ``min_deadline_seconds`` away (docs/PROTOCOL.md §3, §7).

What remains for a verifier is state: the chain (revocation, consent, settled nonces,
escrow) and the store's atomic reservation (nonce, budget, cap, escrow). ``check_consent``
words the consent refusal from a value read on chain, so both verifiers word it alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .eddsa import Signature, verify
from .errors import ErrorCode, PaymentError
from .intent import Intent, SignedIntent
from .mandate import Mandate, request_hash

__all__ = [
    "CONSENT_NOT_WITHDRAWN",
    "BoundRequest",
    "Terms",
    "check_consent",
    "check_deadline",
    "check_intent",
    "check_intent_window",
    "check_mandate",
    "check_per_payment_cap",
    "check_price",
    "check_request",
    "check_session_signature",
]


#: ``processorConsentUntil`` of a consent that stands (given and never withdrawn): ``2^64 - 1``.
CONSENT_NOT_WITHDRAWN = 2**64 - 1


@dataclass(frozen=True)
class Terms:
    """What a verifier accepts intents for: its chain (``chain_id``) and Settlement contract
    (``settlement``, the EIP-712 verifying contract), the ``asset`` (token address), the one
    ``processor`` (address) that settles for it, and the shortest time left to settle that
    it accepts, ``min_deadline_seconds`` (seconds) — for the intent's ``validBefore`` and
    the mandate's ``deadline`` alike."""

    chain_id: int
    settlement: str
    asset: str
    processor: str
    min_deadline_seconds: int = 300


@dataclass(frozen=True)
class BoundRequest:
    """The HTTP request a mandate must be bound to (docs/PROTOCOL.md §3 ``requestHash``):
    ``method``, raw path plus ``?query``, and the body bytes."""

    method: str
    path_and_query: str
    body: bytes = b""

    @property
    def hash(self) -> int:
        """Its ``requestHash`` (``aep2.mandate.request_hash``)."""
        return request_hash(self.method, self.path_and_query, self.body)


def check_price(mandate: Mandate, *, payee: str, amount: int) -> None:
    """The mandate pays ``payee`` (EIP-55 address, named in the message) exactly ``amount``
    base units. Raises ``payee_mismatch``, then ``amount_mismatch``."""
    if mandate.payee != payee.lower():
        raise PaymentError(ErrorCode.PAYEE_MISMATCH, f"mandate.payee: {mandate.payee_checksum} is not {payee}")
    if mandate.amount != amount:
        raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"mandate.amount: {mandate.amount} ≠ price {amount}")


def check_intent(signed: SignedIntent, intent_id: bytes, terms: Terms) -> None:
    """``signed`` is the intent ``intent_id`` (32 bytes) of ``terms``' deployment, asset and
    processor, signed by its payer (EIP-712, low-s).

    Raises, in this order: ``intent_domain_mismatch`` (chain id or Settlement address),
    ``intent_id_mismatch``, ``asset_mismatch``, ``processor_mismatch`` (the intent names
    another processor: only that one could settle it), ``invalid_intent_signature``.
    """
    intent = signed.intent
    if intent.chain_id != terms.chain_id or intent.verifying_contract != terms.settlement:
        raise PaymentError(
            ErrorCode.INTENT_DOMAIN_MISMATCH,
            f"intent.chainId/verifyingContract: {intent.chain_id}/{intent.verifying_contract} is not "
            f"{terms.chain_id}/{terms.settlement}",
        )
    if intent.intent_id != intent_id:
        raise PaymentError(ErrorCode.INTENT_ID_MISMATCH, "intentId: not the EIP-712 digest of payload.intent")
    if intent.asset != terms.asset:
        raise PaymentError(ErrorCode.ASSET_MISMATCH, f"intent.asset: {intent.asset} is not {terms.asset}")
    if intent.processor != terms.processor:
        raise PaymentError(
            ErrorCode.PROCESSOR_MISMATCH,
            f"intent.processor: {intent.processor} does not settle here (name {terms.processor})",
        )
    if not signed.is_valid():
        raise PaymentError(ErrorCode.INVALID_INTENT_SIGNATURE, "intent.signature: not the payer's EIP-712 signature")


def check_intent_window(intent: Intent, *, payee: str, now: float, min_deadline_seconds: int) -> None:
    """The intent is valid at ``now`` (unix seconds) and still ``min_deadline_seconds`` later
    (so an unregistered intent is still registrable when the processor settles), and its
    allowlist has ``payee``. Raises ``intent_not_yet_valid``, ``intent_expired`` or
    ``payee_not_allowed``."""
    if now < intent.valid_after:
        raise PaymentError(ErrorCode.INTENT_NOT_YET_VALID, f"intent.validAfter: {intent.valid_after} > now")
    if now + min_deadline_seconds > intent.valid_before:
        raise PaymentError(
            ErrorCode.INTENT_EXPIRED,
            f"intent.validBefore: {intent.valid_before} leaves under {min_deadline_seconds} s to settle",
        )
    if not intent.allows_payee(payee):
        raise PaymentError(ErrorCode.PAYEE_NOT_ALLOWED, f"intent.payees: {payee} not allowed")


def check_session_signature(intent: Intent, mandate: Mandate, signature: Signature) -> None:
    """``signature`` is the intent's session key's EdDSA-Poseidon signature over the mandate's
    ``M`` (docs/PROTOCOL.md §1, §3). Raises ``invalid_mandate_signature``."""
    if not verify(intent.session_key, mandate.message(), signature):
        raise PaymentError(ErrorCode.INVALID_MANDATE_SIGNATURE, "signature: not the session key's over the mandate")


def check_request(mandate: Mandate, request: BoundRequest) -> None:
    """The mandate's ``requestHash`` is ``request``'s. Raises ``request_mismatch``."""
    if mandate.request_hash != request.hash:
        raise PaymentError(
            ErrorCode.REQUEST_MISMATCH,
            f"mandate.requestHash: signed for another request than {request.method} {request.path_and_query}",
        )


def check_deadline(mandate: Mandate, *, now: float, min_deadline_seconds: int) -> None:
    """The mandate's ``deadline`` (unix seconds) is at least ``min_deadline_seconds`` after
    ``now``, so the processor has time to batch it. Raises ``mandate_expired``."""
    if mandate.deadline < now + min_deadline_seconds:
        raise PaymentError(
            ErrorCode.MANDATE_EXPIRED,
            f"mandate.deadline: {mandate.deadline} is under {min_deadline_seconds} s from now",
        )


def check_mandate(
    mandate: Mandate,
    signature: Signature,
    intent: Intent,
    *,
    payee: str,
    now: float,
    min_deadline_seconds: int,
    request: BoundRequest | None = None,
) -> None:
    """Step 3 of the module docstring for a mandate under a checked ``intent`` (see
    ``check_intent``), paid to ``payee`` at ``now`` (unix seconds): ``check_intent_window``,
    ``check_session_signature``, ``check_request`` when ``request`` is given (only a resource
    server knows it), then ``check_deadline``. Raises the first failure's ``PaymentError``."""
    check_intent_window(intent, payee=payee, now=now, min_deadline_seconds=min_deadline_seconds)
    check_session_signature(intent, mandate, signature)
    if request is not None:
        check_request(mandate, request)
    check_deadline(mandate, now=now, min_deadline_seconds=min_deadline_seconds)


def check_per_payment_cap(intent: Intent, mandate: Mandate) -> None:
    """The mandate is within the intent's ``maxPerPayment`` (base units). Raises
    ``per_payment_cap_exceeded``. The store's reservation checks it again, atomically with
    the budget; this early check lets a verifier that reserves nothing refuse it too."""
    if mandate.amount > intent.max_per_payment:
        raise PaymentError(
            ErrorCode.PER_PAYMENT_CAP_EXCEEDED, f"mandate.amount: {mandate.amount} > cap {intent.max_per_payment}"
        )


def check_consent(payer: str, processor: str, consent_until: int) -> None:
    """``payer``'s consent to ``processor`` stands: ``consent_until``, the Settlement's
    ``processorConsentUntil(payer, processor)``, is ``CONSENT_NOT_WITHDRAWN`` (0: never given;
    otherwise the unix second a withdrawn consent lapses — a withdrawn consent still lets
    mandates already served settle, so no new one is accepted, docs/PROTOCOL.md §7).
    Raises ``processor_not_authorized``."""
    if consent_until == CONSENT_NOT_WITHDRAWN:
        return
    if consent_until == 0:
        reason = f"intent.payer: {payer} has not authorised processor {processor} (setProcessor)"
    else:
        reason = f"intent.payer: {payer} withdrew consent from processor {processor} (lapses at {consent_until})"
    raise PaymentError(ErrorCode.PROCESSOR_NOT_AUTHORIZED, reason)
