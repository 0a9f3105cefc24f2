"""``exact`` as the x402 spec says, with the official x402 Python SDK as client, on a real Anvil:
the transfer is mined before the client sees the 200, and every refusal happens before the
handler runs, with the spec's error code and nothing moved.

The negative tests run the gateway in-process (``InProcessGateway``, which counts the
requests that reached a handler) with our facilitator in-process on the real node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from typing import Any, AsyncIterator

import httpx
import pytest
import requests
from eth_account.messages import encode_typed_data
from gateway_fixtures import FACILITATOR_KEY, FORECAST_PRICE, PAYEE, PROCESSOR, InProcessGateway, error_code, open_store
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from web3 import Web3
from x402 import x402Client, x402ClientSync
from x402.http.clients.httpx import x402AsyncTransport, x402HttpxClient
from x402.http.clients.requests import wrapRequestsWithPayment
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements
from x402.schemas.responses import SettleResponse

from aep2.deployment import contract_artifact
from aep2.eip3009 import TokenDomain, cancel_authorization_typed_data
from aep2.errors import ErrorCode
from aep2.sqlite_store import SQLiteStore
from aep2.x402 import PAYMENT_REQUIRED_HEADER, decode_header, encode_header
from facilitator import ExactEvmFacilitator, create_app
from gateway.chain import ChainCache, Web3ChainReader
from gateway.config import GatewayConfig
from gateway.facilitator_client import HTTPFacilitatorClient
from gateway.middleware import PaymentMiddleware
from gateway.pricing import PricedRoute

pytestmark = pytest.mark.chain

NETWORK = "eip155:31337"
PATH = "/v1/forecast/paris"


def official_client(account: Any, token: str, *, sync: bool = False) -> Any:
    """The SDK's client with the exact EVM scheme for Anvil and MockUSDC allowed (not a default asset)."""
    client = x402ClientSync() if sync else x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), networks=NETWORK)
    client.set_spend_controls(
        {"allowed_assets": [{"network": NETWORK, "asset": token, "max_amount_per_payment": str(FORECAST_PRICE)}]}
    )
    return client


def token_balance(deployment: Any, owner: str) -> int:
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    token = w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])
    return int(token.functions.balanceOf(owner).call())


def receipt_of(response: httpx.Response | requests.Response, header: str = "PAYMENT-RESPONSE") -> dict[str, Any]:
    return json.loads(base64.b64decode(response.headers[header]))


def mined(deployment: Any, tx_hash: str) -> bool:
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    return w3.eth.get_transaction_receipt(tx_hash)["status"] == 1


def signed_header(challenge: httpx.Response, account: Any, *, extensions: Any = None, **accepted_changes: Any) -> str:
    required = PaymentRequired.model_validate(decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER]))
    exact: PaymentRequirements = next(a for a in required.accepts if a.scheme == "exact")
    signing = exact.model_copy(update=accepted_changes)
    inner = ExactEvmScheme(EthAccountSigner(account)).create_payment_payload(signing)
    envelope = PaymentPayload(accepted=signing, payload=inner, extensions=extensions)
    return encode_header(envelope.model_dump(by_alias=True, exclude_none=True))


@contextlib.asynccontextmanager
async def one_route_gateway(deployment: Any, store_path: str, handler: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``handler`` served at ``PATH`` behind the gateway, priced ``FORECAST_PRICE``,
    ``exact`` settled by our facilitator in-process."""
    config = GatewayConfig.from_deployment(deployment, PAYEE, processor=PROCESSOR)
    store = SQLiteStore(store_path)
    chain = ChainCache(Web3ChainReader(deployment.rpc_url, deployment.settlement))
    facilitator = ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY)
    middleware = Middleware(
        PaymentMiddleware,
        config=config,
        routes=[PricedRoute("GET", PATH, FORECAST_PRICE)],
        store=store,
        chain=chain,
        facilitator=facilitator,
    )
    app = Starlette(routes=[Route(PATH, handler)], middleware=[middleware])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as http:
            yield http
    finally:
        await facilitator.aclose()
        await chain.aclose()
        await store.close()


@pytest.fixture
async def gateway(deployment, store_path):
    """The example routes in-process with our facilitator in-process on the real node."""
    gateway = InProcessGateway(deployment, store_path, facilitator=ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY))
    yield gateway
    await gateway.aclose()


async def test_official_httpx_client_pays_exact_mined_before_the_answer(gateway_server, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    payee_before = token_balance(deployment, PAYEE)
    seen: list[int] = []

    async def balance_when_answered(response: httpx.Response) -> None:
        # Runs as soon as the status line arrives, before the client reads the body.
        if response.status_code == 200:
            seen.append(token_balance(deployment, PAYEE))

    client = official_client(payer.account, deployment.token)
    async with x402HttpxClient(client, event_hooks={"response": [balance_when_answered]}) as http:
        response = await http.get(gateway_server.url + PATH)
    assert response.status_code == 200, response.text
    assert response.json()["city"] == "paris"
    assert seen == [payee_before + FORECAST_PRICE]
    receipt = receipt_of(response)
    model = SettleResponse.model_validate(receipt)
    assert model.success and model.payer == payer.address and model.network == NETWORK
    assert model.transaction.startswith("0x") and mined(deployment, model.transaction)
    # Our fields travel in `extra`, where the SDK keeps them.
    assert model.extra is not None and model.extra["scheme"] == "exact" and model.extra["status"] == "settled"
    assert response.headers["cache-control"] == "private"
    assert "PAYMENT-SIGNATURE" in response.headers["vary"]
    status = httpx.get(f"{gateway_server.url}/payments/{model.extra['paymentId']}").json()
    assert (status["status"], status["transaction"]) == ("settled", model.transaction)


def test_official_requests_client_pays_exact(gateway_server, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    payee_before = token_balance(deployment, PAYEE)
    session = wrapRequestsWithPayment(requests.Session(), official_client(payer.account, deployment.token, sync=True))
    response = session.get(gateway_server.url + PATH, timeout=60)
    assert response.status_code == 200, response.text
    receipt = receipt_of(response)
    assert receipt["success"] and mined(deployment, receipt["transaction"])
    assert token_balance(deployment, PAYEE) == payee_before + FORECAST_PRICE


async def test_replay_of_a_settled_authorization_is_refused(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account)
        assert (await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})).status_code == 200
        balance = token_balance(deployment, PAYEE)
        replay = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert error_code(replay) == ErrorCode.AUTHORIZATION_USED
    assert gateway.handled[PATH] == 1 and token_balance(deployment, PAYEE) == balance


async def test_cancelled_authorization_is_refused_before_the_handler(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account)
        cancel(deployment, payer.account, decode_header(header)["payload"]["authorization"]["nonce"])
        response = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert error_code(response) in (ErrorCode.AUTHORIZATION_USED, ErrorCode.EXACT_SIMULATION_FAILED)
    assert gateway.handled[PATH] == 0 and token_balance(deployment, payer.address) == 10_000


async def test_insufficient_balance_is_refused_before_the_handler(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=FORECAST_PRICE - 1)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account)
        response = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert error_code(response) == ErrorCode.INSUFFICIENT_FUNDS
    assert gateway.handled[PATH] == 0
    async with open_store(gateway.store.path) as store:
        assert await store.exact_payments() == []


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"extra": {"name": "USD Coin", "version": "1"}}, ErrorCode.INVALID_EXACT_SIGNATURE),
        ({"extra": {"name": "Fake Coin", "version": "2"}}, ErrorCode.INVALID_EXACT_SIGNATURE),
        ({"network": "eip155:1"}, ErrorCode.NETWORK_MISMATCH),
    ],
    ids=["wrong-domain-version", "wrong-domain-name", "wrong-network"],
)
async def test_wrong_domain_or_network_is_refused_before_the_handler(gateway, make_payer, deployment, changes, code):
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account, **changes)
        response = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert error_code(response) == code
    assert gateway.handled[PATH] == 0 and token_balance(deployment, payer.address) == 10_000


async def test_paid_head_is_not_charged(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account)
        head = await http.head(PATH, headers={"PAYMENT-SIGNATURE": header})
        assert head.status_code == 402 and head.headers["cache-control"] == "no-store"
        assert token_balance(deployment, payer.address) == 10_000
        # The authorization was not used: the GET it was made for still pays with it.
        assert (await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})).status_code == 200
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


async def test_handler_answering_500_settles_nothing(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get("/v1/broken"), payer.account)
        broken = await http.get("/v1/broken", headers={"PAYMENT-SIGNATURE": header})
        assert broken.status_code == 500 and "PAYMENT-RESPONSE" not in broken.headers
        assert gateway.handled["/v1/broken"] == 1
        assert token_balance(deployment, payer.address) == 10_000
        # Released: the same authorization (same payee and price) still pays for a served call.
        assert (await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})).status_code == 200
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


async def test_payment_identifier_retry_is_answered_once_and_charged_once(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    identifier = {"payment-identifier": {"info": {"required": False, "id": "pay_" + secrets.token_hex(16)}}}
    async with gateway.client() as http:
        challenge = await http.get(PATH)
        quoted = decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER])
        assert quoted["extensions"]["payment-identifier"]["info"] == {"required": False}
        header = signed_header(challenge, payer.account, extensions=identifier)
        first = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
        retry = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
        # The same identifier with another payment is a conflict, never a second operation.
        other = signed_header(challenge, payer.account, extensions=identifier)
        conflict = await http.get(PATH, headers={"PAYMENT-SIGNATURE": other})
    assert first.status_code == retry.status_code == 200
    assert retry.content == first.content and retry.headers["payment-response"] == first.headers["payment-response"]
    assert conflict.status_code == 409
    assert gateway.handled[PATH] == 1
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


async def test_payer_cancelling_while_served_gets_no_content(deployment, make_payer, store_path):
    """A hostile payer cancels its authorization on chain while the handler runs: settlement
    fails, so the response is withheld and a 402 with a failure ``PAYMENT-RESPONSE`` sent."""
    payer = make_payer(escrow=0, wallet=10_000)
    nonces: list[str] = []

    async def secret(request: Request) -> JSONResponse:
        cancel(deployment, payer.account, nonces[0])
        return JSONResponse({"secret": "the paid content"})

    async with one_route_gateway(deployment, store_path, secret) as http:
        header = signed_header(await http.get(PATH), payer.account)
        nonces.append(decode_header(header)["payload"]["authorization"]["nonce"])
        response = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert response.status_code == 402 and b"paid content" not in response.content
    failure = receipt_of(response)
    assert failure["success"] is False and failure["errorReason"] and failure["transaction"] == ""
    assert token_balance(deployment, payer.address) == 10_000


async def test_gateway_settles_through_a_facilitator_by_url(deployment, make_payer, store_path, serve):
    """Our facilitator as its own ASGI app; the gateway only knows its URL."""
    served = serve(create_app(ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY)))
    gateway = InProcessGateway(deployment, store_path, facilitator=HTTPFacilitatorClient(served.url))
    payer = make_payer(escrow=0, wallet=10_000)
    try:
        transport = x402AsyncTransport(
            official_client(payer.account, deployment.token), transport=httpx.ASGITransport(app=gateway.app)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            response = await http.get(PATH)
    finally:
        await gateway.aclose()
    assert response.status_code == 200, response.text
    receipt = receipt_of(response)
    assert receipt["success"] and mined(deployment, receipt["transaction"])
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


def cancel(deployment: Any, account: Any, nonce: str) -> None:
    """``cancelAuthorization`` of ``nonce`` by ``account`` on chain (EIP-3009)."""
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    token = w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])
    typed = cancel_authorization_typed_data(
        TokenDomain("USD Coin", "2", deployment.chain_id, deployment.token), account.address, bytes.fromhex(nonce[2:])
    )
    signature = account.sign_message(encode_typed_data(full_message=typed)).signature
    call = token.functions.cancelAuthorization(account.address, bytes.fromhex(nonce[2:]), bytes(signature))
    tx = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address), "chainId": deployment.chain_id}
    )
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1


class LosesTheFirstAnswer:
    """Our facilitator, but the first ``settle`` answer is lost after the transfer was mined
    (a timeout between facilitator and gateway): the gateway cannot know the outcome."""

    def __init__(self, inner: ExactEvmFacilitator) -> None:
        self.inner = inner
        self.lost = 0

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        outcome = await self.inner.settle(payload, requirements)
        if not self.lost:
            self.lost += 1
            raise httpx.ReadTimeout("the facilitator's answer was lost")
        return outcome

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_retry_after_a_lost_settlement_answer_is_served_and_charged_once(deployment, make_payer, store_path):
    payer = make_payer(escrow=0, wallet=10_000)
    flaky = LosesTheFirstAnswer(ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY))
    gateway = InProcessGateway(deployment, store_path, facilitator=flaky)
    try:
        async with gateway.client() as http:
            header = signed_header(await http.get(PATH), payer.account)
            first = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
            # The transfer is mined, but the gateway could not know: no content, a failure receipt.
            assert first.status_code == 402 and "days" not in first.json()
            assert receipt_of(first)["errorReason"] == ErrorCode.UNEXPECTED_SETTLE_ERROR
            assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE
            # The client retries the very same payment: served, with the one transaction.
            retry = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
            assert retry.status_code == 200 and retry.json()["city"] == "paris"
            settled = receipt_of(retry)
            assert settled["success"] and mined(deployment, settled["transaction"])
            # Once settled, the same payment is a replay.
            again = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
            assert error_code(again) == ErrorCode.AUTHORIZATION_USED
    finally:
        await gateway.aclose()
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE
    async with open_store(store_path) as store:
        (record,) = await store.exact_payments()
    assert (record.status, record.tx_hash) == ("settled", settled["transaction"])


async def test_the_same_authorization_raced_is_served_and_charged_once(gateway, make_payer, deployment):
    """A hostile payer sends one authorization on several requests at once: the facilitator
    says each is valid (none is settled yet), but only one request may be served."""
    payer = make_payer(escrow=0, wallet=10_000)
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account)
        responses = await asyncio.gather(*(http.get(PATH, headers={"PAYMENT-SIGNATURE": header}) for _ in range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 402, 402, 402], statuses
    assert {error_code(r) for r in responses if r.status_code != 200} == {ErrorCode.AUTHORIZATION_USED}
    assert gateway.handled[PATH] == 1
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


async def test_payment_identifier_raced_is_charged_once(gateway, make_payer, deployment):
    payer = make_payer(escrow=0, wallet=10_000)
    identifier = {"payment-identifier": {"info": {"required": False, "id": "pay_" + secrets.token_hex(16)}}}
    async with gateway.client() as http:
        header = signed_header(await http.get(PATH), payer.account, extensions=identifier)
        responses = await asyncio.gather(*(http.get(PATH, headers={"PAYMENT-SIGNATURE": header}) for _ in range(3)))
        # However the race went, a retry now gets the one paid response.
        again = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    served = [r for r in responses if r.status_code == 200]
    assert served and all(r.status_code in (200, 409) for r in responses)
    assert again.status_code == 200 and again.content == served[0].content
    assert {r.headers["payment-response"] for r in [*served, again]} == {served[0].headers["payment-response"]}
    assert gateway.handled[PATH] == 1
    assert token_balance(deployment, payer.address) == 10_000 - FORECAST_PRICE


async def test_a_paid_answer_the_app_marks_public_is_made_private(deployment, make_payer, store_path):
    """A shared cache must never hand one payer's paid content to an unpaid client."""
    payer = make_payer(escrow=0, wallet=10_000)

    async def cacheable(request: Request) -> JSONResponse:
        return JSONResponse({"report": "paid"}, headers={"Cache-Control": "public, max-age=600", "Vary": "Accept"})

    async with one_route_gateway(deployment, store_path, cacheable) as http:
        header = signed_header(await http.get(PATH), payer.account)
        response = await http.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "max-age=600, private"
    assert response.headers["vary"] == "Accept, PAYMENT-SIGNATURE, X-PAYMENT"
