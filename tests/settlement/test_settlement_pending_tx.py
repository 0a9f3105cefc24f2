"""A settlement transaction still without a receipt when the processor dies is not a lost one.

Each test stops a processor while its batch's transaction sits in the mempool of a real
Anvil node with automine off (so the transaction stays pending until the test mines a
block), then starts a new processor with no new payment. The transaction is mined later,
or dropped by the node (then broadcast again: it settles, or reverts because the escrow
emptied meanwhile), or made unminable by another transaction taking its account nonce. In
each case the batch ends once, and the store's settled total equals what the chain paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import TransactionNotFound

from aep2.deployment import Deployment
from aep2.store import BatchRecord
from examples.payee_service import create_app
from payer import AEP2Auth, Escrow, PayerState, create_intent, create_session_key
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key
from settlement.processor import SettlementProcessor
from settlement.prover import Prover

from settlement_fixtures import PAYEE, PRICE, PROCESSOR, PROCESSOR_KEY, fund, processor

pytestmark = [pytest.mark.chain, pytest.mark.circuit]

WINDOW = 60  # settlement window and withdrawal delay of these deployments (s)
CALLS = 4  # the small circuit's N: one full batch, due at once
ESCROW = 100_000


@pytest.fixture
def chain(small_artifacts):
    with Anvil() as node:
        deployment = deploy(node.rpc_url, anvil_key(0), small_artifacts, withdrawal_delay=WINDOW, settlement_window=WINDOW)
        yield Web3(Web3.HTTPProvider(node.rpc_url)), deployment


@contextlib.asynccontextmanager
async def running(settler: SettlementProcessor, *, poll_seconds: float = 0.05):
    """``settler.run()`` as a task, stopped and awaited on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(settler.run(stop, poll_seconds=poll_seconds))
    try:
        yield
    finally:
        stop.set()
        await task


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def known(w3: Web3, tx_hash: str) -> bool:
    """Whether the node holds ``tx_hash`` (in its mempool or a block)."""
    try:
        w3.eth.get_transaction(tx_hash)
    except TransactionNotFound:
        return False
    return True


async def paid_and_pending(
    w3: Web3, deployment: Deployment, store_path: str, prover: Prover, serve, *, calls: int = CALLS
) -> tuple[Escrow, BatchRecord]:
    """Serve ``calls`` paid requests, then kill a processor right after it broadcast the first
    batch: returns the payer and the batch, ``submitted`` with its transaction in the mempool."""
    payer = fund(deployment, ESCROW)
    key = create_session_key()
    intent = create_intent(
        payer.account.key, session_key=key, asset=deployment.token, max_amount=10**6, max_per_payment=10**4,
        valid_for_seconds=3600, chain_id=deployment.chain_id, settlement=deployment.settlement, processor=PROCESSOR,
    )
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(auth=AEP2Auth(intent, key, PayerState()), base_url=server.url) as client:
        for k in range(calls):
            assert (await client.get(f"/v1/forecast/c{k}")).status_code == 200

    async with processor(deployment, store_path, prover) as first:
        # Registered while blocks are still mined on demand: from here on, only the test mines.
        await first.client.register_intent(intent)
        w3.provider.make_request("evm_setAutomine", [False])
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop, poll_seconds=0.05))

        async def broadcast() -> bool:
            batches = await first.store.batches()
            return bool(batches) and batches[0].status == "submitted" and known(w3, batches[0].tx_hash)

        await eventually(broadcast)
        task.cancel()  # the process dies while waiting for the receipt
        with contextlib.suppress(asyncio.CancelledError):
            await task
        [batch] = await first.store.batches()
    assert batch.status == "submitted" and batch.raw_tx and batch.tx_nonce is not None
    assert payee_balance(payer) == 0
    return payer, batch


async def found_pending(caplog: pytest.LogCaptureFixture, batch: BatchRecord, *, times: int) -> bool:
    """Whether reconcile() has found ``batch``'s transaction pending at least ``times`` times."""
    message = f"batch {batch.batch_id}: {batch.tx_hash} pending"
    return sum(message in record.getMessage() for record in caplog.records) >= times


def payee_balance(payer: Escrow) -> int:
    return payer.token.functions.balanceOf(PAYEE).call()


async def assert_settled_once(settler: SettlementProcessor, payer: Escrow) -> None:
    """Every mandate settled in exactly one settled batch, and the store's totals are the chain's."""
    mandates = await settler.store.mandates()
    settled = [b for b in await settler.store.batches() if b.status == "settled"]
    assert len(mandates) == CALLS and {m.status for m in mandates} == {"settled"}
    assert len(settled) == 1 and sorted(settled[0].payment_ids) == sorted(m.payment_id for m in mandates)
    assert {m.tx_hash for m in mandates} == {settled[0].tx_hash}
    totals = await settler.store.totals()
    assert payee_balance(payer) == sum(totals["payees"].values()) == CALLS * PRICE
    assert payer.balance() == ESCROW - totals["payers"][payer.address] == ESCROW - CALLS * PRICE


async def test_pending_transaction_is_followed_until_mined(chain, prover, serve, store_path, caplog):
    w3, deployment = chain
    payer, batch = await paid_and_pending(w3, deployment, store_path, prover, serve)
    async with processor(deployment, store_path, prover) as second:
        with caplog.at_level(logging.DEBUG, logger="settlement"):
            async with running(second):
                # No payment arrives, so no batch is due: run() reconciles anyway, and keeps
                # the batch submitted round after round while its transaction is pending.
                await eventually(lambda: found_pending(caplog, batch, times=3))
                assert (await second.store.get_batch(batch.batch_id)).status == "submitted"
                assert {m.status for m in await second.store.mandates()} == {"batched"}

                w3.provider.make_request("evm_mine", [])

                async def settled() -> bool:
                    return (await second.store.get_batch(batch.batch_id)).status == "settled"

                await eventually(settled)
        assert [(b.status, b.tx_hash) for b in await second.store.batches()] == [("settled", batch.tx_hash)]
        assert w3.eth.get_transaction_receipt(batch.tx_hash)["status"] == 1
        await assert_settled_once(second, payer)


async def test_no_batch_is_cut_while_one_is_in_flight(chain, prover, serve, store_path, caplog):
    w3, deployment = chain
    payer, batch = await paid_and_pending(w3, deployment, store_path, prover, serve, calls=2 * CALLS)
    async with processor(deployment, store_path, prover) as second:
        with caplog.at_level(logging.DEBUG, logger="settlement"):
            async with running(second):
                # A full batch is due, but the chain does not show the one in flight yet.
                await eventually(lambda: found_pending(caplog, batch, times=3))
                assert [b.status for b in await second.store.batches()] == ["submitted"]
                assert len(await second.store.accepted_mandates()) == CALLS

                w3.provider.make_request("evm_setAutomine", [True])
                w3.provider.make_request("evm_mine", [])

                async def all_settled() -> bool:
                    return {m.status for m in await second.store.mandates()} == {"settled"}

                await eventually(all_settled)
        assert [(b.status, len(b.payment_ids)) for b in await second.store.batches()] == [("settled", CALLS)] * 2
        totals = await second.store.totals()
        assert payee_balance(payer) == sum(totals["payees"].values()) == 2 * CALLS * PRICE


async def test_dropped_transaction_is_broadcast_again(chain, prover, serve, store_path):
    w3, deployment = chain
    payer, batch = await paid_and_pending(w3, deployment, store_path, prover, serve)
    w3.provider.make_request("anvil_dropTransaction", [batch.tx_hash])
    w3.provider.make_request("evm_mine", [])
    assert not known(w3, batch.tx_hash)  # the node forgot it and will never mine it by itself
    async with processor(deployment, store_path, prover) as second:
        async with running(second):
            async def broadcast_again() -> bool:
                return known(w3, batch.tx_hash)

            await eventually(broadcast_again)
            assert (await second.store.get_batch(batch.batch_id)).status == "submitted"
            w3.provider.make_request("evm_mine", [])

            async def settled() -> bool:
                return (await second.store.get_batch(batch.batch_id)).status == "settled"

            await eventually(settled)
        assert [(b.status, b.tx_hash) for b in await second.store.batches()] == [("settled", batch.tx_hash)]
        await assert_settled_once(second, payer)


async def test_transaction_whose_nonce_went_elsewhere_is_retried_in_a_new_batch(chain, prover, serve, store_path):
    w3, deployment = chain
    payer, batch = await paid_and_pending(w3, deployment, store_path, prover, serve)
    w3.provider.make_request("anvil_dropTransaction", [batch.tx_hash])
    # The processor's key spends the batch transaction's nonce on a plain transfer.
    transfer = Account.from_key(PROCESSOR_KEY).sign_transaction({
        "to": PROCESSOR, "value": 1, "gas": 21_000, "nonce": batch.tx_nonce, "chainId": deployment.chain_id,
        "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
    })
    transfer_hash = w3.eth.send_raw_transaction(transfer.raw_transaction)
    w3.provider.make_request("evm_mine", [])
    assert w3.eth.get_transaction_receipt(transfer_hash)["status"] == 1
    w3.provider.make_request("evm_setAutomine", [True])
    async with processor(deployment, store_path, prover) as second:
        async with running(second):
            async def all_settled() -> bool:
                return {m.status for m in await second.store.mandates()} == {"settled"}

            await eventually(all_settled)
        first, retried = await second.store.batches()
        assert first.status == "failed" and f"account nonce {batch.tx_nonce}" in first.reason
        assert retried.status == "settled" and retried.tx_hash != batch.tx_hash
        with pytest.raises(TransactionNotFound):
            w3.eth.get_transaction_receipt(batch.tx_hash)
        await assert_settled_once(second, payer)


async def test_transaction_that_reverts_when_mined_returns_its_mandates_to_the_queue(
    chain, prover, serve, store_path
):
    w3, deployment = chain
    payer, batch = await paid_and_pending(w3, deployment, store_path, prover, serve)
    w3.provider.make_request("anvil_dropTransaction", [batch.tx_hash])
    # While the node has forgotten the batch, its payer withdraws the whole escrow.
    w3.provider.make_request("evm_setAutomine", [True])
    payer.request_withdrawal(ESCROW)
    w3.provider.make_request("evm_increaseTime", [WINDOW + 1])
    w3.provider.make_request("evm_mine", [])
    payer.execute_withdrawal()
    async with processor(deployment, store_path, prover) as second:
        async with running(second):
            async def all_failed() -> bool:
                return {m.status for m in await second.store.mandates()} == {"failed"}

            await eventually(all_failed)
        # Broadcast again, mined, reverted: the batch failed and its mandates were re-planned,
        # which found the escrow empty. Nothing was paid, and nothing is recorded as paid.
        [failed] = await second.store.batches()
        assert failed.status == "failed" and failed.reason == f"{batch.tx_hash} reverted"
        assert w3.eth.get_transaction_receipt(batch.tx_hash)["status"] == 0
        assert {m.reason for m in await second.store.mandates()} == {"insufficient_escrow"}
        assert payee_balance(payer) == sum((await second.store.totals())["payees"].values()) == 0
