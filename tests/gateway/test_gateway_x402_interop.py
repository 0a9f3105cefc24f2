"""Interop with the official x402 Python SDK: its httpx client pays our gateway's ``exact`` offer
(EIP-3009 on MockUSDC, real Anvil), the gateway settles it as its own facilitator, the payee is
paid on chain. A replayed authorization is refused; the v1 ``X-PAYMENT`` envelope works too."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from eth_account import Account
from gateway_fixtures import FORECAST_PRICE, PAYEE, error_code, open_store
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport, x402HttpxClient
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements
from x402.schemas.responses import SettleResponse
from x402.schemas.v1 import PaymentPayloadV1

from aep2.deployment import contract_artifact
from aep2.errors import ErrorCode
from aep2.x402 import encode_header
from gateway.facilitator import ExactFacilitator
from settlement.devchain import anvil_key

pytestmark = pytest.mark.chain

NETWORK = "eip155:31337"
PATH = "/v1/forecast/paris"


def official_client(account, token: str) -> x402Client:
    """The SDK's client with the exact EVM scheme for Anvil and MockUSDC allowed (not a default asset)."""
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), networks=NETWORK)
    client.set_spend_controls(
        {"allowed_assets": [{"network": NETWORK, "asset": token, "max_amount_per_payment": str(FORECAST_PRICE)}]}
    )
    return client


class Recording(httpx.AsyncBaseTransport):
    """Records what the SDK sends, for replaying it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def token_balance(deployment, owner: str) -> int:
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    token = w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])
    return int(token.functions.balanceOf(owner).call())


async def test_official_client_pays_exact_and_facilitator_settles(gateway_server, make_payer, deployment, store_path):
    payer = make_payer(escrow=0, wallet=10_000)
    recording = Recording()
    transport = x402AsyncTransport(official_client(payer.account, deployment.token), transport=recording)
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get(gateway_server.url + PATH)
    assert response.status_code == 200, response.text
    assert response.json()["city"] == "paris"
    challenge, paid = recording.requests
    assert "PAYMENT-SIGNATURE" not in challenge.headers
    sent = PaymentPayload.model_validate(json.loads(base64.b64decode(paid.headers["PAYMENT-SIGNATURE"])))
    assert sent.accepted.scheme == "exact" and sent.accepted.network == NETWORK
    receipt = SettleResponse.model_validate(json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"])))
    assert receipt.success and receipt.payer == payer.address and receipt.network == NETWORK
    payment_id = json.loads(base64.b64decode(response.headers["PAYMENT-RESPONSE"]))["paymentId"]
    assert payment_id == sent.payload["authorization"]["nonce"].lower()

    status = httpx.get(f"{gateway_server.url}/payments/{payment_id}").json()
    assert (status["status"], status["scheme"], status["amount"]) == ("accepted", "exact", str(FORECAST_PRICE))

    payee_before = token_balance(deployment, PAYEE)
    payer_before = token_balance(deployment, payer.address)
    async with open_store(store_path) as store:
        facilitator = ExactFacilitator(store, deployment.rpc_url, anvil_key(5))
        try:
            assert await facilitator.settle_pending() == 1
            assert await facilitator.settle_pending() == 0  # nothing settles twice
        finally:
            await facilitator.aclose()
        (record,) = await store.exact_payments()
    assert token_balance(deployment, PAYEE) - payee_before == FORECAST_PRICE
    assert payer_before - token_balance(deployment, payer.address) == FORECAST_PRICE
    assert record.status == "settled" and record.tx_hash and record.tx_hash.startswith("0x")
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    assert w3.eth.get_transaction_receipt(record.tx_hash)["status"] == 1
    status = httpx.get(f"{gateway_server.url}/payments/{payment_id}").json()
    assert status["status"] == "settled" and status["transaction"] == record.tx_hash

    # The same signed authorization sent again is refused, before and after settlement alike.
    replay = httpx.get(gateway_server.url + PATH, headers={"PAYMENT-SIGNATURE": paid.headers["PAYMENT-SIGNATURE"]})
    assert error_code(replay) == ErrorCode.AUTHORIZATION_USED


async def test_replayed_authorization_before_settlement(gateway_server, make_payer, deployment, store_path):
    payer = make_payer(escrow=0, wallet=10_000)
    recording = Recording()
    transport = x402AsyncTransport(official_client(payer.account, deployment.token), transport=recording)
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(gateway_server.url + PATH)).status_code == 200
    header = recording.requests[-1].headers["PAYMENT-SIGNATURE"]
    replay = httpx.get(gateway_server.url + PATH, headers={"PAYMENT-SIGNATURE": header})
    assert error_code(replay) == ErrorCode.AUTHORIZATION_USED
    async with open_store(store_path) as store:
        assert len(await store.exact_payments()) == 1


async def test_exact_payment_without_funds_is_refused(gateway_server, make_payer, deployment, store_path):
    payer = make_payer(escrow=0, wallet=FORECAST_PRICE - 1)
    async with x402HttpxClient(official_client(payer.account, deployment.token)) as http:
        response = await http.get(gateway_server.url + PATH)
    assert error_code(response) == ErrorCode.INSUFFICIENT_FUNDS
    async with open_store(store_path) as store:
        assert await store.exact_payments() == []


async def test_v1_x_payment_exact(gateway_server, make_payer, deployment, store_path):
    """The SDK's v1 client only knows legacy network names (no Anvil), so the authorization is
    signed by its v2 exact scheme and sent in the v1 envelope the SDK's v1 model describes."""
    payer = make_payer(escrow=0, wallet=10_000)
    challenge = httpx.get(gateway_server.url + PATH)
    required = PaymentRequired.model_validate(json.loads(base64.b64decode(challenge.headers["PAYMENT-REQUIRED"])))
    exact: PaymentRequirements = next(a for a in required.accepts if a.scheme == "exact")
    inner = ExactEvmScheme(EthAccountSigner(payer.account)).create_payment_payload(exact)
    envelope = PaymentPayloadV1(scheme="exact", network=NETWORK, payload=inner).model_dump(by_alias=True)
    assert envelope["x402Version"] == 1
    response = httpx.get(gateway_server.url + PATH, headers={"X-PAYMENT": encode_header(envelope)})
    assert response.status_code == 200, response.text
    assert "PAYMENT-RESPONSE" not in response.headers
    receipt = SettleResponse.model_validate(json.loads(base64.b64decode(response.headers["X-PAYMENT-RESPONSE"])))
    assert receipt.success and receipt.payer == payer.address
    payee_before = token_balance(deployment, PAYEE)
    async with open_store(store_path) as store:
        facilitator = ExactFacilitator(store, deployment.rpc_url, anvil_key(5))
        try:
            assert await facilitator.settle_pending() == 1
        finally:
            await facilitator.aclose()
    assert token_balance(deployment, PAYEE) - payee_before == FORECAST_PRICE


async def test_exact_signed_by_someone_else(gateway_server, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    challenge = httpx.get(gateway_server.url + PATH)
    required = PaymentRequired.model_validate(json.loads(base64.b64decode(challenge.headers["PAYMENT-REQUIRED"])))
    exact = next(a for a in required.accepts if a.scheme == "exact")
    inner = ExactEvmScheme(EthAccountSigner(Account.create())).create_payment_payload(exact)
    inner["authorization"]["from"] = payer.address  # claims the funded payer, signed by a stranger
    envelope = PaymentPayload(accepted=exact, payload=inner).model_dump(by_alias=True, exclude_none=True)
    response = httpx.get(gateway_server.url + PATH, headers={"PAYMENT-SIGNATURE": encode_header(envelope)})
    assert error_code(response) == ErrorCode.INVALID_EXACT_SIGNATURE
