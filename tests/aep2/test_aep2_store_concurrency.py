"""Reservations from several store instances at once (as from gateway replicas), on SQLite and
on PostgreSQL: the limits hold exactly and no nonce is reserved twice."""

from __future__ import annotations

import asyncio
import time

from eth_account import Account

from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode, PaymentError
from aep2.intent import Intent
from aep2.mandate import Mandate
from aep2.store import Reservation
from aep2.stores import create_store

KEY = SessionKey(0xBEEF)
ASSET = "0x" + "11" * 20
PAYEE = "0x" + "22" * 20
SIGNATURE = KEY.sign(1)
PRICE = 10


def make_intent(owner: Account, max_amount: int) -> Intent:
    return Intent(
        payer=owner.address, asset=ASSET, session_key=KEY.public_key, max_amount=max_amount, max_per_payment=PRICE,
        valid_after=0, valid_before=2**40, chain_id=31337, verifying_contract="0x" + "33" * 20,
        processor="0x" + "44" * 20,
    )


async def race(stores, intent: Intent, nonces, limits: Reservation) -> list[str | PaymentError]:
    """Reserve one mandate per nonce, all at once, spread over ``stores``."""

    async def reserve(k: int, nonce: int) -> str | PaymentError:
        mandate = Mandate(intent.intent_id, PAYEE, PRICE, nonce, 2**39, 7)
        try:
            return await stores[k % len(stores)].reserve(mandate, SIGNATURE, intent.payer, ASSET, limits, time.time())
        except PaymentError as refused:
            return refused

    return await asyncio.gather(*(reserve(k, nonce) for k, nonce in enumerate(nonces)))


async def test_two_stores_admit_exactly_what_the_intent_covers(new_store_location):
    location = new_store_location()
    owner = Account.create()
    intent = make_intent(owner, max_amount=50 * PRICE)
    async with create_store(location) as first, create_store(location) as second:
        await first.save_intent(intent.sign(owner.key))
        limits = Reservation(50 * PRICE, PRICE, escrow_balance=10**9, escrow_block=0)
        # 200 distinct nonces, and each of the first 20 sent a second time through the other store.
        nonces = list(range(200)) + list(range(20))
        outcomes = await race([first, second], intent, nonces, limits)
        accepted = await first.mandates()
    admitted = [o for o in outcomes if isinstance(o, str)]
    assert len(admitted) == len(set(admitted)) == 50
    assert {o.code for o in outcomes if isinstance(o, PaymentError)} <= {ErrorCode.BUDGET_EXCEEDED, ErrorCode.NONCE_USED}
    assert sorted(m.payment_id for m in accepted) == sorted(admitted)
    assert len({m.mandate.nonce for m in accepted}) == 50


async def test_escrow_holds_across_intents_of_one_payer(new_store_location):
    """The escrow check spans a payer's intents: concurrent reservations on two intents never
    outstand more than the escrow."""
    location = new_store_location()
    owner = Account.create()
    intents = [make_intent(owner, max_amount=10**6), make_intent(owner, max_amount=10**6 + 1)]
    async with create_store(location) as first, create_store(location) as second:
        for intent in intents:
            await first.save_intent(intent.sign(owner.key))
        limits = Reservation(10**6, PRICE, escrow_balance=30 * PRICE, escrow_block=0)
        outcomes = await asyncio.gather(
            *(race([first, second], intent, range(40), limits) for intent in intents)
        )
        accepted = await second.accepted_mandates()
    refusals = {o.code for batch in outcomes for o in batch if isinstance(o, PaymentError)}
    assert refusals == {ErrorCode.INSUFFICIENT_ESCROW}
    assert sum(m.mandate.amount for m in accepted) == 30 * PRICE
