"""Error codes on the wire and the exception that carries them.

A refused payment is an HTTP 402 (400 for a malformed one, x402 ``transports-v2/http.md``)
whose ``error`` field (x402 ``PaymentRequired.error``) is one of the codes below, followed by
``": "`` and a human-readable reason that names the offending field. The x402 specification's
codes (``specs/x402-specification-v2.md`` §9, and the ``exact`` EVM scheme's) are used where
one exists; the ``aep2``-only cases have codes of their own. The codes are stable API:
clients branch on them.
"""

from __future__ import annotations

__all__ = ["PaymentError", "ErrorCode"]


class ErrorCode:
    """Stable error codes (snake_case, as in the x402 SDK's ``ERR_*`` reasons)."""

    PAYMENT_REQUIRED = "payment_required"
    # x402 specification §9
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_PAYMENT_REQUIREMENTS = "invalid_payment_requirements"
    UNSUPPORTED_VERSION = "invalid_x402_version"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    NETWORK_MISMATCH = "invalid_network"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVALID_TRANSACTION_STATE = "invalid_transaction_state"
    UNEXPECTED_VERIFY_ERROR = "unexpected_verify_error"
    UNEXPECTED_SETTLE_ERROR = "unexpected_settle_error"
    # x402 ``exact`` EVM scheme (EIP-3009)
    INVALID_EXACT_SIGNATURE = "invalid_exact_evm_payload_signature"
    EXACT_RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
    EXACT_VALUE_MISMATCH = "invalid_exact_evm_payload_authorization_value_mismatch"
    EXACT_VALID_AFTER = "invalid_exact_evm_payload_authorization_valid_after"
    EXACT_VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"
    AUTHORIZATION_USED = "invalid_exact_evm_nonce_already_used"
    EXACT_SIMULATION_FAILED = "invalid_exact_evm_transaction_simulation_failed"
    TOKEN_NAME_MISMATCH = "invalid_exact_evm_token_name_mismatch"
    TOKEN_VERSION_MISMATCH = "invalid_exact_evm_token_version_mismatch"
    # this gateway
    INVALID_HEADER = "invalid_payment_header"
    PAYLOAD_TOO_LARGE = "payload_too_large"
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
    PAYMENT_IDENTIFIER_CONFLICT = "payment_identifier_conflict"
    PAYMENT_IN_PROGRESS = "payment_in_progress"
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
