"""Poseidon over BN254 with circomlib's parameters (``circomlib/circuits/poseidon.circom``).

One to five inputs (every width the protocol hashes: key hash and tree nodes 2, mandate 3,
commitment 4, EdDSA challenge 5) run in ``aep2._native``: circomlibjs' optimised permutation
on Montgomery limbs. Profiling showed the light-poseidon binding spent its ~150 µs for five
inputs in the hash itself, not in converting arguments (ints and bytes cost the same), so
the fix is a cheaper permutation, not a cheaper call. Wider calls (6 to 12 inputs) still go
to the ``light-poseidon`` binding. The test suite cross-checks both against circomlibjs and
each other, so the Python side and the circuit cannot drift apart.
"""

from __future__ import annotations

from functools import lru_cache

from light_poseidon_python import Hasher

from . import _native
from .fields import FIELD_MODULUS

__all__ = ["poseidon"]

#: Widths ``aep2._native`` hashes (its constants header holds no others).
NATIVE_MAX_INPUTS = 5


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
    encoded = [value.to_bytes(32, "big") for value in inputs]
    if len(inputs) <= NATIVE_MAX_INPUTS:
        return int.from_bytes(_native.poseidon(b"".join(encoded)), "big")
    return int(_hasher(len(inputs)).hash_bytes_be(encoded), 16)
