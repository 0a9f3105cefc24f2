"""Our payer SDK (``payer.AEP2Auth``) against the live gateway, with sync and async httpx clients:
402 → mandate → 200 with a receipt in ``PAYMENT-RESPONSE``; receipts resolve at ``/payments/<id>``."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from gateway_fixtures import FORECAST_PRICE, PAYEE, SENTIMENT_PRICE, make_intent, open_store
from x402.schemas.responses import SettleResponse

from payer import AEP2Auth, PayerState, create_session_key

pytestmark = pytest.mark.chain


def auth_for(payer, deployment, **options) -> AEP2Auth:
    key = create_session_key()
    return AEP2Auth(make_intent(payer.account.key, key, deployment, **options), key, PayerState())


def check_receipt(server, response: httpx.Response, amount: int, payer) -> str:
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [402]
    receipt = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    assert receipt["success"] is True and receipt["transaction"] == ""
    assert receipt["extra"]["scheme"] == "aep2" and receipt["extra"]["status"] == "accepted"
    assert receipt["amount"] == str(amount) and receipt["payer"] == payer.address
    # The official SDK's model keeps our fields (in `extra`).
    assert SettleResponse.model_validate(receipt).extra == receipt["extra"]
    status = httpx.get(f"{server.url}/payments/{receipt['extra']['paymentId']}").json()
    assert status["status"] == "accepted" and status["amount"] == str(amount) and status["payee"] == PAYEE
    return receipt["extra"]["paymentId"]


def test_sync_client(gateway_server, make_payer, deployment):
    payer = make_payer()
    auth = auth_for(payer, deployment)
    with httpx.Client(auth=auth, base_url=gateway_server.url) as client:
        ids = [check_receipt(gateway_server, client.get(f"/v1/forecast/city{n}"), FORECAST_PRICE, payer) for n in range(3)]
        response = client.post("/v1/sentiment", json={"text": "great and fast"})
        ids.append(check_receipt(gateway_server, response, SENTIMENT_PRICE, payer))
        assert response.json()["label"] == "positive"
        free = client.get("/health")
    assert free.status_code == 200 and free.history == []
    assert len(set(ids)) == 4
    assert [r["paymentId"] for r in auth.receipts] == ids
    assert auth.spent == 3 * FORECAST_PRICE + SENTIMENT_PRICE


async def test_async_client(gateway_server, make_payer, deployment, store_path):
    payer = make_payer()
    auth = auth_for(payer, deployment)
    async with httpx.AsyncClient(auth=auth, base_url=gateway_server.url) as client:
        first = await client.get("/v1/forecast/paris?units=metric")
        second = await client.get("/v1/primes?n=1000")
    check_receipt(gateway_server, first, FORECAST_PRICE, payer)
    check_receipt(gateway_server, second, 510, payer)
    assert second.json()["count"] == 168
    assert auth.spent == FORECAST_PRICE + 510
    async with open_store(store_path) as store:
        stored = await store.mandates("accepted")
    assert [(m.mandate.nonce, m.mandate.amount) for m in stored] == [(0, FORECAST_PRICE), (1, 510)]


async def test_intent_mode_after_discovery(gateway_server, make_payer, deployment):
    """Prices from ``/skill.json``: the first request already carries the mandate (no 402)."""
    payer = make_payer()
    auth = auth_for(payer, deployment)
    async with httpx.AsyncClient(auth=auth, base_url=gateway_server.url) as client:
        prices = await auth.discover(client, gateway_server.url)
        assert ("POST", f"{gateway_server.url}/v1/sentiment") in prices
        response = await client.post("/v1/sentiment", json={"text": "bad"})
    assert response.status_code == 200 and response.history == []
    assert "PAYMENT-RESPONSE" in response.headers
    assert auth.spent == SENTIMENT_PRICE


def test_gateway_refusal_surfaces_as_payment_refused(gateway_server, make_payer, deployment):
    from payer import PaymentRefused

    payer = make_payer(escrow=FORECAST_PRICE)  # one call's worth of escrow
    auth = auth_for(payer, deployment)
    with httpx.Client(auth=auth, base_url=gateway_server.url) as client:
        assert client.get("/v1/forecast/a").status_code == 200
        with pytest.raises(PaymentRefused) as refused:
            client.get("/v1/forecast/b")
    assert refused.value.code == "insufficient_escrow"
    assert auth.spent == FORECAST_PRICE
