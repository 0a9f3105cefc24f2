"""The per-call mandate, signed by the agent's session key (docs/PROTOCOL.md §3).

``M = Poseidon(intent, payee + amount·2^160, requestHash + nonce·2^160 + deadline·2^200)``
with circomlib ``Poseidon(3)``, signed with EdDSA-Poseidon (``aep2.eddsa``). Packing the six
fields into three elements halves the hashing cost of verifying a mandate; the circuit
range-checks each part so the packing is injective.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from .eddsa import SessionKey, Signature
from .poseidon import poseidon

__all__ = [
    "MAX_AMOUNT",
    "MAX_NONCE",
    "MAX_DEADLINE",
    "NONCE_WINDOW",
    "Mandate",
    "request_hash",
    "payment_id",
    "message_hash",
    "nonce_window",
]

MAX_AMOUNT = 2**64 - 1
MAX_NONCE = 2**40 - 1
MAX_DEADLINE = 2**40 - 1
REQUEST_HASH_BITS = 160
#: Nonces per settled-nonce bitmap window (docs/PROTOCOL.md §3).
NONCE_WINDOW = 128


def nonce_window(nonce: int) -> tuple[int, int]:
    """``(window, bit)`` of a nonce: nonce ``n`` is bit ``n % 128`` of window ``n // 128``
    (the on-chain ``settledNonces(intentId, window)`` bitmap and the circuit's slot window)."""
    return nonce // NONCE_WINDOW, nonce % NONCE_WINDOW


def request_hash(method: str, path_and_query: str, body: bytes = b"") -> int:
    """Bind a mandate to one HTTP request.

    ``int(sha256(METHOD + " " + PATH_AND_QUERY + "\\n" + sha256(body))) >> 96``: upper-case
    method, raw path plus ``?query`` when there is one, the 32-byte body digest. The top
    160 bits, so it packs with the nonce and deadline into one field element.
    """
    line = f"{method.upper()} {path_and_query}\n".encode("utf-8")
    digest = hashlib.sha256(line + hashlib.sha256(body).digest()).digest()
    return int.from_bytes(digest, "big") >> (256 - REQUEST_HASH_BITS)


def message_hash(intent_field: int, payee: int, amount: int, nonce: int, deadline: int, request_hash: int) -> int:
    """``M`` for raw field values (the circuit's packing, without range checks)."""
    return poseidon(intent_field, payee + (amount << 160), request_hash + (nonce << 160) + (deadline << 200))


def payment_id(intent_id: bytes, nonce: int) -> str:
    """The receipt's payment id: ``0x`` + hex of ``keccak256(abi.encode(intentId, nonce))``."""
    # abi.encode(bytes32, uint256) is the two 32-byte words back to back.
    return "0x" + keccak(intent_id + nonce.to_bytes(32, "big")).hex()


@dataclass(frozen=True, slots=True)
class Mandate:
    """One payment authorisation: ``amount`` base units of the intent's asset to ``payee``.

    ``nonce`` increases per intent (``< 2^40``); ``deadline`` is the latest batch time
    reference (unix seconds) at which it may settle; ``request_hash`` from ``request_hash()``.
    Raises ``ValueError`` naming the field when a value is out of range.
    """

    intent_id: bytes
    payee: str  # normalised to lower-case hex
    amount: int
    nonce: int
    deadline: int
    request_hash: int

    def __post_init__(self) -> None:
        payee = self.payee.lower()
        if len(payee) != 42 or not payee.startswith("0x"):
            raise ValueError("mandate.payee: must be a 20-byte hex address")
        object.__setattr__(self, "payee", payee)
        if len(self.intent_id) != 32:
            raise ValueError("intentId: must be 32 bytes")
        if not 0 <= self.amount <= MAX_AMOUNT:
            raise ValueError("mandate.amount: must be in [0, 2^64)")
        if not 0 <= self.nonce <= MAX_NONCE:
            raise ValueError("mandate.nonce: must be in [0, 2^40)")
        if not 0 <= self.deadline <= MAX_DEADLINE:
            raise ValueError("mandate.deadline: must be in [0, 2^40)")
        if not 0 <= self.request_hash < 2**REQUEST_HASH_BITS:
            raise ValueError("mandate.requestHash: must be in [0, 2^160)")

    @property
    def intent_field(self) -> int:
        """``int(intent_id) >> 8``, the intent as signed inside ``M``."""
        return int.from_bytes(self.intent_id, "big") >> 8

    def message(self) -> int:
        """``M``, the field element the session key signs."""
        return message_hash(
            self.intent_field, int(self.payee, 16), self.amount, self.nonce, self.deadline, self.request_hash
        )

    def sign(self, key: SessionKey) -> Signature:
        """Sign ``M`` with the session key."""
        return key.sign(self.message())

    @property
    def payment_id(self) -> str:
        """See ``payment_id()``."""
        return payment_id(self.intent_id, self.nonce)

    @property
    def payee_checksum(self) -> str:
        """The payee as an EIP-55 address."""
        return to_checksum_address(self.payee)
