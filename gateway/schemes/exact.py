"""Verifying an x402 ``exact`` EVM payment (EIP-3009 ``transferWithAuthorization``) off-chain.

What standard x402 clients send (x402 ``specs/schemes/exact/scheme_exact_evm.md``):
``payload = {"signature": "0x…", "authorization": {"from", "to", "value", "validAfter",
"validBefore", "nonce"}}``, signed with EIP-712 under the token's domain. The gateway
verifies the signature and the payer's token balance, records the authorization, serves,
and settles it afterwards as its own facilitator (``gateway.facilitator``).
"""

from __future__ import annotations

import re
import time
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from aep2.errors import ErrorCode, PaymentError
from aep2.intent import EIP712_DOMAIN_TYPE
from aep2.store import ExactPaymentRecord, PaymentStore

from ..chain import ChainCache
from ..config import GatewayConfig
from .aep2 import AcceptedPayment

__all__ = ["ExactScheme", "TRANSFER_WITH_AUTHORIZATION_TYPES"]

TRANSFER_WITH_AUTHORIZATION_TYPES = {
    "EIP712Domain": EIP712_DOMAIN_TYPE,
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ],
}

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_UINT = re.compile(r"0|[1-9][0-9]{0,77}")


def _field(authorization: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = authorization.get(name)
    if isinstance(value, int) and pattern is _UINT and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"payload.authorization.{name}: malformed")
    return value


class ExactScheme:
    """Verifier for scheme ``exact`` with EIP-3009 on the gateway's asset."""

    def __init__(self, config: GatewayConfig, store: PaymentStore, chain: ChainCache) -> None:
        self.config = config
        self.store = store
        self.chain = chain

    async def verify_and_record(self, payload: Any, *, amount: int, now: float | None = None) -> AcceptedPayment:
        """Verify an ``exact`` payload for a request priced ``amount``; record it for settlement.

        Raises ``PaymentError``: ``invalid_payload``, ``payee_mismatch``, ``amount_mismatch``,
        ``authorization_expired``, ``invalid_exact_signature``, ``insufficient_funds``,
        ``authorization_used``.
        """
        now = time.time() if now is None else now
        if not isinstance(payload, dict) or not isinstance(payload.get("authorization"), dict):
            raise PaymentError(ErrorCode.INVALID_PAYLOAD, "payload.authorization: missing")
        signature = payload.get("signature")
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            raise PaymentError(ErrorCode.INVALID_PAYLOAD, "payload.signature: must be 65 bytes of 0x hex")
        auth = payload["authorization"]
        sender = _field(auth, "from", _ADDRESS)
        to = _field(auth, "to", _ADDRESS)
        value = int(_field(auth, "value", _UINT))
        valid_after = int(_field(auth, "validAfter", _UINT))
        valid_before = int(_field(auth, "validBefore", _UINT))
        nonce = _field(auth, "nonce", _NONCE)

        if to.lower() != self.config.payee.lower():
            raise PaymentError(ErrorCode.PAYEE_MISMATCH, f"payload.authorization.to: {to} is not {self.config.payee}")
        if value != amount:
            raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"payload.authorization.value: {value} ≠ price {amount}")
        if not valid_after <= now < valid_before - 6:
            raise PaymentError(
                ErrorCode.AUTHORIZATION_EXPIRED, "payload.authorization.validBefore/validAfter: not valid now"
            )
        typed = {
            "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
            "primaryType": "TransferWithAuthorization",
            "domain": {
                "name": self.config.token_name,
                "version": self.config.token_version,
                "chainId": self.config.chain_id,
                "verifyingContract": self.config.asset,
            },
            "message": {
                "from": sender,
                "to": to,
                "value": value,
                "validAfter": valid_after,
                "validBefore": valid_before,
                "nonce": bytes.fromhex(nonce[2:]),
            },
        }
        try:
            signer = Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
        except Exception:
            signer = None
        if signer is None or signer.lower() != sender.lower():
            raise PaymentError(ErrorCode.INVALID_EXACT_SIGNATURE, "payload.signature: not signed by authorization.from")

        balance, _ = await self.chain.token(signer, self.config.asset, max_age=30.0)
        pending = sum(r.amount for r in await self.store.exact_payments("accepted") if r.payer == signer)
        if pending + value > balance:
            raise PaymentError(
                ErrorCode.INSUFFICIENT_FUNDS, f"payload.authorization.value: {pending} pending + {value} > balance {balance}"
            )
        await self.store.save_exact_payment(
            ExactPaymentRecord(
                nonce=nonce.lower(),
                payer=signer,
                payee=self.config.payee,
                asset=self.config.asset,
                amount=value,
                authorization={
                    "from": signer,
                    "to": self.config.payee,
                    "value": str(value),
                    "validAfter": str(valid_after),
                    "validBefore": str(valid_before),
                    "nonce": nonce.lower(),
                },
                signature=signature,
                status="accepted",
            )
        )
        return AcceptedPayment(nonce.lower(), "exact", signer, value, nonce.lower())
