"""Interop with the official x402 Python SDK as the resource server: its ``HTTPFacilitatorClient``
talks to our facilitator served by uvicorn on loopback, ``x402ResourceServer.initialize()``
reads our ``/supported``, and a payment made by the SDK's own client verifies and settles on
the real MockUSDC. A v1 envelope does too."""

from __future__ import annotations

import pytest
from eth_account import Account
from facilitator_fixtures import NETWORK, PRICE, SERVED_FACILITATOR_KEY, TOKEN_NAME, TOKEN_VERSION, balance
from x402 import x402Client, x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme, ExactEvmServerScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import AssetAmount, PaymentPayload, PaymentRequirements, ResourceConfig, ResourceInfo
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from aep2.errors import ErrorCode

pytestmark = pytest.mark.chain


def sdk_client(account, token: str) -> x402Client:
    """The SDK's paying client, with MockUSDC on Anvil allowed (it is no default asset)."""
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), networks=NETWORK)
    client.set_spend_controls(
        {"allowed_assets": [{"network": NETWORK, "asset": token, "max_amount_per_payment": str(PRICE)}]}
    )
    return client


async def test_sdk_resource_server_verifies_and_settles_through_our_facilitator(
    served_facilitator, deployment, w3, payer, payee
):
    http = HTTPFacilitatorClient(FacilitatorConfig(url=served_facilitator.url))
    try:
        server = x402ResourceServer(http)
        server.register(NETWORK, ExactEvmServerScheme())
        server.initialize()  # GET /supported
        price = AssetAmount(
            amount=str(PRICE), asset=deployment.token, extra={"name": TOKEN_NAME, "version": TOKEN_VERSION}
        )
        (required,) = server.build_payment_requirements(
            ResourceConfig(scheme="exact", pay_to=payee, price=price, network=NETWORK)
        )
        challenge = await server.create_payment_required_response(
            [required], resource=ResourceInfo(url="http://example.test/forecast")
        )
        paid = await sdk_client(payer, deployment.token).create_payment_payload(challenge)
        payer_before = balance(w3, deployment.token, payer.address)

        verified = await server.verify_payment(paid, required)
        assert verified.is_valid, (verified.invalid_reason, verified.invalid_message)
        assert verified.payer == payer.address

        settled = await server.settle_payment(paid, required)
        assert settled.success, (settled.error_reason, settled.error_message)
        assert (settled.payer, settled.network) == (payer.address, NETWORK)
        receipt = w3.eth.get_transaction_receipt(settled.transaction)
        assert receipt["status"] == 1 and receipt["blockNumber"] <= w3.eth.block_number
        assert w3.eth.get_transaction(settled.transaction)["from"] == Account.from_key(SERVED_FACILITATOR_KEY).address
        assert balance(w3, deployment.token, payee) == PRICE
        assert payer_before - balance(w3, deployment.token, payer.address) == PRICE

        # The same payment again: verify refuses it, settle answers the same transaction.
        replay = await server.verify_payment(paid, required)
        assert (replay.is_valid, replay.invalid_reason) == (False, ErrorCode.AUTHORIZATION_USED)
        again = await http.settle(paid, required)
        assert again.success and again.transaction == settled.transaction
        assert balance(w3, deployment.token, payee) == PRICE
    finally:
        await http.aclose()


async def test_sdk_sees_refusals_with_their_codes(served_facilitator, deployment, w3, new_account, payee):
    poor = new_account(PRICE - 1, eth=False)
    required = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=deployment.token,
        amount=str(PRICE),
        pay_to=payee,
        max_timeout_seconds=300,
        extra={"name": TOKEN_NAME, "version": TOKEN_VERSION},
    )
    inner = ExactEvmClientScheme(EthAccountSigner(poor)).create_payment_payload(required)
    paid = PaymentPayload(x402_version=2, accepted=required, payload=inner)
    async with HTTPFacilitatorClient(FacilitatorConfig(url=served_facilitator.url)) as http:
        verdict = await http.verify(paid, required)
        settled = await http.settle(paid, required)
    assert (verdict.is_valid, verdict.invalid_reason) == (False, ErrorCode.INSUFFICIENT_FUNDS)
    assert verdict.payer == poor.address
    assert (settled.success, settled.error_reason, settled.transaction) == (False, ErrorCode.INSUFFICIENT_FUNDS, "")
    assert balance(w3, deployment.token, payee) == 0


async def test_v1_payment_verifies_and_settles(served_facilitator, deployment, w3, payer, payee):
    """v1 requirements (``maxAmountRequired``, inline resource) and the v1 envelope; Anvil has no
    v1 network name, so its CAIP-2 id stands in, as ``/supported`` announces."""
    supported = HTTPFacilitatorClient(FacilitatorConfig(url=served_facilitator.url)).get_supported()
    assert any(k.x402_version == 1 and k.network == NETWORK for k in supported.kinds)
    required_v1 = PaymentRequirementsV1(
        scheme="exact",
        network=NETWORK,
        max_amount_required=str(PRICE),
        resource="http://example.test/forecast",
        pay_to=payee,
        max_timeout_seconds=300,
        asset=deployment.token,
        extra={"name": TOKEN_NAME, "version": TOKEN_VERSION},
    )
    # The SDK's v1 client knows only legacy network names; its v2 scheme signs the same message.
    as_v2 = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=deployment.token,
        amount=str(PRICE),
        pay_to=payee,
        max_timeout_seconds=300,
        extra=required_v1.extra,
    )
    inner = ExactEvmClientScheme(EthAccountSigner(payer)).create_payment_payload(as_v2)
    paid = PaymentPayloadV1(scheme="exact", network=NETWORK, payload=inner)
    async with HTTPFacilitatorClient(FacilitatorConfig(url=served_facilitator.url)) as http:
        verdict = await http.verify(paid, required_v1)
        assert verdict.is_valid, (verdict.invalid_reason, verdict.invalid_message)
        settled = await http.settle(paid, required_v1)
    assert settled.success and settled.network == NETWORK, (settled.error_reason, settled.error_message)
    assert w3.eth.get_transaction_receipt(settled.transaction)["status"] == 1
    assert balance(w3, deployment.token, payee) == PRICE
