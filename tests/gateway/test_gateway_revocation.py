"""An intent revoked on chain is refused by the gateway once its chain cache refreshes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from eth_account import Account

from examples.payee_service import create_app
from payer import AEP2Auth, PayerState, PaymentRefused, create_intent, create_session_key
from settlement.chain import SettlementClient

pytestmark = pytest.mark.chain


async def test_revoked_intent_is_refused(deployment, make_payer, serve, store_path, payee, processor_key):
    payer = make_payer(escrow=100_000)
    processor = Account.from_key(processor_key).address
    server = serve(create_app(deployment, payee, store_path, processor=processor))
    key = create_session_key()
    intent = create_intent(
        payer.account.key, session_key=key, asset=deployment.token, max_amount=50_000, max_per_payment=5_000,
        valid_for_seconds=3600, chain_id=deployment.chain_id, settlement=deployment.settlement, processor=processor,
    )
    auth = AEP2Auth(intent, key, PayerState())
    async with httpx.AsyncClient(auth=auth, base_url=server.url) as client:
        assert (await client.get("/v1/forecast/before")).status_code == 200
        chain = SettlementClient(deployment.rpc_url, deployment.settlement, processor_key)
        await chain.register_intent(intent)
        await chain.aclose()
        payer.revoke_intent(intent.intent.intent_id)
        await asyncio.sleep(3)  # the gateway's chain cache refreshes every 2 s
        with pytest.raises(PaymentRefused) as refused:
            await client.get("/v1/forecast/after")
    assert refused.value.code == "intent_revoked"
    assert auth.spent == 1_000
