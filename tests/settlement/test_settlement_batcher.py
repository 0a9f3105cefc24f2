"""Batch planning: every plan is one the contract and the circuit would accept, and nothing
that could still settle is ever rejected."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.batcher import IntentState, PendingMandate, plan_batch
from aep2.mandate import nonce_window

NOW = 1_000_000
WINDOW = 600
MARGIN = 60
PAYERS = ["0x" + f"{k:040x}" for k in range(1, 4)]
PAYEES = ["0x" + f"{k:040x}" for k in range(10, 14)]


@st.composite
def scenarios(draw):
    intents = draw(st.integers(1, 6))
    # The escrow belongs to the payer: every intent of one payer sees the same balance.
    balances = {payer: draw(st.integers(0, 500)) for payer in PAYERS}
    states, pending = {}, []
    for k in range(intents):
        intent_id = bytes([k + 1]) * 32
        # Nonces spread over three windows, some already settled on chain.
        nonces = draw(st.lists(st.integers(0, 3 * 128 - 1), max_size=8, unique=True))
        settled = {w: draw(st.integers(0, 2**128 - 1)) if draw(st.booleans()) else 0 for w in range(3)}
        states[intent_id] = IntentState(
            intent_id=intent_id,
            payer=PAYERS[k % len(PAYERS)],
            spent=draw(st.integers(0, 50)),
            max_amount=draw(st.integers(1, 400)),
            max_per_payment=draw(st.integers(1, 100)),
            valid_after=NOW - draw(st.integers(0, 100)),
            valid_before=NOW + draw(st.integers(-800, 1000)),
            balance=balances[PAYERS[k % len(PAYERS)]],
            settleable_until=draw(st.one_of(st.none(), st.integers(NOW - 100, NOW + 100))),
            settled=settled,
        )
        for nonce in nonces:
            pending.append(
                PendingMandate(
                    payment_id=f"{k}-{nonce}",
                    intent_id=intent_id,
                    nonce=nonce,
                    payee=draw(st.sampled_from(PAYEES)),
                    amount=draw(st.integers(0, 120)),
                    deadline=NOW + draw(st.integers(-800, 2000)),
                    accepted_at=draw(st.floats(0, 100)),
                )
            )
    shape = draw(st.tuples(st.integers(1, 8), st.integers(1, 3), st.integers(1, 2)))
    return states, pending, shape


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plans_satisfy_every_settlement_check(scenario):
    states, pending, (n, i, p) = scenario
    plan = plan_batch(pending, states, n=n, i=i, p=p, now=NOW, settlement_window=WINDOW, margin=MARGIN)
    chosen = plan.mandates
    keys = [(intent_id, window) for intent_id, window, _ in plan.slots]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    payees = {m.payee for m in chosen}
    assert len(chosen) <= n and len(plan.slots) <= i and len(payees) <= p
    rejected = {r.payment_id for r in plan.rejected}
    assert not rejected & {m.payment_id for m in chosen}
    if chosen:
        assert NOW - WINDOW + MARGIN <= plan.time_ref <= NOW
    spent_by_intent: dict[bytes, int] = defaultdict(int)
    spent_by_payer: dict[str, int] = defaultdict(int)
    for intent_id, window, mandates in plan.slots:
        state = states[intent_id]
        assert mandates
        assert state.settleable_until is None or NOW < state.settleable_until
        nonces = [m.nonce for m in mandates]
        assert nonces == sorted(set(nonces))
        for m in mandates:
            w, bit = nonce_window(m.nonce)
            assert w == window and not state.settled.get(w, 0) >> bit & 1
            assert 0 < m.amount <= state.max_per_payment
            assert plan.time_ref <= m.deadline
        assert state.valid_after <= plan.time_ref < state.valid_before
        spent_by_intent[intent_id] += sum(m.amount for m in mandates)
        spent_by_payer[state.payer] += sum(m.amount for m in mandates)
    for intent_id, total in spent_by_intent.items():
        assert states[intent_id].spent + total <= states[intent_id].max_amount
    for payer, total in spent_by_payer.items():
        assert total <= next(s.balance for s in states.values() if s.payer == payer)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_only_the_unsettleable_is_rejected(scenario):
    """A rejection is final, so it must be deserved: settled nonce, bad amount, closed intent,
    no time reference left, or a budget/escrow that the batch's own choices already used."""
    states, pending, (n, i, p) = scenario
    plan = plan_batch(pending, states, n=n, i=i, p=p, now=NOW, settlement_window=WINDOW, margin=MARGIN)
    by_id = {m.payment_id: m for m in pending}
    chosen = plan.mandates
    for rejection in plan.rejected:
        m = by_id[rejection.payment_id]
        state = states[m.intent_id]
        window, bit = nonce_window(m.nonce)
        if rejection.reason == "nonce_already_settled":
            assert state.settled.get(window, 0) >> bit & 1
        elif rejection.reason == "invalid_amount":
            assert m.amount <= 0
        elif rejection.reason == "per_payment_cap_exceeded":
            assert m.amount > state.max_per_payment
        elif rejection.reason == "intent_revoked":
            assert state.settleable_until is not None and NOW >= state.settleable_until
        elif rejection.reason == "mandate_expired":
            assert min(m.deadline, state.valid_before - 1) < max(NOW - WINDOW + MARGIN, state.valid_after)
        elif rejection.reason == "budget_exceeded":
            used = sum(c.amount for c in chosen if c.intent_id == m.intent_id)
            assert state.spent + used + m.amount > state.max_amount
        else:
            assert rejection.reason == "insufficient_escrow"
            used = sum(c.amount for c in chosen if states[c.intent_id].payer == state.payer)
            assert used + m.amount > state.balance


def test_out_of_order_nonces_of_one_intent_settle_together_and_a_high_nonce_burns_nothing():
    intent_id = b"\x01" * 32
    state = IntentState(intent_id, PAYERS[0], 0, 10_000, 100, NOW - 10, NOW + 10_000, 10_000,
                        settled={(2**40 - 2) // 128: 1 << ((2**40 - 2) % 128)})
    pending = [PendingMandate(f"m{k}", intent_id, nonce, PAYEES[0], 10, NOW + 3600, float(k))
               for k, nonce in enumerate([24, 31, 7, 25, 200])]
    plan = plan_batch(pending, {intent_id: state}, n=8, i=2, p=1, now=NOW, settlement_window=WINDOW)
    assert not plan.rejected
    assert [(w, [m.nonce for m in ms]) for _, w, ms in plan.slots] == [(0, [7, 24, 25, 31]), (1, [200])]
