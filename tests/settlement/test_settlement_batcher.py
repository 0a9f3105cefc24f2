"""Batch planning: every plan is one the contract and the circuit would accept."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.batcher import IntentState, PendingMandate, plan_batch

NOW = 1_000_000
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
        states[intent_id] = IntentState(
            intent_id=intent_id,
            payer=PAYERS[k % len(PAYERS)],
            next_nonce=draw(st.integers(0, 3)),
            spent=draw(st.integers(0, 50)),
            max_amount=draw(st.integers(1, 400)),
            max_per_payment=draw(st.integers(1, 100)),
            valid_after=NOW - draw(st.integers(0, 100)),
            valid_before=NOW + draw(st.integers(-50, 1000)),
            revoked=draw(st.booleans()),
            balance=balances[PAYERS[k % len(PAYERS)]],
        )
        nonces = draw(st.lists(st.integers(0, 12), max_size=8, unique=True))
        for nonce in nonces:
            pending.append(
                PendingMandate(
                    payment_id=f"{k}-{nonce}",
                    intent_id=intent_id,
                    nonce=nonce,
                    payee=draw(st.sampled_from(PAYEES)),
                    amount=draw(st.integers(1, 120)),
                    deadline=NOW + draw(st.integers(-100, 2000)),
                    accepted_at=draw(st.floats(0, 100)),
                )
            )
    shape = draw(st.tuples(st.integers(1, 8), st.integers(1, 3), st.integers(1, 2)))
    return states, pending, shape


def balances_of(states):
    return {state.payer: state.balance for state in states.values()}


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plans_satisfy_every_settlement_check(scenario):
    states, pending, (n, i, p) = scenario
    plan = plan_batch(pending, states, n=n, i=i, p=p, now=NOW)
    chosen = plan.mandates
    ids = [intent_id for intent_id, _ in plan.intents]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(chosen) <= n and len(plan.intents) <= i and len(plan.payees) <= p
    rejected = {r.payment_id for r in plan.rejected}
    assert not rejected & {m.payment_id for m in chosen}
    if chosen:
        assert plan.time_ref <= NOW
    spent_by_payer: dict[str, int] = defaultdict(int)
    for intent_id, mandates in plan.intents:
        state = states[intent_id]
        assert mandates and not state.revoked
        nonces = [m.nonce for m in mandates]
        assert nonces == sorted(set(nonces)) and nonces[0] >= state.next_nonce
        total = sum(m.amount for m in mandates)
        assert state.spent + total <= state.max_amount
        assert all(m.amount <= state.max_per_payment for m in mandates)
        assert state.valid_after <= plan.time_ref < state.valid_before
        assert all(plan.time_ref <= m.deadline for m in mandates)
        spent_by_payer[state.payer] += total
        # Only a prefix of the intent's settleable mandates: nothing below the last chosen
        # nonce is left waiting (it could never settle once nextNonce moves past it).
        waiting = [m for m in pending if m.intent_id == intent_id and m not in mandates
                   and m.payment_id not in rejected]
        assert all(m.nonce > nonces[-1] for m in waiting)
    for payer, total in spent_by_payer.items():
        assert total <= balances_of(states)[payer]
