"""End to end on a real Anvil node: payer SDK → gateway (uvicorn) → store → processor → chain,
with the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from eth_account import Account

from aep2.stores import create_store
from examples.payee_service import create_app
from payer import AEP2Auth, PayerState, create_intent, create_session_key
from settlement.chain import SettlementClient
from settlement.processor import SettlementProcessor
from settlement.prover import Prover

pytestmark = [pytest.mark.chain, pytest.mark.circuit]


async def test_paid_calls_settle_on_chain(
    deployment, make_payer, small_artifacts, serve, new_store_location, payee, processor_key
):
    location = new_store_location()
    payer = make_payer(escrow=1_000_000)
    processor = Account.from_key(processor_key).address
    server = serve(create_app(deployment, payee, location, processor=processor))
    key = create_session_key()
    intent = create_intent(
        payer.account.key, session_key=key, asset=deployment.token, max_amount=100_000, max_per_payment=5_000,
        valid_for_seconds=3600, chain_id=deployment.chain_id, settlement=deployment.settlement, processor=processor,
    )
    auth = AEP2Auth(intent, key, PayerState())
    payee_before = payer.token.functions.balanceOf(payee).call()
    async with httpx.AsyncClient(auth=auth, base_url=server.url) as client:
        responses = [await client.get(f"/v1/forecast/city{n}") for n in range(5)]
        responses.append(await client.post("/v1/sentiment", json={"text": "fast and correct"}))
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.history and r.history[0].status_code == 402 for r in responses)
    assert auth.spent == 5 * 1_000 + 2_000

    store = create_store(location)
    await store.open()
    try:
        client = SettlementClient(deployment.rpc_url, deployment.settlement, processor_key)
        settler = SettlementProcessor(store, client, Prover(small_artifacts), deployment.token)
        results = await settler.settle_all()
        assert sum(r.mandates for r in results) == 6
        assert [m.status for m in await store.mandates()] == ["settled"] * 6
        # The gateway's receipt endpoint reports the settlement transaction.
        receipt = httpx.get(f"{server.url}/payments/{auth.receipts[0]['paymentId']}").json()
        assert receipt["status"] == "settled" and receipt["transaction"] in {r.tx_hash for r in results}
    finally:
        await store.close()
    assert payer.token.functions.balanceOf(payee).call() - payee_before == 7_000
    assert payer.balance() == 1_000_000 - 7_000
    record = await client.intent(intent.intent.intent_id)
    assert record.spent == 7_000
    assert await client.settled_nonces(intent.intent.intent_id, 0) == 0b111111  # nonces 0-5, one bit each
    await client.aclose()
