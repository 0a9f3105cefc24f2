"""Paid MCP tools (``gateway.mcp.PaidTools``) on a real Anvil node, over the ``mcp`` SDK's client
(in process, and over streamable HTTP on loopback).

``exact`` is paid with the official x402 SDK's MCP client (``x402.mcp.x402MCPClient``) and
settled on chain by our facilitator before the result leaves; ``aep2`` is paid with our
``payer.mcp.MCPToolPayer`` and reserved in the store, then settled by the processor.
Attacks: a replayed payment, a payment for another tool, other arguments or another price,
and malformed ``_meta`` are each refused with their code, and the tool never runs for them.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest
from eth_account import Account
from gateway_fixtures import FACILITATOR_KEY, FORECAST_PRICE, PAYEE, PROCESSOR, SENTIMENT_PRICE
from mcp import Client
from mcp.server.mcpserver import MCPServer
from test_gateway_x402_interop import NETWORK, mined, official_client, token_balance
from x402.mcp import x402MCPClient
from x402.schemas import PaymentRequired

from aep2.errors import ErrorCode
from aep2.sqlite_store import SQLiteStore
from aep2.x402.mcp import PAYMENT_META_KEY, PAYMENT_RESPONSE_META_KEY, tool_call_binding
from facilitator import ExactEvmFacilitator
from gateway.chain import Web3ChainReader
from gateway.config import GatewayConfig
from gateway.mcp import PaidTools
from payer import AEP2Auth, PayerState, PaymentRefused, create_intent, create_session_key
from payer.mcp import MCPToolPayer, payment_required_of
from settlement.chain import SettlementClient
from settlement.processor import SettlementProcessor
from settlement.prover import Prover

pytestmark = pytest.mark.chain


class PaidServer:
    """An MCP server with three priced tools (``forecast``, ``sentiment``, ``broken``, which
    always fails) and a free one (``health``) behind ``PaidTools``; ``handled`` counts the
    calls that reached a tool."""

    def __init__(self, deployment: Any, store_path: str, *, exact: bool = True) -> None:
        self.config = GatewayConfig.from_deployment(deployment, PAYEE, processor=PROCESSOR)
        self.store = SQLiteStore(store_path)
        self.facilitator = ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY) if exact else None
        self.gate = PaidTools(
            config=self.config,
            store=self.store,
            chain=Web3ChainReader(deployment.rpc_url, deployment.settlement),
            prices={"forecast": FORECAST_PRICE, "sentiment": SENTIMENT_PRICE, "broken": FORECAST_PRICE},
            facilitator=self.facilitator,
            descriptions={"forecast": "Tomorrow's weather for a city"},
        )
        self.handled: list[str] = []
        self.server: MCPServer = MCPServer("paid-weather", extensions=[self.gate])

        @self.server.tool()
        def forecast(city: str) -> dict[str, Any]:
            self.handled.append("forecast")
            return {"city": city, "forecast": "sunny"}

        @self.server.tool()
        def sentiment(text: str) -> dict[str, Any]:
            self.handled.append("sentiment")
            return {"label": "positive" if "good" in text else "neutral"}

        @self.server.tool()
        def broken() -> str:
            self.handled.append("broken")
            raise RuntimeError("the tool failed")

        @self.server.tool()
        def health() -> str:
            return "ok"

    async def aclose(self) -> None:
        if self.facilitator is not None:
            await self.facilitator.aclose()
        await self.gate.chain.aclose()
        await self.store.close()


class Recording:
    """An ``mcp.Client`` that keeps the ``_meta`` of every call, to replay payments from."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.metas: list[dict[str, Any] | None] = []

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None, **options: Any) -> Any:
        self.metas.append(options.get("meta"))
        return await self.client.call_tool(name, arguments, **options)


class X402SdkAdapter:
    """The ``mcp_client`` x402 2.25's ``x402MCPClient`` expects, over mcp 2.3's ``Client``.

    x402's MCP client was written against the 1.x SDK: it calls ``call_tool({name, arguments,
    _meta}, read_timeout_seconds=timedelta)`` and reads ``isError``, ``structuredContent``,
    ``_meta`` and content items as dicts. mcp 2.x names these ``is_error``,
    ``structured_content``, ``meta`` and returns models; this adapter only renames.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    async def call_tool(self, params: dict[str, Any], read_timeout_seconds: timedelta | None = None) -> Any:
        timeout = None if read_timeout_seconds is None else read_timeout_seconds.total_seconds()
        result = await self.client.call_tool(
            params["name"], params.get("arguments"), read_timeout_seconds=timeout, meta=params.get("_meta")
        )
        return SimpleNamespace(
            content=[item.model_dump(by_alias=True, exclude_none=True) for item in result.content],
            isError=result.is_error,
            _meta=dict(result.meta or {}),
            structuredContent=result.structured_content,
        )


@pytest.fixture
async def paid(deployment, store_path) -> AsyncIterator[PaidServer]:
    server = PaidServer(deployment, store_path)
    yield server
    await server.aclose()


@contextlib.asynccontextmanager
async def connected(paid: PaidServer) -> AsyncIterator[Recording]:
    async with Client(paid.server) as client:
        yield Recording(client)


def aep2_auth(payer: Any, deployment: Any, **intent: Any) -> AEP2Auth:
    key = create_session_key()
    signed = create_intent(
        payer.account.key, session_key=key, asset=deployment.token, max_amount=100_000, max_per_payment=5_000,
        valid_for_seconds=3600, chain_id=deployment.chain_id, settlement=deployment.settlement, processor=PROCESSOR,
        **intent,
    )
    return AEP2Auth(signed, key, PayerState())


def refusal_code(result: Any) -> str:
    """The code of a payment-required result, checking both places the spec puts it."""
    required = payment_required_of(result)
    assert required is not None, result
    assert json.loads(result.content[0].text) == result.structured_content
    return str(required["error"]).partition(": ")[0]


async def signed_envelope(auth: AEP2Auth, client: Recording, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An ``aep2`` payment for ``name(**arguments)``, signed from a real payment-required answer."""
    challenge = payment_required_of(await client.call_tool(name, arguments))
    assert challenge is not None
    requirement = auth.select(challenge["accepts"], source="structuredContent")
    binding = tool_call_binding(name, arguments)
    _mandate, envelope = auth.sign(
        requirement, challenge["resource"], method=binding.method, path_and_query=binding.path_and_query, body=binding.body
    )
    return envelope


# ---------------------------------------------------------------------------------------------
# The wire
# ---------------------------------------------------------------------------------------------


async def test_an_unpaid_call_is_a_payment_required_error_and_the_tool_does_not_run(paid):
    async with connected(paid) as client:
        result = await client.call_tool("forecast", {"city": "paris"})
        free = await client.call_tool("health", {})
    assert result.is_error and refusal_code(result) == ErrorCode.PAYMENT_REQUIRED
    required = result.structured_content
    assert required["x402Version"] == 2 and required["resource"]["url"] == "mcp://tool/forecast"
    assert [(a["scheme"], a["amount"], a["payTo"]) for a in required["accepts"]] == [
        ("exact", str(FORECAST_PRICE), PAYEE), ("aep2", str(FORECAST_PRICE), PAYEE)
    ]
    assert required["accepts"][1]["extra"]["processor"] == PROCESSOR
    assert not free.is_error and paid.handled == []


# ---------------------------------------------------------------------------------------------
# exact, with the official x402 SDK's MCP client
# ---------------------------------------------------------------------------------------------


async def test_the_official_x402_mcp_client_pays_exact_and_the_payee_is_paid_on_chain(paid, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    before = token_balance(deployment, PAYEE)
    async with Client(paid.server) as client:
        x402_mcp = x402MCPClient(X402SdkAdapter(client), official_client(payer.account, deployment.token))
        result = await x402_mcp.call_tool("forecast", {"city": "paris"})
    assert result.payment_made and not result.is_error, result
    assert json.loads(result.content[0]["text"]) == {"city": "paris", "forecast": "sunny"}
    receipt = result.payment_response
    assert receipt.success and receipt.payer == payer.address and receipt.network == NETWORK
    assert mined(deployment, receipt.transaction)
    assert receipt.extra["scheme"] == "exact" and receipt.extra["status"] == "settled"
    assert token_balance(deployment, PAYEE) == before + FORECAST_PRICE
    assert paid.handled == ["forecast"]


async def exact_meta(client: Recording, payer: Any, deployment: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``_meta`` with an ``exact`` payment the official SDK signs for ``name``'s challenge."""
    challenge = PaymentRequired.model_validate((await client.call_tool(name, arguments)).structured_content)
    payload = await official_client(payer.account, deployment.token).create_payment_payload(challenge)
    return {PAYMENT_META_KEY: payload.model_dump(by_alias=True, exclude_none=True)}


async def test_a_replayed_exact_payment_is_refused_and_nothing_moves(paid, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with connected(paid) as client:
        meta = await exact_meta(client, payer, deployment, "forecast", {"city": "paris"})
        assert not (await client.call_tool("forecast", {"city": "paris"}, meta=meta)).is_error
        balance = token_balance(deployment, PAYEE)
        replay = await client.call_tool("forecast", {"city": "paris"}, meta=meta)
    assert refusal_code(replay) == ErrorCode.AUTHORIZATION_USED
    assert token_balance(deployment, PAYEE) == balance and paid.handled == ["forecast"]


async def test_an_exact_payment_for_a_cheaper_tool_is_an_amount_mismatch(paid, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with connected(paid) as client:
        meta = await exact_meta(client, payer, deployment, "forecast", {"city": "paris"})
        result = await client.call_tool("sentiment", {"text": "good"}, meta=meta)
    assert refusal_code(result) == ErrorCode.AMOUNT_MISMATCH
    assert paid.handled == [] and token_balance(deployment, payer.address) == 10_000


# ---------------------------------------------------------------------------------------------
# aep2, with our payer
# ---------------------------------------------------------------------------------------------


async def test_our_payer_pays_aep2_and_the_mandate_is_reserved_in_the_store(paid, make_payer, deployment):
    payer = make_payer(escrow=100_000)
    auth = aep2_auth(payer, deployment)
    async with connected(paid) as client:
        tools = MCPToolPayer(client, auth)
        first = await tools.call_tool("forecast", {"city": "paris"})
        second = await tools.call_tool("sentiment", {"text": "good"})
        free = await tools.call_tool("health")
    assert not first.is_error and first.structured_content == {"city": "paris", "forecast": "sunny"}
    assert not second.is_error and not free.is_error
    receipt = first.meta[PAYMENT_RESPONSE_META_KEY]
    assert receipt["success"] and receipt["extra"]["status"] == "accepted" and receipt["transaction"] == ""
    mandates = await paid.store.mandates()
    assert [m.payment_id for m in mandates] == [r["paymentId"] for r in auth.receipts]
    assert [m.mandate.amount for m in mandates] == [FORECAST_PRICE, SENTIMENT_PRICE]
    assert auth.spent == FORECAST_PRICE + SENTIMENT_PRICE
    assert paid.handled == ["forecast", "sentiment"]
    assert [m is None for m in client.metas] == [True, False, True, False, True]  # one payment per paid call


async def test_a_replayed_mandate_is_refused_as_nonce_used(paid, make_payer, deployment):
    auth = aep2_auth(make_payer(escrow=100_000), deployment)
    async with connected(paid) as client:
        await MCPToolPayer(client, auth).call_tool("forecast", {"city": "paris"})
        replay = await client.call_tool("forecast", {"city": "paris"}, meta=client.metas[-1])
    assert refusal_code(replay) == ErrorCode.NONCE_USED
    assert paid.handled == ["forecast"] and len(await paid.store.mandates()) == 1


@pytest.mark.parametrize(
    ("name", "arguments", "code"),
    [
        ("forecast", {"city": "rome"}, ErrorCode.REQUEST_MISMATCH),  # other arguments
        ("broken", {}, ErrorCode.REQUEST_MISMATCH),  # another tool at the same price
        ("sentiment", {"text": "good"}, ErrorCode.AMOUNT_MISMATCH),  # another price
    ],
)
async def test_a_mandate_for_another_call_is_refused(paid, make_payer, deployment, name, arguments, code):
    auth = aep2_auth(make_payer(escrow=100_000), deployment)
    async with connected(paid) as client:
        envelope = await signed_envelope(auth, client, "forecast", {"city": "paris"})
        result = await client.call_tool(name, arguments, meta={PAYMENT_META_KEY: envelope})
    assert refusal_code(result) == code
    assert paid.handled == [] and await paid.store.mandates() == []


async def test_a_failing_tool_charges_nothing_and_the_payer_gets_its_budget_back(paid, make_payer, deployment):
    auth = aep2_auth(make_payer(escrow=100_000), deployment)
    async with connected(paid) as client:
        result = await MCPToolPayer(client, auth).call_tool("broken")
    assert result.is_error and payment_required_of(result) is None and "Error executing tool broken" in result.content[0].text
    assert paid.handled == ["broken"] and await paid.store.mandates() == []
    assert auth.spent == 0 and auth.remaining == 100_000


async def test_a_refused_mandate_raises_payment_refused_with_the_code(paid, make_payer, deployment):
    payer = make_payer(escrow=FORECAST_PRICE - 1)
    auth = aep2_auth(payer, deployment)
    async with connected(paid) as client:
        with pytest.raises(PaymentRefused) as refused:
            await MCPToolPayer(client, auth).call_tool("forecast", {"city": "paris"})
    assert refused.value.code == ErrorCode.INSUFFICIENT_ESCROW and "processor" in refused.value.reason
    assert paid.handled == [] and auth.remaining == 100_000


# ---------------------------------------------------------------------------------------------
# Malformed _meta
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payment", "code"),
    [
        ("eyJ4NDAyVmVyc2lvbiI6Mn0=", ErrorCode.INVALID_PAYLOAD),  # a header value, not an object
        ([1, 2], ErrorCode.INVALID_PAYLOAD),
        ({"x402Version": 1, "scheme": "aep2", "network": "eip155:31337", "payload": {}}, ErrorCode.UNSUPPORTED_VERSION),
        ({"x402Version": 2, "payload": {}}, ErrorCode.INVALID_PAYLOAD),  # no `accepted`
        ({"x402Version": True}, ErrorCode.UNSUPPORTED_VERSION),
    ],
)
async def test_a_malformed_payment_in_meta_is_refused_with_its_code(paid, payment, code):
    async with connected(paid) as client:
        result = await client.call_tool("forecast", {"city": "paris"}, meta={PAYMENT_META_KEY: payment})
    assert refusal_code(result) == code and paid.handled == []


async def test_a_payment_for_another_scheme_network_or_payee_is_refused(paid, make_payer, deployment):
    auth = aep2_auth(make_payer(escrow=100_000), deployment)
    async with connected(paid) as client:
        envelope = await signed_envelope(auth, client, "forecast", {"city": "paris"})
        cases = {
            ErrorCode.UNSUPPORTED_SCHEME: {**envelope["accepted"], "scheme": "upto"},
            ErrorCode.NETWORK_MISMATCH: {**envelope["accepted"], "network": "eip155:8453"},
            ErrorCode.PAYEE_MISMATCH: {**envelope["accepted"], "payTo": Account.create().address},
        }
        codes = {}
        for expected, accepted in cases.items():
            result = await client.call_tool("forecast", {"city": "paris"}, meta={PAYMENT_META_KEY: {**envelope, "accepted": accepted}})
            codes[expected] = refusal_code(result)
    assert codes == {code: code for code in cases}
    assert paid.handled == [] and await paid.store.mandates() == []


# ---------------------------------------------------------------------------------------------
# End to end: paid over streamable HTTP, settled on chain by the processor
# ---------------------------------------------------------------------------------------------


async def test_our_payer_pays_over_streamable_http(deployment, make_payer, tmp_path, serve):
    """The paid server on uvicorn on loopback, its store on uvicorn's loop: the receipts and the
    gateway's own count say what was paid."""
    paid = PaidServer(deployment, str(tmp_path / "http.sqlite"), exact=False)
    live = serve(paid.server.streamable_http_app())
    auth = aep2_auth(make_payer(escrow=100_000), deployment)
    async with Client(f"{live.url}/mcp", read_timeout_seconds=60) as client:
        tools = MCPToolPayer(client, auth)
        results = [await tools.call_tool("forecast", {"city": city}) for city in ("paris", "rome")]
    assert [r.is_error for r in results] == [False, False]
    assert [r.meta[PAYMENT_RESPONSE_META_KEY]["success"] for r in results] == [True, True]
    assert auth.spent == 2 * FORECAST_PRICE and len({r["paymentId"] for r in auth.receipts}) == 2
    assert paid.handled == ["forecast", "forecast"]


@pytest.mark.circuit
async def test_aep2_tool_payments_settle_on_chain(paid, make_payer, deployment, small_artifacts, processor_key):
    payer = make_payer(escrow=100_000)
    auth = aep2_auth(payer, deployment)
    payee_before = token_balance(deployment, PAYEE)
    async with connected(paid) as client:
        tools = MCPToolPayer(client, auth)
        await tools.call_tool("forecast", {"city": "paris"})
        await tools.call_tool("sentiment", {"text": "good"})
    chain = SettlementClient(deployment.rpc_url, deployment.settlement, processor_key)
    try:
        results = await SettlementProcessor(paid.store, chain, Prover(small_artifacts), deployment.token).settle_all()
        assert sum(r.mandates for r in results) == 2
        assert [m.status for m in await paid.store.mandates()] == ["settled", "settled"]
    finally:
        await chain.aclose()
    assert token_balance(deployment, PAYEE) - payee_before == FORECAST_PRICE + SENTIMENT_PRICE
    assert payer.balance() == 100_000 - FORECAST_PRICE - SENTIMENT_PRICE
