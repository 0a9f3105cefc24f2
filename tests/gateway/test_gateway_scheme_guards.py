"""A served payment is a paid payment: the ``aep2`` scheme refuses, before the handler runs and
before anything is reserved, every payment the processor could not settle — an intent naming
another processor, a payer whose consent to our processor is missing or withdrawn, a revoked
intent, a nonce already settled on chain, escrow a pending withdrawal takes away — and refuses
out-of-range intent fields as ``invalid_payload``.

In-process (``httpx.ASGITransport``) on a ``StaticChainReader``: no node, so every chain state
is set exactly. ``test_gateway_chain_attacks.py`` plays the same attacks on a real chain.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from eth_account import Account
from gateway_fixtures import (
    FORECAST_PRICE,
    OFFLINE_DEPLOYMENT,
    PROCESSOR,
    InProcessGateway,
    MandateSigner,
    StaticChainReader,
    error_code,
    signer_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aep2.errors import ErrorCode
from aep2.x402 import encode_header
from gateway.chain import CONSENT_NOT_WITHDRAWN, IntentState

PATH = "/v1/forecast/paris"
ASSET = OFFLINE_DEPLOYMENT.token


@pytest.fixture
async def gateway():
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    yield gateway
    await gateway.aclose()


@pytest.fixture
def owner():
    return Account.create()


@pytest.fixture
def signer(owner) -> MandateSigner:
    return signer_for(owner, OFFLINE_DEPLOYMENT)


async def pay(gateway: InProcessGateway, signer: MandateSigner, path: str = PATH, **options) -> object:
    async with gateway.client() as client:
        return await client.get(path, headers={"PAYMENT-SIGNATURE": signer.header("GET", path, **options)})


async def assert_refused(gateway: InProcessGateway, response, code: str, *, served: int = 0) -> str:
    """``response`` is a 402 with ``code``; only ``served`` requests reached the handler and the
    store holds exactly their mandates. Returns the wire error."""
    assert error_code(response) == code
    assert sum(gateway.handled.values()) == served
    assert len(await gateway.store.mandates()) == served
    return response.json()["error"]


async def test_a_payment_the_processor_can_settle_is_served(gateway, signer):
    """The baseline the refusals below differ from by one chain fact: an unregistered intent
    (registrable: the processor registers it when it settles) of a funded, consenting payer."""
    response = await pay(gateway, signer)
    assert response.status_code == 200 and gateway.handled[PATH] == 1
    reader = gateway.reader
    assert reader.reads == {"intent_state": 1, "escrow_state": 1, "settled_nonces": 1}
    # Later payments of the same intent, payer and nonce window read from memory.
    assert (await pay(gateway, signer, "/v1/forecast/rome")).status_code == 200
    assert reader.reads == {"intent_state": 1, "escrow_state": 1, "settled_nonces": 1}


async def test_intent_naming_another_processor(gateway, owner):
    signer = signer_for(owner, OFFLINE_DEPLOYMENT, processor=Account.create().address)
    error = await assert_refused(gateway, await pay(gateway, signer), ErrorCode.PROCESSOR_MISMATCH)
    assert error.startswith("processor_mismatch: intent.processor") and PROCESSOR in error
    assert gateway.reader.reads == {}  # refused before any chain read


@pytest.mark.parametrize(
    "consent_until, says",
    [(0, "has not authorised"), (int(time.time()) + 3600, "withdrew consent")],
    ids=["never-given", "withdrawn-still-lapsing"],
)
async def test_consent_not_current(gateway, owner, signer, consent_until, says):
    gateway.reader.set_escrow(owner.address, ASSET, consent_until=consent_until)
    error = await assert_refused(gateway, await pay(gateway, signer), ErrorCode.PROCESSOR_NOT_AUTHORIZED)
    assert says in error and PROCESSOR in error and owner.address in error


async def test_consent_to_another_processor_does_not_count(gateway, owner, signer):
    gateway.reader.set_escrow(owner.address, ASSET, consent_until=0)
    gateway.reader.set_escrow(owner.address, ASSET, Account.create().address)  # consents to someone else
    await assert_refused(gateway, await pay(gateway, signer), ErrorCode.PROCESSOR_NOT_AUTHORIZED)


async def test_consent_withdrawn_after_payments_then_given_again(gateway, owner, signer):
    assert (await pay(gateway, signer)).status_code == 200
    gateway.reader.set_escrow(owner.address, ASSET, consent_until=int(time.time()) + 3600)
    await gateway.chain.refresh()
    response = await pay(gateway, signer, "/v1/forecast/rome")
    await assert_refused(gateway, response, ErrorCode.PROCESSOR_NOT_AUTHORIZED, served=1)
    gateway.reader.set_escrow(owner.address, ASSET, consent_until=CONSENT_NOT_WITHDRAWN)
    await gateway.chain.refresh()
    assert (await pay(gateway, signer, "/v1/forecast/oslo")).status_code == 200


async def test_revoked_intent(gateway, signer):
    gateway.reader.intents[signer.intent_id] = IntentState(True, 1_700_000_000, 1)
    error = await assert_refused(gateway, await pay(gateway, signer), ErrorCode.INTENT_REVOKED)
    assert "1700000000" in error


async def test_intent_revoked_after_payments(gateway, signer):
    assert (await pay(gateway, signer)).status_code == 200
    gateway.reader.intents[signer.intent_id] = IntentState(True, 1_700_000_000, 2)
    await gateway.chain.refresh()
    await assert_refused(gateway, await pay(gateway, signer, "/v1/forecast/rome"), ErrorCode.INTENT_REVOKED, served=1)


async def test_registered_intent_is_fine(gateway, signer):
    gateway.reader.intents[signer.intent_id] = IntentState(True, 0, 1)
    assert (await pay(gateway, signer)).status_code == 200


async def test_nonce_settled_on_chain(gateway, signer):
    """Bit ``n % 128`` of window ``n >> 7``: only that nonce is refused, in any order."""
    gateway.reader.settled[(signer.intent_id, 0)] = 1 << 3
    error = await assert_refused(gateway, await pay(gateway, signer, nonce=3), ErrorCode.NONCE_USED)
    assert "mandate.nonce: 3 already settled on chain" in error
    assert (await pay(gateway, signer, "/v1/forecast/a", nonce=4)).status_code == 200
    assert (await pay(gateway, signer, "/v1/forecast/b", nonce=2)).status_code == 200
    assert (await pay(gateway, signer, "/v1/forecast/c", nonce=128 + 3)).status_code == 200  # window 1
    assert sorted(m.mandate.nonce for m in await gateway.store.mandates()) == [2, 4, 131]


async def test_pending_withdrawal_is_not_reserved_against(gateway, owner, signer):
    """Escrow available = balance − pending withdrawal: refused when it is below outstanding + price."""
    gateway.reader.set_escrow(owner.address, ASSET, balance=FORECAST_PRICE * 5, pending_withdrawal=FORECAST_PRICE * 3)
    assert (await pay(gateway, signer, "/v1/forecast/a")).status_code == 200
    assert (await pay(gateway, signer, "/v1/forecast/b")).status_code == 200
    error = await assert_refused(
        gateway, await pay(gateway, signer, "/v1/forecast/c"), ErrorCode.INSUFFICIENT_ESCROW, served=2
    )
    assert f"pending withdrawal {FORECAST_PRICE * 3}" in error


async def test_withdrawal_above_the_balance_leaves_nothing(gateway, owner, signer):
    gateway.reader.set_escrow(owner.address, ASSET, balance=FORECAST_PRICE * 5, pending_withdrawal=FORECAST_PRICE * 9)
    await assert_refused(gateway, await pay(gateway, signer), ErrorCode.INSUFFICIENT_ESCROW)


async def test_chain_unreachable_on_first_sight(gateway, signer):
    gateway.reader.fail = True
    await assert_refused(gateway, await pay(gateway, signer), ErrorCode.CHAIN_UNAVAILABLE)


def envelope_with(signer: MandateSigner, **intent_fields: object) -> str:
    envelope = json.loads(base64.b64decode(signer.header("GET", PATH)))
    envelope["payload"]["intent"].update(intent_fields)
    return encode_header(envelope)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(chain_id=st.one_of(st.just(2**256), st.integers(min_value=2**256, max_value=2**300)))
async def test_chain_id_of_256_bits_or_more_is_invalid_payload(gateway, signer, chain_id):
    """An EIP-712 ``uint256`` cannot hold it: ``invalid_payload`` naming the field, never
    ``chain_unavailable`` (what an exception escaping the digest used to become)."""
    async with gateway.client() as client:
        response = await client.get(PATH, headers={"PAYMENT-SIGNATURE": envelope_with(signer, chainId=str(chain_id))})
    error = await assert_refused(gateway, response, ErrorCode.INVALID_PAYLOAD)
    assert error.startswith("invalid_payload: payload.") and "chainId" in error
    assert gateway.reader.reads == {}


async def test_zero_address_in_the_payee_allowlist_is_invalid_payload(gateway, signer):
    async with gateway.client() as client:
        header = envelope_with(signer, payees=["0x" + "00" * 20])
        response = await client.get(PATH, headers={"PAYMENT-SIGNATURE": header})
    error = await assert_refused(gateway, response, ErrorCode.INVALID_PAYLOAD)
    assert "payees" in error
