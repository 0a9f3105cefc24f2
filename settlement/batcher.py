"""Batch planning: which accepted mandates go into the next settlement batch.

The plan is pure computation over the store's accepted mandates and the on-chain state of
their intents, so a batch that would revert is diagnosed before anything is proven. Nonces
are one-time bits (docs/PROTOCOL.md §3), so any subset of an intent's mandates can settle
in any order; a slot of the circuit holds one (intent, 128-nonce window).

- A mandate that can never settle is rejected with a reason: its nonce already settled on
  chain, its amount over the cap or zero, the intent's budget or the payer's escrow short,
  or no time reference left that the contract would take (its deadline or the intent's
  ``validBefore`` older than ``now - settlement_window``, or the intent's revocation grace
  over).
- A mandate that merely does not fit (slots or payees full, another intent's time window)
  waits for the next batch. Oldest accepted first.

The batch's time reference satisfies, for every intent and mandate in it,
``validAfter <= timeRef < validBefore``, ``timeRef <= deadline``, ``timeRef <= now`` and
``timeRef >= now - settlement_window + margin`` (margin at most half the window).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from aep2.mandate import nonce_window

MAX_CAP = 2**64 - 1


@dataclass(frozen=True)
class PendingMandate:
    """An accepted, not yet batched mandate as the processor sees it.

    ``amount`` is in token base units; ``deadline`` and ``accepted_at`` are unix seconds.
    """

    payment_id: str
    intent_id: bytes
    nonce: int
    payee: str
    amount: int
    deadline: int
    accepted_at: float


@dataclass(frozen=True)
class IntentState:
    """On-chain state of a registered intent plus its payer's escrowed balance.

    Amounts in token base units, times in unix seconds. ``balance`` is the payer's escrow
    for the intent's asset, shared by all of that payer's intents. ``settleable_until`` is
    when settlement stops for good (revocation grace or lapsed processor consent), ``None``
    when not scheduled, and ``closed_reason`` the rejection reason after it. ``settled`` maps
    a nonce window to the bitmap settled on chain.
    """

    intent_id: bytes
    payer: str
    spent: int
    max_amount: int
    max_per_payment: int
    valid_after: int
    valid_before: int
    balance: int
    settleable_until: int | None = None
    closed_reason: str = "intent_revoked"
    settled: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A mandate that can never settle, with a snake_case reason."""

    payment_id: str
    reason: str


@dataclass
class BatchPlan:
    """The next batch: per (intent, window) its mandates in nonce order, plus rejections.

    ``slots`` is sorted ascending by ``(intent id, window)``, as the contract requires.
    """

    time_ref: int
    slots: list[tuple[bytes, int, list[PendingMandate]]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def mandates(self) -> list[PendingMandate]:
        return [mandate for _, _, mandates in self.slots for mandate in mandates]


def plan_batch(
    pending: Sequence[PendingMandate],
    states: Mapping[bytes, IntentState],
    *,
    n: int,
    i: int,
    p: int,
    now: int,
    settlement_window: int,
    margin: int = 60,
) -> BatchPlan:
    """Choose up to ``n`` mandates in at most ``i`` (intent, window) slots paying at most ``p`` payees.

    ``now`` is the chain's time (unix seconds); ``margin`` seconds of ``settlement_window``
    (at most half of it) are kept for proving and inclusion. Raises ``KeyError`` if a pending mandate's intent has
    no entry in ``states`` (register intents before planning).
    """
    if n < 1 or i < 1 or p < 1:
        raise ValueError(f"batch shape must be positive, got n={n} i={i} p={p}")
    oldest_time_ref = now - settlement_window + min(margin, settlement_window // 2)
    rejected: list[Rejection] = []
    groups: dict[tuple[bytes, int], list[PendingMandate]] = defaultdict(list)
    for mandate in pending:
        reason = _never_settles(mandate, states[mandate.intent_id], oldest_time_ref, now)
        if reason is not None:
            rejected.append(Rejection(mandate.payment_id, reason))
        else:
            groups[(mandate.intent_id, nonce_window(mandate.nonce)[0])].append(mandate)

    spent: dict[bytes, int] = defaultdict(int)
    debited: dict[str, int] = defaultdict(int)
    chosen: dict[tuple[bytes, int], list[PendingMandate]] = {}
    payees: set[str] = set()
    lower, upper = oldest_time_ref, now
    size = 0
    for key in sorted(groups, key=lambda k: min(m.accepted_at for m in groups[k])):
        if len(chosen) == i or size == n:
            break
        state = states[key[0]]
        slot_lower = max(lower, state.valid_after)
        slot_upper = min(upper, state.valid_before - 1)
        taken: list[PendingMandate] = []
        for mandate in sorted(groups[key], key=lambda m: (m.accepted_at, m.nonce)):
            if size + len(taken) == n:
                break
            paid = payees | {m.payee for m in taken}
            if mandate.payee not in paid and len(paid) == p:
                continue  # next batch
            mandate_upper = min(slot_upper, mandate.deadline)
            if mandate_upper < slot_lower:
                continue  # needs a time reference this batch can't have; next batch
            if state.spent + spent[state.intent_id] + mandate.amount > state.max_amount:
                rejected.append(Rejection(mandate.payment_id, "budget_exceeded"))
                continue
            if debited[state.payer] + mandate.amount > state.balance:
                rejected.append(Rejection(mandate.payment_id, "insufficient_escrow"))
                continue
            taken.append(mandate)
            spent[state.intent_id] += mandate.amount
            debited[state.payer] += mandate.amount
            slot_upper = mandate_upper
        if not taken:
            continue
        chosen[key] = sorted(taken, key=lambda m: m.nonce)
        payees.update(m.payee for m in taken)
        lower, upper = slot_lower, slot_upper
        size += len(taken)

    plan = BatchPlan(time_ref=upper, rejected=rejected)
    plan.slots = [(intent_id, window, chosen[(intent_id, window)]) for intent_id, window in sorted(chosen)]
    return plan


def _never_settles(mandate: PendingMandate, state: IntentState, oldest_time_ref: int, now: int) -> str | None:
    """Why no batch could ever settle ``mandate``, or ``None``."""
    window, bit = nonce_window(mandate.nonce)
    if state.settled.get(window, 0) >> bit & 1:
        return "nonce_already_settled"
    if mandate.amount <= 0:
        return "invalid_amount"
    if mandate.amount > min(state.max_per_payment, MAX_CAP):
        return "per_payment_cap_exceeded"
    if state.settleable_until is not None and now >= state.settleable_until:
        return state.closed_reason
    if min(mandate.deadline, state.valid_before - 1) < max(oldest_time_ref, state.valid_after):
        return "mandate_expired"
    return None
