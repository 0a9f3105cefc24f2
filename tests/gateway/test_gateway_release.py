"""A handler answering >= 400 releases the reservation: the payer is not charged."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from gateway_fixtures import SENTIMENT_PRICE, InProcessGateway, make_intent, open_store, signer_for
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.middleware import PaymentMiddleware
from payer import AEP2Auth, PayerState, create_session_key

pytestmark = pytest.mark.chain


async def test_bad_request_is_not_charged_with_payer_sdk(gateway_server, make_payer, deployment, store_path):
    payer = make_payer()
    key = create_session_key()
    auth = AEP2Auth(make_intent(payer.account.key, key, deployment), key, PayerState())
    async with httpx.AsyncClient(auth=auth, base_url=gateway_server.url) as client:
        good = await client.post("/v1/sentiment", json={"text": "happy"})
        assert good.status_code == 200
        spent = auth.spent
        assert spent == SENTIMENT_PRICE
        bad = await client.post("/v1/sentiment", content=b"not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert [r.status_code for r in bad.history] == [402]  # it was paid for, then refused by the handler
        assert "PAYMENT-RESPONSE" not in bad.headers
        assert auth.spent == spent and auth.remaining == auth.signed_intent.intent.max_amount - spent
        # The freed budget is usable: the next call is charged normally.
        again = await client.post("/v1/sentiment", json={"text": "good"})
        assert again.status_code == 200 and auth.spent == 2 * SENTIMENT_PRICE
    async with open_store(store_path) as store:
        stored = await store.mandates()
    assert [(m.mandate.nonce, m.status) for m in stored] == [(0, "accepted"), (2, "accepted")]


async def test_bad_request_leaves_nothing_in_store(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(escrow=SENTIMENT_PRICE), deployment)  # exactly one call's escrow
    body = b'{"text": 42}'
    mandate = signer.mandate("POST", "/v1/sentiment", body=body, amount=SENTIMENT_PRICE, nonce=7)
    header = signer.header("POST", "/v1/sentiment", body=body, amount=SENTIMENT_PRICE, nonce=7)
    response = httpx.post(
        gateway_server.url + "/v1/sentiment", content=body, headers={"PAYMENT-SIGNATURE": header}
    )
    assert response.status_code == 400 and "PAYMENT-RESPONSE" not in response.headers
    async with open_store(store_path) as store:
        assert await store.mandates() == []
    assert httpx.get(f"{gateway_server.url}/payments/{mandate.payment_id}").status_code == 404
    # The escrow it had reserved is free again: a good call with the only escrow there is passes.
    body = json.dumps({"text": "fine"}).encode()
    header = signer.header("POST", "/v1/sentiment", body=body, amount=SENTIMENT_PRICE, nonce=8)
    response = httpx.post(gateway_server.url + "/v1/sentiment", content=body, headers={"PAYMENT-SIGNATURE": header})
    assert response.status_code == 200
    receipt = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))
    assert receipt["amount"] == str(SENTIMENT_PRICE)



async def test_handler_exception_releases(make_payer, deployment, store_path):
    """A handler that raises (500) is released too; the middleware lets the exception through."""

    async def broken(request):
        raise RuntimeError("handler failed")

    gateway = InProcessGateway(deployment, store_path)
    app = Starlette(
        routes=[Route("/v1/forecast/{city}", broken)],
        middleware=[Middleware(PaymentMiddleware, **gateway.middleware_options)],
    )
    signer = signer_for(make_payer(), deployment)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            header = signer.header("GET", "/v1/forecast/paris")
            response = await client.get("/v1/forecast/paris", headers={"PAYMENT-SIGNATURE": header})
        assert response.status_code == 500 and "PAYMENT-RESPONSE" not in response.headers
        assert await gateway.store.mandates() == []
    finally:
        await gateway.aclose()
