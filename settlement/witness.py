"""From a planned batch to the circuit's inputs and the contract's ``Batch`` calldata.

Both come from one ``BatchStatement`` so the public inputs the proof commits to and the
figures the contract acts on cannot disagree (docs/PROTOCOL.md §5): intent slot ``s`` is the
``s``-th intent in ascending intent-id order, payee slot ``k`` the ``k``-th payout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from eth_utils import to_checksum_address

from aep2.intent import Intent
from aep2.store import MandateRecord

from .prover import pack_intent_word, pack_payee_word, padding_signature

__all__ = ["IntentSlot", "BatchStatement", "build_statement"]


@dataclass(frozen=True)
class IntentSlot:
    """One intent's part of a batch: its mandates in nonce order and its on-chain ``nextNonce``."""

    intent: Intent
    start_nonce: int
    mandates: tuple[MandateRecord, ...]

    @property
    def total(self) -> int:
        return sum(record.mandate.amount for record in self.mandates)

    @property
    def last_nonce(self) -> int:
        return self.mandates[-1].mandate.nonce


@dataclass(frozen=True)
class BatchStatement:
    """What one proof states: the circuit inputs and the matching ``settleBatch`` argument."""

    inputs: dict[str, Any]
    batch: tuple
    payouts: tuple[tuple[str, int], ...]
    time_ref: int

    @property
    def mandate_count(self) -> int:
        return sum(self.inputs["enabled"])


def build_statement(slots: Sequence[IntentSlot], *, time_ref: int, asset: str, n: int, i: int, p: int) -> BatchStatement:
    """Lay out ``slots`` into a ``Batch(n, i, p)`` statement.

    Raises ``ValueError`` if the batch exceeds the circuit's shape or is unordered.
    """
    slots = sorted(slots, key=lambda slot: slot.intent.intent_id)
    mandate_count = sum(len(slot.mandates) for slot in slots)
    if not slots or len(slots) > i or mandate_count > n:
        raise ValueError(f"batch of {len(slots)} intents / {mandate_count} mandates does not fit N={n}, I={i}")
    payees: dict[str, int] = {}
    for slot in slots:
        for record in slot.mandates:
            payees[record.mandate.payee] = payees.get(record.mandate.payee, 0) + record.mandate.amount
    if len(payees) > p:
        raise ValueError(f"batch pays {len(payees)} payees, the circuit has {p} slots")
    payee_index = {payee: k for k, payee in enumerate(payees)}

    key_hash, intent_word, ax, ay, intent_field = [0] * i, [0] * i, [0] * i, [0] * i, [0] * i
    for s, slot in enumerate(slots):
        nonces = [record.mandate.nonce for record in slot.mandates]
        if nonces != sorted(set(nonces)) or nonces[0] < slot.start_nonce:
            raise ValueError(f"intent 0x{slot.intent.intent_id.hex()}: nonces must increase from {slot.start_nonce}")
        intent = slot.intent
        key_hash[s] = intent.session_key_hash
        intent_word[s] = pack_intent_word(slot.start_nonce, slot.last_nonce, len(slot.mandates), slot.total, intent.cap)
        ax[s], ay[s] = intent.session_key
        intent_field[s] = intent.intent_field
    payee_word = [0] * p
    for payee, amount in payees.items():
        payee_word[payee_index[payee]] = pack_payee_word(int(payee, 16), amount)

    padding = padding_signature()
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("enabled", "intentSel", "payeeSel", "amount", "nonce", "deadline", "requestHash", "R8x", "R8y", "S")
    }
    for s, slot in enumerate(slots):
        for record in slot.mandates:
            mandate = record.mandate
            columns["enabled"].append(1)
            columns["intentSel"].append([int(k == s) for k in range(i)])
            columns["payeeSel"].append([int(k == payee_index[mandate.payee]) for k in range(p)])
            columns["amount"].append(mandate.amount)
            columns["nonce"].append(mandate.nonce)
            columns["deadline"].append(mandate.deadline)
            columns["requestHash"].append(mandate.request_hash)
            columns["R8x"].append(record.signature.R8x)
            columns["R8y"].append(record.signature.R8y)
            columns["S"].append(record.signature.S)
    for _ in range(n - mandate_count):
        columns["enabled"].append(0)
        columns["intentSel"].append([0] * i)
        columns["payeeSel"].append([0] * p)
        for name in ("amount", "nonce", "deadline", "requestHash"):
            columns[name].append(0)
        columns["R8x"].append(padding.R8x)
        columns["R8y"].append(padding.R8y)
        columns["S"].append(padding.S)

    inputs: dict[str, Any] = {
        "timeRef": time_ref,
        "keyHash": key_hash,
        "intentWord": intent_word,
        "payeeWord": payee_word,
        "Ax": ax,
        "Ay": ay,
        "intentField": intent_field,
        **columns,
    }
    payouts = tuple((to_checksum_address(payee), amount) for payee, amount in payees.items())
    batch = (
        to_checksum_address(asset),
        time_ref,
        [(slot.intent.intent_id, slot.last_nonce, len(slot.mandates), slot.total) for slot in slots],
        [list(payout) for payout in payouts],
    )
    return BatchStatement(inputs=inputs, batch=batch, payouts=payouts, time_ref=time_ref)
