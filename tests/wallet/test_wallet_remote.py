"""Remote mode: an agent holding only an API key pays our real gateway through the wallet, with
``payer.WalletAuth`` (sync and async) or by asking the wallet to make the call
(``POST /v1/payments/execute``).

The gateway is the in-process harness of the gateway tests (the real middleware and
verification on a ``StaticChainReader``); the wallet is the real app on a real database.
Attacks: a denial never reaches the payee; a wallet answer lost after signing is retried
without a second mandate; the wallet refuses to call a host its owner never named.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from aep2.x402 import PAYMENT_REQUIRED_HEADER, X_PAYMENT_HEADER
from payer.errors import NoAcceptableRequirement, PolicyDenied, ReviewPending, WalletUnavailable
from payer.remote import WalletAuth
from wallet import ledger, webhooks
from wallet.app import create_app
from wallet.db import Database
from wallet.keys import OwnerKeystore, Sealer
from wallet.policy import Rules
from wallet.service import PaymentStatus, WalletService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_fixtures import FORECAST_PRICE, OFFLINE_DEPLOYMENT, PROCESSOR, InProcessGateway, StaticChainReader  # noqa: E402

FAST_KDF: dict[str, Any] = {"kdf": "scrypt", "iterations": 2**10}  # tests only
OWNER_TOKEN = "owner-token-" + "x" * 32
GATEWAY = "http://gateway.test"
DRAFT = {"budget": 100_000, "purpose": "forecasts", "duration_seconds": 3600, "per_payment_cap": 5_000}


def new_service(db: Database, tmp_path: Path) -> WalletService:
    owner = OwnerKeystore.create(tmp_path / f"owner-{os.urandom(4).hex()}.json", "pw", **FAST_KDF)
    sealer = Sealer(os.urandom(32))
    return WalletService(db, owner=owner, sealer=sealer, deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR,
                         webhooks=webhooks.Webhooks(db, sealer=sealer))


async def funded_agent(service: WalletService, **draft: Any) -> tuple[str, str]:
    """``(agent_id, api_key)`` of a new agent with an approved intent (``DRAFT`` | ``draft``)."""
    await service.record_deposit(10**9)
    agent_id, api_key = await service.add_agent("agent")
    intent = await service.draft_intent(agent_id, **(DRAFT | draft))
    await service.approve_intent(intent.id)
    return agent_id, api_key


@pytest.fixture
async def world(wallet_db: Database, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The wallet (service, app) and the gateway, both in process."""
    service = new_service(wallet_db, tmp_path)
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    app = create_app(service, owner_token=OWNER_TOKEN)
    yield {"service": service, "gateway": gateway, "app": app}
    await gateway.aclose()
    await service.webhooks.aclose()


def agent_client(world: dict[str, Any], auth: httpx.Auth, app: Any = None) -> httpx.AsyncClient:
    """An httpx client to the gateway (or ``app``) paying with ``auth``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app or world["gateway"].app), base_url=GATEWAY, auth=auth)


def wallet_auth(world: dict[str, Any], api_key: str, **options: Any) -> WalletAuth:
    transport = options.pop("async_transport", None) or httpx.ASGITransport(app=world["app"])
    return WalletAuth("http://wallet.test", api_key, async_transport=transport, backoff=0, **options)


# ---------------------------------------------------------------------------------------------
# WalletAuth
# ---------------------------------------------------------------------------------------------


async def test_an_agent_with_an_api_key_pays_the_gateway_through_the_wallet(world):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service)
    async with wallet_auth(world, api_key) as auth, agent_client(world, auth) as client:
        first = await client.get("/v1/forecast/paris")
        second = await client.post("/v1/sentiment", json={"text": "fine"})
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    paid = [m.payment_id for m in await world["gateway"].store.mandates()]
    assert len(paid) == 2 and [r["paymentId"] for r in auth.receipts] == paid
    payments = await service.payments(agent_id=agent_id)
    assert {p.payment_id for p in payments} == set(paid)
    assert all(p.status is PaymentStatus.SETTLED for p in payments)  # the receipts were reported
    async with service.db.snapshot() as conn:
        assert await ledger.escrow(conn, service.owner_ref) == 10**9 - sum(p.amount for p in payments)


async def test_a_v1_challenge_is_paid_with_an_x_payment_envelope(world):
    """A gateway that speaks only x402 v1 (the challenge in the body, ``X-PAYMENT`` back)."""
    _agent, api_key = await funded_agent(world["service"])
    seen: list[str] = []
    gateway_app = world["gateway"].app

    async def v1_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.extend(k.decode().lower() for k, _ in scope["headers"])

        async def strip(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message["headers"] if k.decode().lower() != PAYMENT_REQUIRED_HEADER.lower()]
            await send(message)

        await gateway_app(scope, receive, strip)

    async with wallet_auth(world, api_key) as auth, agent_client(world, auth, v1_only) as client:
        response = await client.get("/v1/forecast/paris")
    assert response.status_code == 200, response.text
    assert X_PAYMENT_HEADER.lower() in seen and "payment-signature" not in seen
    assert len(await world["gateway"].store.mandates()) == 1


async def test_a_policy_denial_raises_before_the_payee_sees_a_payment(world):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service)
    await service.set_rules(Rules(per_transaction_cap=FORECAST_PRICE - 1), agent_id=agent_id)
    async with wallet_auth(world, api_key) as auth, agent_client(world, auth) as client:
        with pytest.raises(PolicyDenied) as denied:
            await client.get("/v1/forecast/paris")
    assert denied.value.rule == "per_transaction_cap" and denied.value.decision_id is not None
    assert await world["gateway"].store.mandates() == []
    assert world["gateway"].handled["/v1/forecast/paris"] == 0
    assert await service.payments(agent_id=agent_id) == []


async def test_a_review_raises_pending_or_waits_for_the_owner(world):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service)
    await service.set_rules(Rules(review_above=FORECAST_PRICE - 1), agent_id=agent_id)
    async with wallet_auth(world, api_key) as auth, agent_client(world, auth) as client:
        with pytest.raises(ReviewPending) as pending:
            await client.get("/v1/forecast/paris")
        assert pending.value.rule == "review_above"
        await service.deny_review(pending.value.review_id)

    async def approve_when_asked() -> None:
        while not (reviews := await service.reviews()):
            await asyncio.sleep(0.01)
        await service.approve_review(reviews[0].id)

    async with wallet_auth(world, api_key, review_timeout=10, poll_interval=0.02) as auth, agent_client(world, auth) as client:
        response, _ = await asyncio.gather(client.get("/v1/forecast/rome"), approve_when_asked())
    assert response.status_code == 200, response.text
    assert [p.status for p in await service.payments(agent_id=agent_id)] == [PaymentStatus.SETTLED]


async def test_an_answer_lost_after_signing_is_retried_without_a_second_mandate(world):
    """The wallet signs, then its answer is lost (a read timeout): the retry carries the same
    idempotency key and gets the same mandate."""
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service)
    inner = httpx.ASGITransport(app=world["app"])
    calls: list[str] = []

    class LosesFirstAnswer(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            calls.append(request.url.path)
            if request.url.path == "/v1/payments/authorize" and calls.count(request.url.path) == 1:
                await response.aread()
                raise httpx.ReadTimeout("lost after the wallet answered", request=request)
            return response

    async with wallet_auth(world, api_key, async_transport=LosesFirstAnswer()) as auth, agent_client(world, auth) as client:
        response = await client.get("/v1/forecast/paris")
    assert response.status_code == 200, response.text
    assert calls.count("/v1/payments/authorize") == 2
    payments = await service.payments(agent_id=agent_id)
    assert len(payments) == 1 and payments[0].status is PaymentStatus.SETTLED
    assert len(await service.decisions(agent_id=agent_id)) == 1


async def test_a_wallet_that_never_answers_raises_unavailable_and_nothing_is_paid(world):
    _agent, api_key = await funded_agent(world["service"])

    class Down(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

    async with wallet_auth(world, api_key, async_transport=Down(), retries=2) as auth, agent_client(world, auth) as client:
        with pytest.raises(WalletUnavailable):
            await client.get("/v1/forecast/paris")
    assert await world["gateway"].store.mandates() == []


async def test_a_requirement_for_another_chain_is_no_acceptable_requirement(world):
    service: WalletService = world["service"]
    _agent, api_key = await funded_agent(service)
    other = InProcessGateway(dataclasses.replace(OFFLINE_DEPLOYMENT, chain_id=8453),
                             ":memory:", reader=StaticChainReader())
    try:
        async with wallet_auth(world, api_key) as auth, agent_client(world, auth, other.app) as client:
            with pytest.raises(NoAcceptableRequirement, match="network"):
                await client.get("/v1/forecast/paris")
    finally:
        await other.aclose()


def test_a_sync_client_pays_over_real_http(serve, tmp_path):
    """``httpx.Client`` with ``WalletAuth`` against the wallet and the gateway on loopback."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.sqlite'}"
    keystore = tmp_path / "owner.json"
    sealer = Sealer(os.urandom(32))

    def service_on(db: Database) -> WalletService:
        owner = OwnerKeystore.load(keystore, "pw")
        return WalletService(db, owner=owner, sealer=sealer, deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR,
                             webhooks=webhooks.Webhooks(db, sealer=sealer))

    async def prepare() -> tuple[str, str]:
        OwnerKeystore.create(keystore, "pw", **FAST_KDF)
        async with Database(url) as db:
            await db.create()
            service = service_on(db)
            try:
                return await funded_agent(service)
            finally:
                await service.webhooks.aclose()

    agent_id, api_key = asyncio.run(prepare())
    db = Database(url)  # first used on uvicorn's loop
    service = service_on(db)
    wallet = serve(create_app(service, owner_token=OWNER_TOKEN))
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, str(tmp_path / "gateway.sqlite"), reader=StaticChainReader())
    payee = serve(gateway.app)
    with WalletAuth(wallet.url, api_key) as auth, httpx.Client(base_url=payee.url, auth=auth, timeout=10) as client:
        responses = [client.get(f"/v1/forecast/{city}") for city in ("paris", "rome", "oslo")]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len(auth.receipts) == 3
    wallet.stop()
    payee.stop()

    async def check_and_close() -> None:
        payments = await service.payments(agent_id=agent_id)
        assert sorted(p.status for p in payments) == [PaymentStatus.SETTLED] * 3
        await service.webhooks.aclose()
        await db.aclose()

    asyncio.run(check_and_close())


# ---------------------------------------------------------------------------------------------
# The wallet makes the call
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def wallet_http(world) -> AsyncIterator[httpx.AsyncClient]:
    """The wallet's API, its executor reaching the in-process gateway."""
    from wallet.execute import Executor

    payee_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=world["gateway"].app))
    app = create_app(world["service"], owner_token=OWNER_TOKEN, executor=Executor(world["service"], client=payee_client))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wallet.test") as client:
        yield client
    await payee_client.aclose()


async def test_the_wallet_makes_the_paid_call_for_an_agent(world, wallet_http):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service, hosts=["gateway.test"])
    answer = await wallet_http.post(
        "/v1/payments/execute",
        json={"url": f"{GATEWAY}/v1/sentiment", "method": "POST", "headers": {"content-type": "application/json"},
              "body": base64.b64encode(b'{"text": "good"}').decode()},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert answer.status_code == 200, answer.text
    call = answer.json()
    assert call["status"] == 200 and json.loads(base64.b64decode(call["body"]))["label"] == "positive"
    payment = await service.payment(call["paymentId"])
    assert payment.status is PaymentStatus.SETTLED and payment.agent_id == agent_id
    assert [m.payment_id for m in await world["gateway"].store.mandates()] == [call["paymentId"]]
    headers = {k.lower() for k, _ in call["headers"]}
    assert "payment-response" in headers and "transfer-encoding" not in headers


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://localhost:5432/", "http://gateway.test.evil/v1/forecast/x",
    "file:///etc/passwd", "http://user:pw@gateway.test/v1/forecast/x",
])
async def test_the_wallet_calls_only_hosts_its_owner_named(world, wallet_http, url):
    _agent, api_key = await funded_agent(world["service"], hosts=["gateway.test"])
    answer = await wallet_http.post("/v1/payments/execute", json={"url": url}, headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 403 and answer.json()["code"] == "host_not_allowed", answer.text
    assert sum(world["gateway"].handled.values()) == 0


async def test_execute_answers_a_denial_and_a_review_without_paying(world, wallet_http):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service, hosts=["gateway.test"])
    auth = {"Authorization": f"Bearer {api_key}"}
    await service.set_rules(Rules(daily_cap=FORECAST_PRICE - 1), agent_id=agent_id)
    denied = await wallet_http.post("/v1/payments/execute", json={"url": f"{GATEWAY}/v1/forecast/paris"}, headers=auth)
    assert denied.status_code == 403 and denied.json()["rule"] == "daily_cap", denied.text

    await service.set_rules(Rules(review_above=0), agent_id=agent_id)
    body = {"url": f"{GATEWAY}/v1/forecast/paris", "idempotencyKey": "call-1"}
    pending = await wallet_http.post("/v1/payments/execute", json=body, headers=auth)
    assert pending.status_code == 202 and pending.json()["rule"] == "review_above", pending.text
    assert await world["gateway"].store.mandates() == []
    # The owner approves; the agent repeats the call with its key and is served once.
    await service.approve_review(pending.json()["reviewId"])
    served = await wallet_http.post("/v1/payments/execute", json=body, headers=auth)
    assert served.status_code == 200 and served.json()["status"] == 200, served.text
    assert len(await world["gateway"].store.mandates()) == 1
    assert [p.status for p in await service.payments(agent_id=agent_id)] == [PaymentStatus.SETTLED]
