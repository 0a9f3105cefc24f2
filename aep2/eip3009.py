"""EIP-3009 ``TransferWithAuthorization`` and ``CancelAuthorization`` as EIP-712 typed data.

What an x402 ``exact`` EVM payment signs (``specs/schemes/exact/scheme_exact_evm.md``,
EIP-3009): a ``TransferWithAuthorization(from, to, value, validAfter, validBefore, nonce)``
message under the token's own EIP-712 domain (``name``, ``version``, ``chainId``,
``verifyingContract`` = the token). ``value`` is in token base units, ``validAfter`` and
``validBefore`` are unix seconds, ``nonce`` is 32 random bytes chosen by the payer.

One definition shared by everything that builds, signs or checks these messages (the gateway,
the facilitator, tests), so the struct layout cannot drift between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak, to_checksum_address

from .eip712 import EIP712_DOMAIN_TYPE
from .x402.models import ExactEvmAuthorization

__all__ = [
    "EIP712_DOMAIN_TYPE",
    "TRANSFER_WITH_AUTHORIZATION_TYPES",
    "CANCEL_AUTHORIZATION_TYPES",
    "TokenDomain",
    "transfer_with_authorization_typed_data",
    "transfer_with_authorization_digest",
    "cancel_authorization_typed_data",
    "digest_of",
]


TRANSFER_WITH_AUTHORIZATION_TYPES: dict[str, list[dict[str, str]]] = {
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

CANCEL_AUTHORIZATION_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": EIP712_DOMAIN_TYPE,
    "CancelAuthorization": [
        {"name": "authorizer", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ],
}


@dataclass(frozen=True)
class TokenDomain:
    """A token's EIP-712 domain: ``name`` and ``version`` as the token reports them (USDC:
    ``"USD Coin"``, ``"2"``), the chain and the token's address."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def to_typed_data(self) -> dict[str, Any]:
        """The ``domain`` object of EIP-712 typed data."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


def transfer_with_authorization_typed_data(domain: TokenDomain, authorization: ExactEvmAuthorization) -> dict[str, Any]:
    """The full EIP-712 typed data (``types``, ``primaryType``, ``domain``, ``message``) that
    the payer signs for ``authorization``, ready for ``encode_typed_data(full_message=…)``."""
    return {
        "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
        "primaryType": "TransferWithAuthorization",
        "domain": domain.to_typed_data(),
        "message": {
            "from": to_checksum_address(authorization.from_),
            "to": to_checksum_address(authorization.to),
            "value": int(authorization.value),
            "validAfter": int(authorization.valid_after),
            "validBefore": int(authorization.valid_before),
            "nonce": bytes.fromhex(authorization.nonce[2:]),
        },
    }


def cancel_authorization_typed_data(domain: TokenDomain, authorizer: str, nonce: bytes) -> dict[str, Any]:
    """The EIP-712 typed data of ``cancelAuthorization(authorizer, nonce)`` (32-byte ``nonce``)."""
    return {
        "types": CANCEL_AUTHORIZATION_TYPES,
        "primaryType": "CancelAuthorization",
        "domain": domain.to_typed_data(),
        "message": {"authorizer": to_checksum_address(authorizer), "nonce": nonce},
    }


def digest_of(typed_data: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest ``keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(message))``:
    what ECDSA signs and what ERC-1271 ``isValidSignature`` is asked about."""
    signable: SignableMessage = encode_typed_data(full_message=typed_data)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def transfer_with_authorization_digest(domain: TokenDomain, authorization: ExactEvmAuthorization) -> bytes:
    """The EIP-712 digest of ``authorization`` under ``domain``."""
    return digest_of(transfer_with_authorization_typed_data(domain, authorization))
