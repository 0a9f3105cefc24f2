"""``PayerState``: budget and cap checks, nonce monotonicity, durability, thread safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eth_account import Account
from payer_fixtures import ASSET, CHAIN_ID, PROCESSOR, SETTLEMENT

from aep2.eddsa import SessionKey
from aep2.intent import Intent
from payer import BudgetExceeded, PayerError, PayerState, PerPaymentCapExceeded

_KEY = SessionKey(12345)


@pytest.fixture
def state(signed_intent):
    state = PayerState()
    state.register(signed_intent)
    yield state
    state.close()


def test_allocate_confirm_release(state, signed_intent):
    intent_id = signed_intent.intent.intent_id
    assert state.allocate(intent_id, 10) == 0
    assert state.allocate(intent_id, 20) == 1
    assert (state.spent(intent_id), state.reserved(intent_id), state.remaining(intent_id)) == (0, 30, 70)
    state.confirm(intent_id, 0, {"paymentId": "0x01", "amount": "10"})
    state.release(intent_id, 1)
    assert (state.spent(intent_id), state.reserved(intent_id), state.remaining(intent_id)) == (10, 0, 90)
    assert state.receipts(intent_id) == [{"paymentId": "0x01", "amount": "10"}]
    assert state.receipts() == state.receipts(intent_id)
    assert state.is_known(intent_id)
    # The released nonce is not handed out again.
    assert state.allocate(intent_id, 5) == 2


def test_confirm_or_release_twice_is_an_error(state, signed_intent):
    intent_id = signed_intent.intent.intent_id
    nonce = state.allocate(intent_id, 1)
    state.release(intent_id, nonce)
    with pytest.raises(PayerError, match="nonce: 0 is already released"):
        state.confirm(intent_id, nonce)
    with pytest.raises(PayerError, match="nonce: 7 was never allocated"):
        state.release(intent_id, 7)


def test_unregistered_intent(state):
    with pytest.raises(PayerError, match="intentId: 0x" + "ab" * 32 + " is not registered"):
        state.allocate(b"\xab" * 32, 1)


def test_budget_and_cap(state, signed_intent):
    intent_id = signed_intent.intent.intent_id  # maxAmount 100, maxPerPayment 25
    with pytest.raises(PerPaymentCapExceeded, match="amount: 26"):
        state.allocate(intent_id, 26)
    for _ in range(4):
        state.allocate(intent_id, 25)
    with pytest.raises(BudgetExceeded, match=r"amount: 1 would exceed the intent's maxAmount 100 \(spent 0, reserved 100"):
        state.allocate(intent_id, 1)
    assert state.next_nonce(intent_id) == 4  # refused allocations take no nonce
    state.release(intent_id, 3)
    assert state.allocate(intent_id, 25) == 4


def test_restart_continues_nonces_and_budget(tmp_path, signed_intent):
    path = tmp_path / "payer.sqlite"
    intent_id = signed_intent.intent.intent_id
    with PayerState(path) as first:
        first.register(signed_intent)
        first.confirm(intent_id, first.allocate(intent_id, 25), {"n": 0})
        first.allocate(intent_id, 25)  # in flight when the agent "crashed"
        first.release(intent_id, first.allocate(intent_id, 25))
    with PayerState(path) as second:
        second.register(signed_intent)  # idempotent
        assert second.next_nonce(intent_id) == 3
        assert (second.spent(intent_id), second.reserved(intent_id)) == (25, 25)
        assert second.allocate(intent_id, 25) == 3
        assert second.allocate(intent_id, 25) == 4
        with pytest.raises(BudgetExceeded):
            second.allocate(intent_id, 1)
        assert second.receipts() == [{"n": 0}]
    with PayerState(path) as third:
        assert third._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_connections_on_one_file_share_the_budget(tmp_path, signed_intent):
    path = tmp_path / "payer.sqlite"
    intent_id = signed_intent.intent.intent_id
    a, b = PayerState(path), PayerState(path)
    a.register(signed_intent)
    nonces = [a.allocate(intent_id, 25), b.allocate(intent_id, 25), a.allocate(intent_id, 25), b.allocate(intent_id, 25)]
    assert nonces == [0, 1, 2, 3]
    with pytest.raises(BudgetExceeded):
        b.allocate(intent_id, 1)
    a.close()
    b.close()


@pytest.mark.parametrize("where", ["memory", "file"])
def test_concurrent_allocations_never_overspend(tmp_path, make_intent, where):
    signed = make_intent(max_amount=100, max_per_payment=1)
    intent_id = signed.intent.intent_id
    state = PayerState(":memory:" if where == "memory" else tmp_path / "payer.sqlite")
    state.register(signed)
    nonces: list[int] = []
    refused: list[Exception] = []
    barrier = threading.Barrier(200)

    def worker() -> None:
        barrier.wait()
        try:
            nonces.append(state.allocate(intent_id, 1))
        except BudgetExceeded as exc:
            refused.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(nonces) == 100 and len(refused) == 100
    assert sorted(nonces) == list(range(100))
    assert state.reserved(intent_id) == 100 and state.remaining(intent_id) == 0
    state.close()


def test_large_budgets_beyond_int64(make_intent):
    signed = make_intent(max_amount=2**96 - 1, max_per_payment=2**64 - 1)
    intent_id = signed.intent.intent_id
    with PayerState() as state:
        state.register(signed)
        for _ in range(3):
            state.allocate(intent_id, 2**64 - 1)
        assert state.reserved(intent_id) == 3 * (2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(
    max_amount=st.integers(1, 500),
    cap=st.integers(1, 100),
    steps=st.lists(st.tuples(st.integers(0, 120), st.sampled_from(["keep", "confirm", "release"])), max_size=40),
)
def test_allocations_never_exceed_max_amount(max_amount, cap, steps):
    intent = Intent(
        payer=Account.create().address,
        asset=ASSET,
        session_key=_KEY.public_key,
        max_amount=max_amount,
        max_per_payment=cap,
        valid_after=0,
        valid_before=2**40,
        chain_id=CHAIN_ID,
        verifying_contract=SETTLEMENT,
        processor=PROCESSOR,
    )
    intent_id = intent.intent_id
    with PayerState() as state:
        state.register(intent)
        live = 0  # ghost total of confirmed + reserved
        last_nonce = -1
        for amount, outcome in steps:
            try:
                nonce = state.allocate(intent_id, amount)
            except PerPaymentCapExceeded:
                assert amount > cap
                continue
            except BudgetExceeded:
                assert amount <= cap and live + amount > max_amount
                continue
            assert amount <= cap and live + amount <= max_amount
            assert nonce > last_nonce
            last_nonce = nonce
            live += amount
            if outcome == "confirm":
                state.confirm(intent_id, nonce)
            elif outcome == "release":
                state.release(intent_id, nonce)
                live -= amount
            assert state.spent(intent_id) + state.reserved(intent_id) == live <= max_amount
