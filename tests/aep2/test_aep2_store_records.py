"""What the store gives back, on SQLite and on PostgreSQL alike: batches with their payment
ids, ``exact`` payments, payment identifiers' cached responses and settled totals."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from eth_account import Account

from aep2.errors import ErrorCode, PaymentError
from aep2.store import (
    SETTLEMENT_UNKNOWN,
    BatchStatus,
    CachedResponse,
    ExactPaymentRecord,
    ExactStatus,
    MandateStatus,
    Reservation,
)
from aep2.stores import create_store

from test_aep2_store import ASSET, OWNER, SIGNATURE, make_intent, mandate


async def test_batches_carry_their_payment_ids_in_order(new_store_location):
    async with create_store(new_store_location()) as store:
        intent = make_intent()
        await store.save_intent(intent.sign(OWNER.key))
        limits = Reservation(1_000, 100, 10_000, 0)
        ids = [
            await store.reserve(mandate(intent, nonce, 10), SIGNATURE, OWNER.address, ASSET, limits, time.time())
            for nonce in (4, 1, 3, 0, 2)
        ]
        first = await store.seal_batch(ids[:2], time_ref=1)
        empty = await store.seal_batch([], time_ref=2)
        second = await store.seal_batch(ids[2:], time_ref=3)
        with pytest.raises(ValueError, match="accepted"):
            await store.seal_batch(ids[:1], time_ref=4)
        await store.mark_batch_settled(first.batch_id, "0x01", 9)
        await store.fail_batch(empty.batch_id, "empty", retry=False)

        batches = await store.batches()
        assert [(b.batch_id, b.status, b.time_ref) for b in batches] == [
            (first.batch_id, BatchStatus.SETTLED, 1), (empty.batch_id, BatchStatus.FAILED, 2),
            (second.batch_id, BatchStatus.PROVING, 3),
        ]
        # Ordered by intent then nonce within a batch, whatever the order they were sealed in.
        by_nonce = {m.payment_id: m.mandate.nonce for m in await store.mandates()}
        assert [[by_nonce[p] for p in b.payment_ids] for b in batches] == [[1, 4], [], [0, 2, 3]]
        assert await store.open_batches() == [batches[2]]
        assert await store.get_batch(second.batch_id) == batches[2]
        with pytest.raises(KeyError):
            await store.get_batch(second.batch_id + 100)
        assert {m.status for m in await store.batch_mandates(first.batch_id)} == {MandateStatus.SETTLED}
        assert (await store.totals())["payers"] == {OWNER.address: 20}


def exact(nonce: str, *, status: ExactStatus = ExactStatus.ACCEPTED) -> ExactPaymentRecord:
    payer = Account.create().address
    return ExactPaymentRecord(nonce, payer, "0x" + "22" * 20, ASSET, 1_000, {"nonce": nonce, "value": "1000"},
                              "0xsig", status)


async def test_exact_payments_are_one_time_and_resumable(new_store_location):
    async with create_store(new_store_location()) as store:
        paid, unknown, dropped = exact("0x01"), exact("0x02"), exact("0x03")
        for record in (paid, unknown, dropped):
            await store.save_exact_payment(record)
        with pytest.raises(PaymentError) as refused:
            await store.save_exact_payment(paid)
        assert refused.value.code == ErrorCode.AUTHORIZATION_USED
        await store.update_exact_payment(paid.nonce, ExactStatus.SETTLED, "0xaa", None)
        await store.update_exact_payment(unknown.nonce, ExactStatus.ACCEPTED, None, SETTLEMENT_UNKNOWN)
        await store.delete_exact_payment(dropped.nonce)
        await store.delete_exact_payment(paid.nonce)  # settled: kept

        now = time.time()
        assert not await store.resume_exact_payment(unknown.nonce, "0xother", now, 60)
        assert await store.resume_exact_payment(unknown.nonce, unknown.signature, now, 60)
        assert not await store.resume_exact_payment(unknown.nonce, unknown.signature, now, 60)  # taken over
        settled = replace(paid, status=ExactStatus.SETTLED, tx_hash="0xaa")
        assert await store.exact_payments() == [settled, unknown]
        assert await store.exact_payments(ExactStatus.SETTLED) == [settled]
        assert (await store.totals())["exact_payees"] == {paid.payee: 1_000}


async def test_payment_identifiers_cache_the_paid_response(new_store_location):
    async with create_store(new_store_location()) as store:
        now = time.time()
        assert await store.claim_payment_identifier("id-1", "hash", now, 30) is None
        with pytest.raises(PaymentError) as busy:
            await store.claim_payment_identifier("id-1", "hash", now, 30)
        assert busy.value.code == ErrorCode.PAYMENT_IN_PROGRESS
        assert await store.claim_payment_identifier("id-1", "hash", now + 31, 30) is None  # its request died
        response = CachedResponse(200, [("content-type", "application/json")], b'{"ok": true}')
        await store.complete_payment_identifier("id-1", response)
        assert await store.claim_payment_identifier("id-1", "hash", now, 30) == response
        with pytest.raises(PaymentError) as conflict:
            await store.claim_payment_identifier("id-1", "other", now, 30)
        assert conflict.value.code == ErrorCode.PAYMENT_IDENTIFIER_CONFLICT

        assert await store.claim_payment_identifier("id-2", "hash", now, 30) is None
        await store.drop_payment_identifier("id-2")
        assert await store.claim_payment_identifier("id-2", "hash", now, 30) is None
