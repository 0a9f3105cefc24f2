"""Error codes on the wire and the exception that carries them.

A refused payment is an HTTP 402 whose ``error`` field (x402 ``PaymentRequired.error``) is
one of the codes below, followed by ``": "`` and a human-readable reason that names the
offending field. The codes are stable API: clients branch on them.
"""

from __future__ import annotations

__all__ = ["PaymentError", "ErrorCode"]


class ErrorCode:
    """Stable error codes (snake_case, as in the x402 SDK's ``ERR_*`` reasons)."""

    PAYMENT_REQUIRED = "payment_required"
    INVALID_HEADER = "invalid_payment_header"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_VERSION = "unsupported_x402_version"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    INVALID_PAYLOAD = "invalid_payload"
    NETWORK_MISMATCH = "network_mismatch"
    ASSET_MISMATCH = "asset_mismatch"
    PAYEE_MISMATCH = "payee_mismatch"
    AMOUNT_MISMATCH = "amount_mismatch"
    UNKNOWN_INTENT = "unknown_intent"
    INTENT_ID_MISMATCH = "intent_id_mismatch"
    INVALID_INTENT_SIGNATURE = "invalid_intent_signature"
    INTENT_DOMAIN_MISMATCH = "intent_domain_mismatch"
    INTENT_NOT_YET_VALID = "intent_not_yet_valid"
    INTENT_EXPIRED = "intent_expired"
    INTENT_REVOKED = "intent_revoked"
    PAYEE_NOT_ALLOWED = "payee_not_allowed"
    PROCESSOR_MISMATCH = "processor_mismatch"
    PROCESSOR_NOT_AUTHORIZED = "processor_not_authorized"
    INVALID_MANDATE_SIGNATURE = "invalid_mandate_signature"
    REQUEST_MISMATCH = "request_mismatch"
    MANDATE_EXPIRED = "mandate_expired"
    NONCE_USED = "nonce_used"
    PER_PAYMENT_CAP_EXCEEDED = "per_payment_cap_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    INSUFFICIENT_ESCROW = "insufficient_escrow"
    INVALID_EXACT_SIGNATURE = "invalid_exact_signature"
    AUTHORIZATION_EXPIRED = "authorization_expired"
    AUTHORIZATION_USED = "authorization_used"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    CHAIN_UNAVAILABLE = "chain_unavailable"
    PRICE_UNAVAILABLE = "price_unavailable"


class PaymentError(Exception):
    """A payment refused for ``code`` (an ``ErrorCode``), with ``reason`` naming the field."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason

    @property
    def wire(self) -> str:
        """``"code: reason"`` as sent in ``PaymentRequired.error``."""
        return str(self)
