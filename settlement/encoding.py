"""The batch's public words and padding, as circuits/batch.circom and the contract read them.

Shared by the witness builder (settlement/witness.py) and anything that checks a statement,
so that building a witness never depends on the prover (docs/PROTOCOL.md §5)::

    intentWord = window + nonces·2^33 + total·2^161
    payeeWord  = payee + amount·2^160
"""

from __future__ import annotations

from functools import lru_cache

from aep2.eddsa import SessionKey, Signature
from aep2.poseidon import poseidon

__all__ = [
    "PADDING_MESSAGE",
    "PADDING_SECRET",
    "pack_intent_word",
    "pack_payee_word",
    "padding_signature",
]

_INTENT_FIELDS = (("window", 33), ("nonces", 128), ("total", 88))
_PAYEE_FIELDS = (("payee", 160), ("amount", 93))

# A padding slot verifies (with the check switched off) against the base point B8, i.e. the
# key with secret scalar 1, over the message of an all-zero mandate (circuits/batch.circom).
PADDING_SECRET = 1
PADDING_MESSAGE = poseidon(0, 0, 0)


def _pack(fields: tuple[tuple[str, int], ...], values: tuple[int, ...]) -> int:
    word = 0
    shift = 0
    for (name, bits), value in zip(fields, values):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} = {value} does not fit in {bits} bits")
        word |= value << shift
        shift += bits
    return word


def pack_intent_word(window: int, nonces: int, total: int) -> int:
    """``window + nonces·2^33 + total·2^161``; raises ``ValueError`` naming a part out of range."""
    return _pack(_INTENT_FIELDS, (window, nonces, total))


def pack_payee_word(payee: int, amount: int) -> int:
    """``payee + amount·2^160`` (payee < 2^160, amount < 2^93); raises ``ValueError``."""
    return _pack(_PAYEE_FIELDS, (payee, amount))


@lru_cache(maxsize=1)
def padding_signature() -> Signature:
    """The signature a padding mandate slot carries (key B8, message ``PADDING_MESSAGE``)."""
    return SessionKey(PADDING_SECRET).sign(PADDING_MESSAGE)
