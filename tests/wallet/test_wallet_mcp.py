"""The co-wallet's MCP tools (``wallet.mcp``) driven by the ``mcp`` SDK's own client, over stdio
(``python -m wallet.mcp`` spawned) and over streamable HTTP (uvicorn on loopback).

The wallet is the real app on a real SQLite database and the payee the in-process gateway
harness, each served by uvicorn on loopback: ``pay`` makes the wallet reach the payee over
real HTTP, within an intent drafted through ``request_intent`` for ``hosts=["127.0.0.1"]`` and
approved by the owner over the wallet's API. Refusals come back as ``isError`` results naming
the policy rule, the review or the credential at fault.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from mcp import Client, StdioServerParameters
from test_wallet_remote import FAST_KDF, OWNER_TOKEN, funded_agent, new_service

from wallet import webhooks
from wallet.app import create_app
from wallet.cards import CardIssuer, luhn_valid
from wallet.db import Database
from wallet.execute import Executor
from wallet.keys import OwnerKeystore, Sealer
from wallet.mcp import create_server
from wallet.policy import Rules
from wallet.service import PaymentStatus, WalletService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_fixtures import FORECAST_PRICE, OFFLINE_DEPLOYMENT, PROCESSOR, SENTIMENT_PRICE, InProcessGateway, StaticChainReader  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"wallet_balance", "request_intent", "pay", "list_payments", "create_card"}


class LiveWallet:
    """The wallet app and the gateway, each on uvicorn on loopback, and an agent's API key."""

    def __init__(self, tmp_path: Path, serve: Callable[[Any], Any]) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'wallet.sqlite'}"
        keystore = tmp_path / "owner.json"
        sealer = Sealer(os.urandom(32))

        def service_on(db: Database) -> WalletService:
            return WalletService(db, owner=OwnerKeystore.load(keystore, "pw"), sealer=sealer,
                                 deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR,
                                 webhooks=webhooks.Webhooks(db, sealer=sealer))

        async def prepare() -> tuple[str, str]:
            OwnerKeystore.create(keystore, "pw", **FAST_KDF)
            async with Database(url) as db:
                await db.create()
                service = service_on(db)
                try:
                    await service.record_deposit(10**9)
                    return await service.add_agent("mcp-agent")
                finally:
                    await service.webhooks.aclose()

        self.agent_id, self.api_key = asyncio.run(prepare())
        self.db = Database(url)  # first used on uvicorn's loop
        self.service = service_on(self.db)
        self.wallet = serve(create_app(self.service, owner_token=OWNER_TOKEN, cards=CardIssuer(self.service)))
        self.gateway = InProcessGateway(OFFLINE_DEPLOYMENT, str(tmp_path / "gateway.sqlite"), reader=StaticChainReader())
        self.payee = serve(self.gateway.app)

    def owner(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """An owner call to the wallet's API; its JSON answer."""
        answer = httpx.request(method, self.wallet.url + path, json=body, headers={"Authorization": f"Bearer {OWNER_TOKEN}"})
        assert answer.status_code < 300, answer.text
        return answer.json()

    def close(self) -> None:
        self.wallet.stop()
        self.payee.stop()

        async def close() -> None:
            await self.service.webhooks.aclose()
            await self.db.aclose()

        asyncio.run(close())


@pytest.fixture
def live(tmp_path, serve) -> Iterator[LiveWallet]:
    world = LiveWallet(tmp_path, serve)
    yield world
    world.close()


async def agent_session(live: LiveWallet, client: Client) -> None:
    """What an agent does through the tools, checked step by step."""
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert tools == TOOLS

    drafted = await client.call_tool("request_intent", {
        "budget": 100_000, "purpose": "weather for the trip", "duration_seconds": 3600,
        "per_payment_cap": 5_000, "hosts": ["127.0.0.1"],
    })
    assert not drafted.is_error and drafted.structured_content["status"] == "pending_approval", drafted
    live.owner("POST", f"/v1/intents/{drafted.structured_content['id']}/approve")

    balance = (await client.call_tool("wallet_balance", {})).structured_content
    assert (balance["active"], balance["remaining"]) == (1, 100_000)

    forecast = await client.call_tool("pay", {"url": f"{live.payee.url}/v1/forecast/paris"})
    assert not forecast.is_error, forecast
    assert forecast.structured_content["status"] == 200
    assert json.loads(forecast.structured_content["body"])["city"] == "paris"
    sentiment = await client.call_tool("pay", {
        "url": f"{live.payee.url}/v1/sentiment", "method": "POST", "body": json.dumps({"text": "good"}),
        "headers": {"content-type": "application/json"}, "idempotency_key": "sentiment-1",
    })
    assert not sentiment.is_error, sentiment
    assert json.loads(sentiment.structured_content["body"])["label"] == "positive"

    payments = (await client.call_tool("list_payments", {})).structured_content["payments"]
    paid_ids = [forecast.structured_content["paymentId"], sentiment.structured_content["paymentId"]]
    assert [p["paymentId"] for p in payments] == paid_ids
    assert [(p["amount"], p["status"]) for p in payments] == [(FORECAST_PRICE, "settled"), (SENTIMENT_PRICE, "settled")]
    for payment_id in paid_ids:  # the gateway holds each mandate (its receipt route, over HTTP)
        assert httpx.get(f"{live.payee.url}/payments/{payment_id}").json()["status"] == "accepted"
    balance = (await client.call_tool("wallet_balance", {})).structured_content
    assert balance["remaining"] == 100_000 - FORECAST_PRICE - SENTIMENT_PRICE

    # The owner's policy decides; the tool error names the rule.
    live.owner("PUT", "/v1/rules", {"agentId": live.agent_id, "perTransactionCap": FORECAST_PRICE - 1})
    denied = await client.call_tool("pay", {"url": f"{live.payee.url}/v1/forecast/rome"})
    assert denied.is_error and denied.structured_content["code"] == "policy_denied"
    assert denied.structured_content["rule"] == "per_transaction_cap"
    assert denied.content[0].text.startswith("policy_denied (rule per_transaction_cap): ")
    elsewhere = await client.call_tool("pay", {"url": "http://169.254.169.254/latest/meta-data"})
    assert elsewhere.is_error and elsewhere.structured_content["code"] == "host_not_allowed"
    assert live.gateway.handled["/v1/forecast/rome"] == 0

    # A single-use card for a card merchant, under the same policy (its cap of 999 allows 900),
    # from an intent that names no hosts (a card pays no host: an intent limited to hosts cannot).
    for_cards = await client.call_tool("request_intent", {
        "budget": 10_000, "purpose": "shop purchases", "duration_seconds": 3600, "per_payment_cap": 5_000,
    })
    intent_id = for_cards.structured_content["id"]
    live.owner("POST", f"/v1/intents/{intent_id}/approve")
    card = await client.call_tool("create_card", {"intent_id": intent_id, "amount": 900, "merchant_id": "shop-1"})
    assert not card.is_error, card
    shown = card.structured_content
    assert luhn_valid(shown["number"]) and shown["number"].endswith(shown["card"]["last4"]) and len(shown["cvv"]) == 3
    too_big = await client.call_tool("create_card", {"intent_id": intent_id, "amount": FORECAST_PRICE})
    assert too_big.is_error and too_big.structured_content["rule"] == "per_transaction_cap"


def test_the_tools_over_stdio(live):
    """``python -m wallet.mcp`` spawned with the agent's key in its environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AEP2_WALLET_URL": live.wallet.url, "AEP2_WALLET_API_KEY": live.api_key}
    params = StdioServerParameters(command=sys.executable, args=["-m", "wallet.mcp"], env=env, cwd=str(ROOT))

    async def run() -> None:
        async with Client(params, read_timeout_seconds=60) as client:
            await agent_session(live, client)

    asyncio.run(run())


def test_the_tools_over_streamable_http(live, serve):
    server = serve(create_server(live.wallet.url, live.api_key).streamable_http_app())

    async def run() -> None:
        async with Client(f"{server.url}/mcp", read_timeout_seconds=60) as client:
            await agent_session(live, client)

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# In process: the wallet's answers that need the owner between two calls
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def world(wallet_db: Database, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The wallet app (its executor reaching the in-process gateway) and the gateway."""
    service = new_service(wallet_db, tmp_path)
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    payee_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app))
    app = create_app(service, owner_token=OWNER_TOKEN, executor=Executor(service, client=payee_client))
    yield {"service": service, "gateway": gateway, "app": app}
    await payee_client.aclose()
    await gateway.aclose()
    await service.webhooks.aclose()


def tools_for(world: dict[str, Any], api_key: str) -> Client:
    return Client(create_server("http://wallet.test", api_key, transport=httpx.ASGITransport(app=world["app"])))


async def test_a_wrong_api_key_is_an_unauthenticated_tool_error(world):
    async with tools_for(world, "aep2_nobody.secret") as client:
        result = await client.call_tool("wallet_balance", {})
    assert result.is_error and result.structured_content["code"] == "unauthenticated"


async def test_a_review_is_a_tool_error_and_the_same_call_is_served_once_approved(world):
    service: WalletService = world["service"]
    agent_id, api_key = await funded_agent(service, hosts=["gateway.test"])
    await service.set_rules(Rules(review_above=0), agent_id=agent_id)
    call = {"url": "http://gateway.test/v1/forecast/paris", "idempotency_key": "trip-1"}
    async with tools_for(world, api_key) as client:
        pending = await client.call_tool("pay", call)
        assert pending.is_error and pending.structured_content["code"] == "review_pending"
        assert pending.structured_content["rule"] == "review_above" and pending.structured_content["reviewId"]
        assert await world["gateway"].store.mandates() == []
        await service.approve_review(pending.structured_content["reviewId"])
        served = await client.call_tool("pay", call)
        again = await client.call_tool("pay", call)
    assert not served.is_error and served.structured_content["status"] == 200, served
    assert again.structured_content["paymentId"] == served.structured_content["paymentId"]
    assert [p.status for p in await service.payments(agent_id=agent_id)] == [PaymentStatus.SETTLED]


async def test_a_wallet_out_of_reach_is_wallet_unavailable() -> None:
    server = create_server("http://127.0.0.1:9", "aep2_key.secret", timeout=2)
    async with Client(server) as client:
        result = await client.call_tool("list_payments", {})
    assert result.is_error and result.structured_content["code"] == "wallet_unavailable"


async def test_the_payments_route_lists_only_the_calling_agents_payments(world):
    """``GET /v1/payments/mine`` (``list_payments``): another agent's payments stay hidden, and
    the owner token is refused there."""
    service: WalletService = world["service"]
    _agent, api_key = await funded_agent(service, hosts=["gateway.test"])
    _other, other_key = await funded_agent(service, hosts=["gateway.test"])
    async with tools_for(world, api_key) as client:
        paid = await client.call_tool("pay", {"url": "http://gateway.test/v1/forecast/paris"})
        mine = (await client.call_tool("list_payments", {})).structured_content["payments"]
    async with tools_for(world, other_key) as client:
        theirs = (await client.call_tool("list_payments", {})).structured_content["payments"]
    async with tools_for(world, OWNER_TOKEN) as client:
        owner = await client.call_tool("list_payments", {})
    assert [p["paymentId"] for p in mine] == [paid.structured_content["paymentId"]] and theirs == []
    assert owner.is_error and owner.structured_content["code"] == "unauthenticated"
