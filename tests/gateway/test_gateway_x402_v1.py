"""A v1-only x402 client pays ``exact`` on a chain that has a v1 network name.

The official SDK's v1 client knows EVM chains by name only (``base-sepolia``, …), so this runs
an Anvil with Base Sepolia's chain id (84532), deploys MockUSDC on it and puts the gateway in
front of a route. The client sees the 402 without the v2 header (as a v1 resource server
sends it), reads the v1 body, pays with ``X-PAYMENT`` and gets ``X-PAYMENT-RESPONSE``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import httpx
import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from gateway_fixtures import FACILITATOR_KEY, PAYEE, PROCESSOR
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner

from aep2.deployment import contract_artifact
from aep2.sqlite_store import SQLiteStore
from aep2.x402.models import PaymentRequirements, ResourceInfo
from facilitator import ExactEvmFacilitator
from gateway.chain import ChainCache, Web3ChainReader
from gateway.config import GatewayConfig
from gateway.middleware import PaymentMiddleware
from gateway.pricing import PricedRoute
from gateway.quote import Quote
from settlement.devchain import Anvil, anvil_key, mint

pytestmark = pytest.mark.chain

BASE_SEPOLIA = 84532
PRICE = 1_000


@pytest.fixture(scope="module")
def named_chain() -> Iterator[tuple[Anvil, str]]:
    """An Anvil with Base Sepolia's chain id and MockUSDC deployed on it: ``(node, token)``."""
    with Anvil(chain_id=BASE_SEPOLIA) as node:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url))
        artifact = contract_artifact("MockUSDC")
        deployer = Account.from_key(anvil_key(0))
        tx = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"]).constructor().build_transaction(
            {"from": deployer.address, "nonce": w3.eth.get_transaction_count(deployer.address), "chainId": BASE_SEPOLIA}
        )
        receipt = w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
        )
        yield node, receipt["contractAddress"]


class V1Only(httpx.AsyncBaseTransport):
    """Drops the v2 ``PAYMENT-REQUIRED`` header from 402s: what a v1 client gets from a v1 server."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if response.status_code == 402:
            await response.aread()
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"payment-required"]
            return httpx.Response(402, headers=headers, content=response.content)
        return response


async def test_sdk_v1_client_pays_exact_on_a_named_network(named_chain: tuple[Anvil, str], tmp_path: Any) -> None:
    node, token = named_chain
    payer = Account.create()
    w3 = Web3(Web3.HTTPProvider(node.rpc_url))
    mint(node.rpc_url, token, payer.address, 10_000)
    token_contract = w3.eth.contract(address=token, abi=contract_artifact("MockUSDC")["abi"])

    config = GatewayConfig(
        chain_id=BASE_SEPOLIA,
        payee=PAYEE,
        asset=token,
        settlement=to_checksum_address("0x" + "5e" * 20),  # aep2 is not paid in this test
        processor=PROCESSOR,
    )
    store = SQLiteStore(str(tmp_path / "v1.sqlite"))
    chain = ChainCache(Web3ChainReader(node.rpc_url, config.settlement))
    facilitator = ExactEvmFacilitator(node.rpc_url, FACILITATOR_KEY)

    async def report(request: Any) -> JSONResponse:
        return JSONResponse({"report": "paid"})

    app = Starlette(
        routes=[Route("/report", report)],
        middleware=[
            Middleware(
                PaymentMiddleware,
                config=config,
                routes=[PricedRoute("GET", "/report", PRICE, "A report")],
                store=store,
                chain=chain,
                facilitator=facilitator,
            )
        ],
    )
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(payer), networks=f"eip155:{BASE_SEPOLIA}")
    client.set_spend_controls(
        {"allowed_assets": [{"network": "base-sepolia", "asset": token, "max_amount_per_payment": str(PRICE)}]}
    )
    transport = V1Only(httpx.ASGITransport(app=app))
    try:
        async with httpx.AsyncClient(
            transport=x402AsyncTransport(client, transport=transport), base_url="http://gateway.test"
        ) as http:
            response = await http.get("/report")
    finally:
        await facilitator.aclose()
        await chain.aclose()
        await store.close()

    assert response.status_code == 200, response.text
    challenge, paid = transport.sent
    envelope = json.loads(base64.b64decode(paid.headers["X-PAYMENT"]))
    assert (envelope["x402Version"], envelope["scheme"], envelope["network"]) == (1, "exact", "base-sepolia")
    assert "PAYMENT-RESPONSE" not in response.headers
    receipt = json.loads(base64.b64decode(response.headers["X-PAYMENT-RESPONSE"]))
    assert receipt["success"] and receipt["network"] == "base-sepolia"
    assert w3.eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
    assert token_contract.functions.balanceOf(PAYEE).call() == PRICE
    assert token_contract.functions.balanceOf(payer.address).call() == 10_000 - PRICE


def test_v1_body_names_the_network_and_v2_keeps_caip2() -> None:
    requirement = PaymentRequirements(
        scheme="exact",
        network=f"eip155:{BASE_SEPOLIA}",
        asset=PAYEE,
        amount="1",
        pay_to=PAYEE,
        max_timeout_seconds=60,
    )
    quote = Quote([requirement], ResourceInfo(url="http://x/report"), BASE_SEPOLIA)
    assert quote.v1_body(None).to_wire()["accepts"][0]["network"] == "base-sepolia"
    assert quote.payment_required(None).to_wire()["accepts"][0]["network"] == "eip155:84532"
