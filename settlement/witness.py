"""From a planned batch to the circuit's inputs and the contract's ``Batch`` calldata.

Both come from one ``BatchStatement`` so the public inputs the proof commits to and the
figures the contract acts on cannot disagree (docs/PROTOCOL.md §5): intent slot ``s`` is the
``s``-th (intent id, nonce window) in ascending order, payee slot ``k`` the ``k``-th payout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from eth_utils import to_checksum_address

from aep2.intent import Intent
from aep2.mandate import nonce_window
from aep2.payees import PAYEE_TREE_DEPTH, payee_path
from aep2.store import MandateRecord

from .encoding import pack_intent_word, pack_payee_word, padding_signature

__all__ = ["IntentSlot", "BatchStatement", "build_statement"]


@dataclass(frozen=True)
class IntentSlot:
    """One intent's mandates of one nonce window, in nonce order."""

    intent: Intent
    window: int
    mandates: tuple[MandateRecord, ...]

    @property
    def total(self) -> int:
        """Sum of the amounts (base units)."""
        return sum(record.mandate.amount for record in self.mandates)

    @property
    def nonces(self) -> int:
        """The bitmap of the slot's nonces within its window."""
        bits = 0
        for record in self.mandates:
            bits |= 1 << nonce_window(record.mandate.nonce)[1]
        return bits

    @property
    def key(self) -> tuple[bytes, int]:
        """The contract's ordering key: ``(intentId, window)``."""
        return self.intent.intent_id, self.window


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
    """Lay out ``slots`` into a ``Batch(n, i, p, D)`` statement.

    Raises ``ValueError`` if the batch exceeds the circuit's shape, a slot's nonces are not
    strictly increasing inside its window, two slots share an (intent, window), or a payee
    is outside its intent's allowlist.
    """
    slots = sorted(slots, key=lambda slot: slot.key)
    mandate_count = sum(len(slot.mandates) for slot in slots)
    if not slots or len(slots) > i or mandate_count > n:
        raise ValueError(f"batch of {len(slots)} intent slots / {mandate_count} mandates does not fit N={n}, I={i}")
    if len({slot.key for slot in slots}) != len(slots):
        raise ValueError("slots: an (intent, window) pair appears twice")
    payees: dict[str, int] = {}
    for slot in slots:
        for record in slot.mandates:
            payees[record.mandate.payee] = payees.get(record.mandate.payee, 0) + record.mandate.amount
    if len(payees) > p:
        raise ValueError(f"batch pays {len(payees)} payees, the circuit has {p} slots")
    payee_index = {payee: k for k, payee in enumerate(payees)}

    intent_hash, intent_word = [0] * i, [0] * i
    ax, ay, intent_field, payees_root, cap = [0] * i, [0] * i, [0] * i, [0] * i, [0] * i
    path_index = [[0] * p for _ in range(i)]
    path = [[[0] * PAYEE_TREE_DEPTH for _ in range(p)] for _ in range(i)]
    for s, slot in enumerate(slots):
        nonces = [record.mandate.nonce for record in slot.mandates]
        if nonces != sorted(set(nonces)) or any(nonce_window(nonce)[0] != slot.window for nonce in nonces):
            raise ValueError(
                f"intent 0x{slot.intent.intent_id.hex()}: nonces must strictly increase inside window {slot.window}"
            )
        intent = slot.intent
        intent_hash[s] = intent.commitment
        intent_word[s] = pack_intent_word(slot.window, slot.nonces, slot.total)
        ax[s], ay[s] = intent.session_key
        intent_field[s] = intent.intent_field
        payees_root[s] = intent.payees_root
        cap[s] = intent.cap
        if intent.payees:
            for payee in {record.mandate.payee for record in slot.mandates}:
                k = payee_index[payee]
                path_index[s][k], path[s][k] = payee_path(intent.payees, payee)
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
        "intentHash": intent_hash,
        "intentWord": intent_word,
        "payeeWord": payee_word,
        "Ax": ax,
        "Ay": ay,
        "intentField": intent_field,
        "payeesRoot": payees_root,
        "cap": cap,
        "payeeIndex": path_index,
        "payeePath": path,
        **columns,
    }
    payouts = tuple((to_checksum_address(payee), amount) for payee, amount in payees.items())
    batch = (
        to_checksum_address(asset),
        time_ref,
        [(slot.intent.intent_id, slot.window, slot.nonces, slot.total) for slot in slots],
        [list(payout) for payout in payouts],
    )
    return BatchStatement(inputs=inputs, batch=batch, payouts=payouts, time_ref=time_ref)
