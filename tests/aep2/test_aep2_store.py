"""The payment store, on SQLite and on PostgreSQL alike: reservations are atomic and its
running totals never drift."""

from __future__ import annotations

import asyncio
import time

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode, PaymentError
from aep2.intent import Intent
from aep2.mandate import Mandate
from aep2.store import PaymentStore, Reservation
from aep2.stores import SQLStore, create_store

OWNER = Account.create()
KEY = SessionKey(0xC0FFEE)
ASSET = "0x" + "11" * 20
PAYEE = "0x" + "22" * 20
SIGNATURE = KEY.sign(1)


def make_intent(max_amount: int = 1_000) -> Intent:
    return Intent(
        payer=OWNER.address, asset=ASSET, session_key=KEY.public_key, max_amount=max_amount, max_per_payment=100,
        valid_after=0, valid_before=2**40, chain_id=31337, verifying_contract="0x" + "33" * 20,
        processor="0x" + "44" * 20,
    )


def mandate(intent: Intent, nonce: int, amount: int) -> Mandate:
    return Mandate(intent.intent_id, PAYEE, amount, nonce, 2**39, 7)


async def opened(location: str) -> PaymentStore:
    store = create_store(location)
    await store.open()
    return store


async def totals(store: SQLStore) -> tuple[int, int]:
    """The running totals the triggers keep: the intent's committed and the payer's outstanding."""
    committed = await store.db.fetchrow("SELECT committed FROM intents")
    outstanding = await store.db.fetchrow("SELECT COALESCE(SUM(amount), 0) AS amount FROM payer_outstanding")
    return int(committed["committed"]), int(outstanding["amount"])


async def test_reservation_refusals_name_their_reason(new_store_location):
    store = await opened(new_store_location())
    intent = make_intent(max_amount=150)
    await store.save_intent(intent.sign(OWNER.key))
    limits = Reservation(150, 100, escrow_balance=120, escrow_block=0)
    await store.reserve(mandate(intent, 0, 100), SIGNATURE, OWNER.address, ASSET, limits, time.time())
    cases = [
        (mandate(intent, 0, 10), ErrorCode.NONCE_USED),
        (mandate(intent, 1, 101), ErrorCode.PER_PAYMENT_CAP_EXCEEDED),
        (mandate(intent, 1, 60), ErrorCode.BUDGET_EXCEEDED),
        (mandate(intent, 1, 30), ErrorCode.INSUFFICIENT_ESCROW),
    ]
    for m, code in cases:
        with pytest.raises(PaymentError) as refused:
            await store.reserve(m, SIGNATURE, OWNER.address, ASSET, limits, time.time())
        assert refused.value.code == code
    assert len(await store.accepted_mandates()) == 1
    await store.close()


async def test_nonces_are_one_time_in_any_order(new_store_location):
    """Nonces are unordered one-time values (docs/PROTOCOL.md §3): a lower nonce after a higher
    one is accepted, even once the higher one is sealed into a batch; a nonce is refused the
    second time; a batch that failed for a retry gives its mandates back as accepted, and their
    nonces stay used."""
    store = await opened(new_store_location())
    intent = make_intent()
    await store.save_intent(intent.sign(OWNER.key))
    limits = Reservation(1_000, 100, 10_000, 0)

    async def reserve(nonce: int) -> str:
        return await store.reserve(mandate(intent, nonce, 10), SIGNATURE, OWNER.address, ASSET, limits, time.time())

    await reserve(5)
    await reserve(3)
    with pytest.raises(PaymentError) as refused:
        await reserve(3)
    assert refused.value.code == ErrorCode.NONCE_USED and "mandate.nonce: 3" in refused.value.reason
    batch = await store.seal_batch([m.payment_id for m in await store.accepted_mandates()], time_ref=1)
    await reserve(1)  # below every sealed nonce: still fine
    await store.fail_batch(batch.batch_id, "not submitted", retry=True)
    assert sorted((m.mandate.nonce, m.status) for m in await store.mandates()) == [
        (1, "accepted"), (3, "accepted"), (5, "accepted"),
    ]
    for nonce in (1, 3, 5):
        with pytest.raises(PaymentError) as refused:
            await reserve(nonce)
        assert refused.value.code == ErrorCode.NONCE_USED
    await store.close()


_STEP = st.one_of(
    st.tuples(st.just("reserve"), st.integers(1, 60)),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("seal"), st.integers(1, 4)),
    st.tuples(st.just("settle"), st.integers(0, 5)),
    st.tuples(st.just("retry"), st.integers(0, 5)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, max_size=30))
def test_running_totals_match_the_mandates(new_store_location, steps):
    """After any sequence of operations, the intent's committed total equals its non-failed
    mandates and the payer's outstanding total equals its accepted + batched mandates; the
    intent maximum is never exceeded."""

    async def run() -> None:
        store = await opened(new_store_location())
        intent = make_intent(max_amount=300)
        await store.save_intent(intent.sign(OWNER.key))
        limits = Reservation(300, 100, 250, 0)
        nonce = 0
        block = 1
        for op, value in steps:
            if op == "reserve":
                try:
                    await store.reserve(mandate(intent, nonce, value), SIGNATURE, OWNER.address, ASSET, limits, 0)
                except PaymentError:
                    pass
                nonce += 1
            elif op == "release":
                accepted = await store.accepted_mandates()
                if accepted:
                    await store.release(accepted[value % len(accepted)].payment_id)
            elif op == "seal":
                accepted = await store.accepted_mandates()
                if accepted:
                    await store.seal_batch([m.payment_id for m in accepted[:value]], time_ref=1)
            else:
                batches = [b for b in await store.batches() if b.status == "proving"]
                if batches:
                    batch = batches[value % len(batches)]
                    if op == "settle":
                        block += 1
                        await store.mark_batch_settled(batch.batch_id, "0x01", block)
                    else:
                        await store.fail_batch(batch.batch_id, "test", retry=op == "retry")
            mandates = await store.mandates()
            committed, outstanding = await totals(store)
            assert committed == sum(m.mandate.amount for m in mandates if m.status != "failed") <= 300
            assert outstanding == sum(m.mandate.amount for m in mandates if m.status in ("accepted", "batched"))
        await store.close()

    asyncio.run(run())
