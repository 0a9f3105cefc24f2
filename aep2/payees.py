"""The payee allowlist of an intent as a Poseidon Merkle tree (docs/PROTOCOL.md §2).

The owner signs the tree's root (``payeesRoot``) in the intent; the circuit checks, once per
(intent, payee) pair of a batch, that the payee is a leaf of that tree, so a compromised
session key cannot pay an address the owner did not list, whoever runs the processor.

Tree: depth ``PAYEE_TREE_DEPTH``; leaves are the payee addresses as integers, sorted
ascending and padded with zeros to ``2^PAYEE_TREE_DEPTH``; a node is circomlib
``Poseidon(left, right)``. The empty list has root 0, meaning any payee.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .poseidon import poseidon

__all__ = ["PAYEE_TREE_DEPTH", "MAX_PAYEES", "payees_root", "payee_path"]

PAYEE_TREE_DEPTH = 8
MAX_PAYEES = 2**PAYEE_TREE_DEPTH


@lru_cache(maxsize=None)
def _zero(level: int) -> int:
    """Root of an all-zero subtree of height ``level``."""
    return 0 if level == 0 else poseidon(_zero(level - 1), _zero(level - 1))


def _leaves(payees: Sequence[str]) -> list[int]:
    leaves = sorted(int(payee, 16) for payee in payees)
    if len(leaves) > MAX_PAYEES:
        raise ValueError(f"payees: at most {MAX_PAYEES} addresses, got {len(leaves)}")
    if len(set(leaves)) != len(leaves) or (leaves and leaves[0] == 0):
        raise ValueError("payees: addresses must be distinct and non-zero")
    return leaves


def _levels(leaves: list[int]) -> list[list[int]]:
    """Every level's non-zero prefix, leaves first (zero subtrees are implied)."""
    levels = [leaves]
    for level in range(PAYEE_TREE_DEPTH):
        below = levels[-1]
        zero = _zero(level)
        levels.append(
            [poseidon(below[k], below[k + 1] if k + 1 < len(below) else zero) for k in range(0, len(below), 2)]
        )
    return levels


@lru_cache(maxsize=1024)
def _root(payees: tuple[str, ...]) -> int:
    leaves = _leaves(payees)
    return _levels(leaves)[-1][0] if leaves else 0


def payees_root(payees: Sequence[str]) -> int:
    """The allowlist root of ``payees`` (hex addresses, any order); 0 for an empty list.

    Raises ``ValueError`` for more than ``MAX_PAYEES`` addresses, duplicates or the zero address.
    """
    return _root(tuple(sorted(payee.lower() for payee in payees)))


def payee_path(payees: Sequence[str], payee: str) -> tuple[int, list[int]]:
    """``(leaf index, siblings from the leaf up)`` proving ``payee`` is in ``payees``' tree.

    Raises ``ValueError`` if ``payee`` is not listed.
    """
    leaves = _leaves(payees)
    target = int(payee, 16)
    if target not in leaves:
        raise ValueError(f"payee {payee} is not in the intent's allowlist")
    index = leaves.index(target)
    levels = _levels(leaves)
    siblings = []
    position = index
    for level in range(PAYEE_TREE_DEPTH):
        nodes = levels[level]
        sibling = position ^ 1
        siblings.append(nodes[sibling] if sibling < len(nodes) else _zero(level))
        position >>= 1
    return index, siblings
