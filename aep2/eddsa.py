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

from . import _native
from . import babyjubjub as bjj
from .fields import to_field_bytes
from .poseidon import poseidon

__all__ = ["Signature", "SessionKey", "key_hash", "verify"]

#: Table windows: B8's table is built once per process (26 rows of 512 points, about 1.3 MB,
#: about 10 ms); a key's (37 rows of 64 points, about 230 KB) once per session key, in about 2 ms.
B8_WINDOW = 10
KEY_WINDOW = 7
L = bjj.SUBGROUP_ORDER


def _encode_point(point: bjj.Point) -> bytes:
    return point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


@lru_cache(maxsize=1)
def _b8_table() -> _native.FixedBase:
    # Built on first use, not at import: a few milliseconds that a CLI importing aep2 need not pay.
    return _native.FixedBase(_encode_point(bjj.B8), B8_WINDOW)


def _multiply_b8(scalar: int) -> bjj.Point:
    encoded = _b8_table().multiply(scalar.to_bytes(32, "big"))
    return (int.from_bytes(encoded[:32], "big"), int.from_bytes(encoded[32:], "big"))


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
        r8 = _multiply_b8(r)
        ax, ay = self.public_key
        hm = poseidon(r8[0], r8[1], ax, ay, message)
        s = (r + 8 * hm * self.secret) % L
        return Signature(r8[0], r8[1], s)


@lru_cache(maxsize=4096)
def _public_key(secret: int) -> bjj.Point:
    return _multiply_b8(secret)


@lru_cache(maxsize=512)
def _key_table(public_key: bjj.Point) -> tuple[_native.FixedBase, bytes] | None:
    # The signed-window table of 8·A and A's encoding, or None for a key circomlib's verifier
    # cannot accept (off the curve, or of small order). A pure function of the public key:
    # caching it spares the table build, never a check of R8, S or the equation.
    if not bjj.is_on_curve(public_key):
        return None
    eight_a = bjj.multiply(public_key, 8)
    if eight_a == bjj.IDENTITY:
        return None
    return _native.FixedBase(_encode_point(eight_a), KEY_WINDOW), _encode_point(public_key)


def verify(public_key: bjj.Point, message: int, signature: Signature) -> bool:
    """Whether ``signature`` is a valid EdDSA-Poseidon signature of ``message`` under ``public_key``.

    Accepts exactly what circomlib's ``EdDSAPoseidonVerifier`` accepts for a key that is not
    of small order: ``message`` and ``R8``'s coordinates below the field modulus, ``S < l``,
    ``R8`` on the curve, and ``S·B8 == R8 + 8·hm·A`` with ``hm = Poseidon(R8x, R8y, Ax, Ay, M)``,
    all checked in ``aep2._native.eddsa_verify`` on every call. Never raises for malformed
    values: they verify as ``False``.
    """
    key = _key_table(public_key)
    if key is None:
        return False
    table, encoded_key = key
    try:
        challenge = (
            signature.R8x.to_bytes(32, "big")
            + signature.R8y.to_bytes(32, "big")
            + encoded_key
            + message.to_bytes(32, "big")
        )
        encoded_s = signature.S.to_bytes(32, "big")
    except OverflowError:  # negative, or 2^256 or more: no field element, no valid S
        return False
    return _native.eddsa_verify(_b8_table(), table, challenge, encoded_s)
