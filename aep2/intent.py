"""The payer's intent: one EIP-712 signature authorising a session key to spend within limits.

Typed data (docs/PROTOCOL.md §2)::

    Intent(address payer,address asset,uint256 sessionKeyHash,uint256 maxAmount,
           uint256 maxPerPayment,uint64 validAfter,uint64 validBefore,uint256 payeesRoot,
           address processor,bytes32 salt)

under the domain ``{name: "AEP2 Settlement", version: "1", chainId, verifyingContract}``.
The intent id is the EIP-712 digest; mandates sign ``intent_field = int(intent_id) >> 8``;
the contract and the circuit identify the intent by its ``commitment``
``Poseidon(intent_field, sessionKeyHash, payeesRoot, cap)``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import cached_property

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from .babyjubjub import Point
from .eip712 import EIP712_DOMAIN_TYPE
from .eddsa import key_hash
from .payees import MAX_PAYEES, payees_root
from .poseidon import poseidon

__all__ = ["DOMAIN_NAME", "DOMAIN_VERSION", "EIP712_DOMAIN_TYPE", "Intent", "SignedIntent", "INTENT_TYPES"]

DOMAIN_NAME = "AEP2 Settlement"
DOMAIN_VERSION = "1"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


INTENT_TYPES = {
    "Intent": [
        {"name": "payer", "type": "address"},
        {"name": "asset", "type": "address"},
        {"name": "sessionKeyHash", "type": "uint256"},
        {"name": "maxAmount", "type": "uint256"},
        {"name": "maxPerPayment", "type": "uint256"},
        {"name": "validAfter", "type": "uint64"},
        {"name": "validBefore", "type": "uint64"},
        {"name": "payeesRoot", "type": "uint256"},
        {"name": "processor", "type": "address"},
        {"name": "salt", "type": "bytes32"},
    ]
}


@dataclass(frozen=True)
class Intent:
    """An unsigned intent.

    Amounts are token base units; ``valid_after``/``valid_before`` unix seconds (valid when
    ``valid_after <= t < valid_before``, ``valid_after < 2^32``); ``payees`` are normalised to
    sorted checksummed addresses (empty: any payee; at most 256) and signed as their
    allowlist root (``aep2.payees``); ``processor`` is the one processor that may settle the
    intent. ``chain_id`` and ``verifying_contract`` (the Settlement contract) form the
    EIP-712 domain.

    Raises ``ValueError`` naming the field for out-of-range values.
    """

    payer: str
    asset: str
    session_key: Point
    max_amount: int
    max_per_payment: int
    valid_after: int
    valid_before: int
    chain_id: int
    verifying_contract: str
    processor: str
    payees: tuple[str, ...] = ()
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        for name in ("payer", "asset", "verifying_contract", "processor"):
            object.__setattr__(self, name, _address(name, getattr(self, name)))
        payees = tuple(sorted((_address("payees", p) for p in self.payees), key=lambda a: int(a, 16)))
        if len(set(payees)) != len(payees):
            raise ValueError("payees: duplicate address")
        if len(payees) > MAX_PAYEES or (payees and int(payees[0], 16) == 0):
            raise ValueError(f"payees: at most {MAX_PAYEES} non-zero addresses")
        object.__setattr__(self, "payees", payees)
        object.__setattr__(self, "session_key", (int(self.session_key[0]), int(self.session_key[1])))
        if int(self.processor, 16) == 0:
            raise ValueError("processor: must name the settlement processor (not the zero address)")
        if not 0 < self.chain_id < 2**256:
            raise ValueError("chainId: must be in (0, 2^256)")
        if not 0 < self.max_amount < 2**96:
            raise ValueError("maxAmount: must be in (0, 2^96)")
        if not 0 < self.max_per_payment < 2**256:
            raise ValueError("maxPerPayment: must be in (0, 2^256)")
        if not 0 <= self.valid_after < 2**32:
            raise ValueError("validAfter: must be in [0, 2^32)")
        if not self.valid_after < self.valid_before < 2**64:
            raise ValueError("validBefore: must be after validAfter and below 2^64")
        if len(self.salt) != 32:
            raise ValueError("salt: must be 32 bytes")

    @cached_property
    def session_key_hash(self) -> int:
        """``Poseidon(Ax, Ay)`` of the session key."""
        return key_hash(self.session_key)

    @cached_property
    def payees_root(self) -> int:
        """The allowlist root the intent signs (0: any payee)."""
        return payees_root(self.payees)

    def typed_data(self) -> dict:
        """The EIP-712 ``full_message`` (types, primaryType, domain, message)."""
        return {
            "types": {
                "EIP712Domain": EIP712_DOMAIN_TYPE,
                **INTENT_TYPES,
            },
            "primaryType": "Intent",
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": self.verifying_contract,
            },
            "message": self.message(),
        }

    def message(self) -> dict:
        """The EIP-712 message fields (also the contract's ``Intent`` struct)."""
        return {
            "payer": self.payer,
            "asset": self.asset,
            "sessionKeyHash": self.session_key_hash,
            "maxAmount": self.max_amount,
            "maxPerPayment": self.max_per_payment,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "payeesRoot": self.payees_root,
            "processor": self.processor,
            "salt": self.salt,
        }

    @cached_property
    def intent_id(self) -> bytes:
        """The EIP-712 digest ``keccak256(0x1901 || domainSeparator || structHash)`` (32 bytes)."""
        signable = encode_typed_data(full_message=self.typed_data())
        return keccak(b"\x19" + signable.version + signable.header + signable.body)

    @property
    def intent_field(self) -> int:
        """``int(intent_id) >> 8``: the intent as the field element mandates sign."""
        return int.from_bytes(self.intent_id, "big") >> 8

    @property
    def cap(self) -> int:
        """The per-payment cap as the circuit checks it: ``min(maxPerPayment, 2^64 - 1)``."""
        return min(self.max_per_payment, 2**64 - 1)

    @cached_property
    def commitment(self) -> int:
        """``Poseidon(intent_field, sessionKeyHash, payeesRoot, cap)``: the intent as the
        contract stores it and the circuit opens it (docs/PROTOCOL.md §2)."""
        return poseidon(self.intent_field, self.session_key_hash, self.payees_root, self.cap)

    def allows_payee(self, payee: str) -> bool:
        """Whether ``payee`` may receive mandates under this intent."""
        return not self.payees or to_checksum_address(payee) in self.payees

    def sign(self, private_key: bytes | str) -> SignedIntent:
        """Sign with the payer's Ethereum key (EIP-712). Raises ``ValueError`` if the key is not ``payer``'s."""
        account = Account.from_key(private_key)
        if account.address != self.payer:
            raise ValueError(f"payer: key belongs to {account.address}, not {self.payer}")
        signed = account.sign_typed_data(full_message=self.typed_data())
        return SignedIntent(self, bytes(signed.signature))


@dataclass(frozen=True)
class SignedIntent:
    """An intent with the payer's 65-byte EIP-712 signature (``r || s || v``)."""

    intent: Intent
    signature: bytes

    def recover_signer(self) -> str:
        """The address that signed; raises ``ValueError`` for a malformed signature."""
        signable = encode_typed_data(full_message=self.intent.typed_data())
        return Account.recover_message(signable, signature=self.signature)

    def is_valid(self) -> bool:
        """Whether the signature is the payer's (low-s, as EIP-2 and the contract require)."""
        if len(self.signature) != 65:
            return False
        s = int.from_bytes(self.signature[32:64], "big")
        if s > _SECP256K1_N // 2:
            return False
        try:
            return self.recover_signer() == self.intent.payer
        except Exception:
            return False


_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _address(name: str, value: str) -> str:
    try:
        return to_checksum_address(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {value!r} is not an address") from exc
