"""Batch planning: which accepted mandates go into the next settlement batch.

The plan is pure computation over the store's accepted mandates and the on-chain state of
their intents, so a batch that would revert is diagnosed before anything is proven:

- per intent, mandates are taken in nonce order and only as a prefix, because the contract
  advances ``nextNonce`` past the last settled nonce (docs/PROTOCOL.md §3): a mandate left out
  while a later nonce of the same intent settles could never settle afterwards;
- a mandate that can never settle (nonce already passed on chain, amount over the cap, the
  intent revoked or spent, the payer's escrow short) is rejected with a reason;
- a mandate that merely does not fit (slots full, time window) waits for the next batch.

The batch's time reference must satisfy, for every intent and mandate in it,
``validAfter <= timeRef < validBefore``, ``timeRef <= deadline`` and ``timeRef <= now``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

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
    for the intent's asset, shared by all of that payer's intents.
    """

    intent_id: bytes
    payer: str
    next_nonce: int
    spent: int
    max_amount: int
    max_per_payment: int
    valid_after: int
    valid_before: int
    revoked: bool
    balance: int


@dataclass(frozen=True)
class Rejection:
    """A mandate that can never settle, with a snake_case reason."""

    payment_id: str
    reason: str


@dataclass
class BatchPlan:
    """The next batch: per intent its mandates in nonce order, plus rejections.

    ``intents`` is sorted ascending by intent id, as the contract requires.
    """

    time_ref: int
    intents: list[tuple[bytes, list[PendingMandate]]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def mandates(self) -> list[PendingMandate]:
        return [mandate for _, mandates in self.intents for mandate in mandates]

    @property
    def payees(self) -> dict[str, int]:
        """Total per payee address, in base units, in first-seen order."""
        totals: dict[str, int] = {}
        for mandate in self.mandates:
            totals[mandate.payee] = totals.get(mandate.payee, 0) + mandate.amount
        return totals


def plan_batch(
    pending: Sequence[PendingMandate],
    states: Mapping[bytes, IntentState],
    *,
    n: int,
    i: int,
    p: int,
    now: int,
) -> BatchPlan:
    """Choose up to ``n`` mandates of at most ``i`` intents paying at most ``p`` payees.

    Intents are served oldest accepted mandate first. Raises ``KeyError`` if a pending
    mandate's intent has no entry in ``states`` (register intents before planning).
    """
    if n < 1 or i < 1 or p < 1:
        raise ValueError(f"batch shape must be positive, got n={n} i={i} p={p}")
    by_intent: dict[bytes, list[PendingMandate]] = defaultdict(list)
    for mandate in pending:
        by_intent[mandate.intent_id].append(mandate)
    order = sorted(by_intent, key=lambda intent_id: min(m.accepted_at for m in by_intent[intent_id]))

    rejected: list[Rejection] = []
    chosen: dict[bytes, list[PendingMandate]] = {}
    payees: set[str] = set()
    reserved_by_payer: dict[str, int] = defaultdict(int)
    lower, upper = 0, now
    size = 0
    for intent_id in order:
        state = states[intent_id]
        mandates = sorted(by_intent[intent_id], key=lambda m: m.nonce)
        usable = _reject_unsettleable(mandates, state, rejected)
        if not usable or len(chosen) == i or size == n:
            continue
        intent_lower = max(lower, state.valid_after)
        intent_upper = min(upper, state.valid_before - 1)
        taken: list[PendingMandate] = []
        total = 0
        for mandate in usable:
            if size + len(taken) == n:
                break
            if mandate.payee not in payees and len(payees | {m.payee for m in taken}) == p:
                break
            mandate_upper = min(intent_upper, mandate.deadline)
            if mandate_upper < intent_lower:
                # Settling this one would need a time reference the batch can't have now.
                break
            if state.spent + total + mandate.amount > state.max_amount:
                rejected.extend(Rejection(m.payment_id, "budget_exceeded") for m in usable[len(taken):])
                break
            if reserved_by_payer[state.payer] + total + mandate.amount > state.balance:
                rejected.extend(Rejection(m.payment_id, "insufficient_escrow") for m in usable[len(taken):])
                break
            taken.append(mandate)
            total += mandate.amount
            intent_upper = mandate_upper
        if not taken:
            continue
        chosen[intent_id] = taken
        payees.update(m.payee for m in taken)
        reserved_by_payer[state.payer] += total
        lower, upper = intent_lower, intent_upper
        size += len(taken)

    plan = BatchPlan(time_ref=upper, rejected=rejected)
    plan.intents = sorted(chosen.items(), key=lambda item: item[0])
    return plan


def _reject_unsettleable(
    mandates: list[PendingMandate], state: IntentState, rejected: list[Rejection]
) -> list[PendingMandate]:
    """Drop (and record) the mandates of one intent that no batch could ever settle."""
    if state.revoked:
        rejected.extend(Rejection(m.payment_id, "intent_revoked") for m in mandates)
        return []
    usable = []
    cap = min(state.max_per_payment, MAX_CAP)
    for mandate in mandates:
        if mandate.nonce < state.next_nonce:
            rejected.append(Rejection(mandate.payment_id, "nonce_already_settled"))
        elif mandate.amount > cap:
            rejected.append(Rejection(mandate.payment_id, "per_payment_cap_exceeded"))
        elif mandate.deadline < state.valid_after or mandate.amount <= 0:
            rejected.append(Rejection(mandate.payment_id, "mandate_expired" if mandate.amount > 0 else "invalid_amount"))
        elif usable and usable[-1].nonce == mandate.nonce:
            rejected.append(Rejection(mandate.payment_id, "nonce_used"))
        else:
            usable.append(mandate)
    return usable
