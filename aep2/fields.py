"""The BN254 scalar field: the field circom circuits and the Poseidon hash work in."""

from __future__ import annotations

#: Order of the BN254 scalar field (circom's prime ``r``); every circuit signal is in ``[0, r)``.
FIELD_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617


def to_field_bytes(value: int) -> bytes:
    """Encode a field element as 32 big-endian bytes.

    Raises ``ValueError`` when ``value`` is not in ``[0, FIELD_MODULUS)``.
    """
    if not 0 <= value < FIELD_MODULUS:
        raise ValueError(f"{value} is not a BN254 field element")
    return value.to_bytes(32, "big")
