"""EdDSA-Poseidon signatures on BabyJubJub, as circomlib's ``EdDSAPoseidonVerifier`` checks them.

A session key is a scalar ``k`` in ``[1, l)`` with public key ``A = k·B8``. Signing a field
element ``M`` (docs/PROTOCOL.md §1): ``r = sha512(k_be32 || M_be32) mod l``, ``R8 = r·B8``,
``hm = Poseidon(R8x, R8y, Ax, Ay, M)``, ``S = (r + 8·hm·k) mod l``. Verification checks
``S < l``, both points on the curve, ``A`` not of small order, and ``S·B8 == R8 + 8·hm·A``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from functools import lru_cache

from . import babyjubjub as bjj
from .fields import FIELD_MODULUS, to_field_bytes
from .poseidon import poseidon

__all__ = ["Signature", "SessionKey", "key_hash", "verify"]

class _LazyTable:
    # The B8 table takes a fraction of a second to build: do it on first use, not at import.
    _table: bjj.FixedBaseTable | None = None

    def __getattr__(self, name: str) -> object:
        if _LazyTable._table is None:
            _LazyTable._table = bjj.FixedBaseTable(bjj.B8, window=12, bits=253)
        return getattr(_LazyTable._table, name)


_B8_TABLE = _LazyTable()
L = bjj.SUBGROUP_ORDER


@dataclass(frozen=True, slots=True)
class Signature:
    """An EdDSA-Poseidon signature: the point ``R8`` and the scalar ``S`` (``S < l``)."""

    R8x: int
    R8y: int
    S: int


def key_hash(public_key: bjj.Point) -> int:
    """``Poseidon(Ax, Ay)``: the session key's commitment, stored in the intent."""
    return poseidon(public_key[0], public_key[1])


@dataclass(frozen=True)
class SessionKey:
    """The agent's BabyJubJub signing key (``secret`` in ``[1, l)``; never in its ``repr``)."""

    secret: int = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.secret < L:
            raise ValueError("session key secret must be in [1, l)")

    @classmethod
    def generate(cls) -> SessionKey:
        """Draw a fresh key from the OS's CSPRNG."""
        return cls(1 + secrets.randbelow(L - 1))

    @classmethod
    def from_hex(cls, value: str) -> SessionKey:
        """Load a key saved with ``to_hex``."""
        return cls(int(value, 16))

    def to_hex(self) -> str:
        """The secret as ``0x`` + 64 hex digits."""
        return "0x" + self.secret.to_bytes(32, "big").hex()

    @property
    def public_key(self) -> bjj.Point:
        """``A = k·B8``."""
        return _public_key(self.secret)

    @property
    def key_hash(self) -> int:
        """``Poseidon(Ax, Ay)``."""
        return key_hash(self.public_key)

    def sign(self, message: int) -> Signature:
        """Sign the field element ``message``; deterministic (RFC 8032-style nonce)."""
        digest = hashlib.sha512(self.secret.to_bytes(32, "big") + to_field_bytes(message)).digest()
        r = int.from_bytes(digest, "big") % L
        r8 = _B8_TABLE.multiply(r)
        ax, ay = self.public_key
        hm = poseidon(r8[0], r8[1], ax, ay, message)
        s = (r + 8 * hm * self.secret) % L
        return Signature(r8[0], r8[1], s)


@lru_cache(maxsize=4096)
def _public_key(secret: int) -> bjj.Point:
    return _B8_TABLE.multiply(secret)


@lru_cache(maxsize=512)
def _key_table(public_key: bjj.Point) -> bjj.FixedBaseTable | None:
    # Per-key signed-window table of 8·A: built once per session key (tens of ms, ~2 MB),
    # it turns hm·(8·A) into about 29 additions on every later mandate of that intent.
    if not bjj.is_on_curve(public_key):
        return None
    eight_a = bjj.multiply(public_key, 8)
    if eight_a == bjj.IDENTITY:
        return None
    return bjj.FixedBaseTable(eight_a, window=9, bits=254)


def verify(public_key: bjj.Point, message: int, signature: Signature) -> bool:
    """Whether ``signature`` is a valid EdDSA-Poseidon signature of ``message`` under ``public_key``.

    Accepts exactly what circomlib's ``EdDSAPoseidonVerifier`` accepts for a key that is not
    of small order. Never raises for malformed values: they verify as ``False``.
    """
    if not (0 <= message < FIELD_MODULUS and 0 <= signature.S < L):
        return False
    r8 = (signature.R8x, signature.R8y)
    if not bjj.is_on_curve(r8):
        return False
    table = _key_table(public_key)
    if table is None:
        return False
    hm = poseidon(r8[0], r8[1], public_key[0], public_key[1], message)
    right = bjj.ext_add(bjj.ext_from_affine(r8), table.multiply_ext(hm))
    left = _B8_TABLE.multiply_ext(signature.S)
    # Compare projectively: X1·Z2 == X2·Z1 and Y1·Z2 == Y2·Z1.
    p = FIELD_MODULUS
    return (left[0] * right[2] - right[0] * left[2]) % p == 0 and (
        left[1] * right[2] - right[1] * left[2]
    ) % p == 0
