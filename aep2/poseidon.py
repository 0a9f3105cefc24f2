"""Poseidon over BN254 with circomlib's parameters (``circomlib/circuits/poseidon.circom``).

Backed by the Rust ``light-poseidon`` library; the test suite cross-checks it against
circomlibjs so the Python side and the circuit cannot drift apart.
"""

from __future__ import annotations

from functools import lru_cache

from light_poseidon_python import Hasher

from .fields import FIELD_MODULUS

__all__ = ["poseidon"]


@lru_cache(maxsize=None)
def _hasher(arity: int) -> Hasher:
    return Hasher(arity)


def poseidon(*inputs: int) -> int:
    """Return circomlib ``Poseidon(len(inputs))`` of 1 to 12 field elements.

    Raises ``ValueError`` for an input outside ``[0, FIELD_MODULUS)`` or a bad arity.
    """
    if not 1 <= len(inputs) <= 12:
        raise ValueError(f"Poseidon takes 1 to 12 inputs, got {len(inputs)}")
    for value in inputs:
        if not 0 <= value < FIELD_MODULUS:
            raise ValueError(f"Poseidon input {value} is not a BN254 field element")
    digest = _hasher(len(inputs)).hash_bytes_be([value.to_bytes(32, "big") for value in inputs])
    return int(digest, 16)
