"""The facilitator's ``aep2`` kind on the real Anvil: ``verify`` answers the stateless and chain
checks with the gateway's codes, ``settle`` reserves the mandate once in the processor's store,
``Facilitators`` serves ``exact`` and ``aep2`` from one app, and the processor settles what the
facilitator accepted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from eth_account import Account
from facilitator_fixtures import (
    FACILITATOR_KEY,
    PRICE,
    PROCESSOR,
    PROCESSOR_KEY,
    SERVED_FACILITATOR_KEY,
    aep2_payer,
    aep2_requirements,
    authorization,
    balance,
    domain,
    payment,
    requirements,
    sign,
    sync_web3,
    v1_requirements,
)

from aep2.deployment import Deployment
from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode
from aep2.sqlite_store import SQLiteStore
from aep2.x402.models import PaymentPayloadV1
from facilitator import AEP2Facilitator, ExactEvmFacilitator, Facilitators, create_app, from_env
from settlement.chain import SettlementClient
from settlement.processor import SettlementProcessor
from settlement.prover import Prover

pytestmark = pytest.mark.chain


@pytest.fixture
async def store(store_path: str) -> AsyncIterator[SQLiteStore]:
    """The processor's store (a fresh file per test)."""
    opened = SQLiteStore(store_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def aep2(deployment: Deployment, store: SQLiteStore) -> AsyncIterator[AEP2Facilitator]:
    """The ``aep2`` facilitator of ``PROCESSOR`` over ``store``, in the test's event loop."""
    instance = AEP2Facilitator(deployment, store, PROCESSOR)
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def agent(make_payer: Callable[..., Any], deployment: Deployment) -> Any:
    """An agent of a payer with 1 000 000 base units escrowed with ``PROCESSOR`` and consent to it."""
    return aep2_payer(make_payer().account.key, deployment)


async def test_verify_accepts_a_valid_mandate_and_reserves_nothing(aep2, agent, deployment, payee, store):
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert answer.to_wire() == {"isValid": True, "payer": agent.address}
    assert await store.mandates() == []


async def test_verify_v1(aep2, agent, deployment, payee):
    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    v1 = PaymentPayloadV1(x402_version=1, scheme="aep2", network="eip155:31337", payload=paid.payload)
    answer = await aep2.verify(v1, v1_requirements(required))
    assert (answer.is_valid, answer.payer) == (True, agent.address)


@pytest.mark.parametrize(
    ("change", "code", "names"),
    [
        ({"payee": "0x" + "12" * 20}, ErrorCode.PAYEE_MISMATCH, "mandate.payee"),
        ({"amount": PRICE + 1}, ErrorCode.AMOUNT_MISMATCH, "mandate.amount"),
        ({"sign_key": SessionKey.generate()}, ErrorCode.INVALID_MANDATE_SIGNATURE, "signature"),
        ({"deadline": 1}, ErrorCode.MANDATE_EXPIRED, "mandate.deadline"),
        ({"include_intent": False}, ErrorCode.UNKNOWN_INTENT, "payload.intent"),
    ],
    ids=["wrong-payee", "amount-mismatch", "bad-signature", "expired", "unknown-intent"],
)
async def test_verify_refuses_a_bad_mandate(aep2, agent, deployment, payee, change, code, names):
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required, **change), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, code), answer
    assert names in (answer.invalid_message or "")


@pytest.mark.parametrize(
    ("intent_options", "code", "names"),
    [
        ({"processor": "0x" + "34" * 20}, ErrorCode.PROCESSOR_MISMATCH, "intent.processor"),
        ({"max_per_payment": PRICE - 1}, ErrorCode.PER_PAYMENT_CAP_EXCEEDED, "mandate.amount"),
        ({"payees": ("0x" + "56" * 20,)}, ErrorCode.PAYEE_NOT_ALLOWED, "intent.payees"),
        ({"valid_for_seconds": 60}, ErrorCode.INTENT_EXPIRED, "intent.validBefore"),
    ],
    ids=["other-processor", "over-cap", "not-allowlisted", "intent-too-short"],
)
async def test_verify_refuses_a_bad_intent(aep2, make_payer, deployment, payee, intent_options, code, names):
    agent = aep2_payer(make_payer().account.key, deployment, **intent_options)
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason, answer.payer) == (False, code, agent.address), answer
    assert names in (answer.invalid_message or "")


@pytest.mark.parametrize(
    ("change", "code", "names"),
    [
        ({"scheme": "exact"}, ErrorCode.UNSUPPORTED_SCHEME, "paymentRequirements.scheme"),
        ({"network": "eip155:8453"}, ErrorCode.NETWORK_MISMATCH, "paymentRequirements.network"),
        ({"asset": "0x" + "78" * 20}, ErrorCode.INVALID_PAYMENT_REQUIREMENTS, "paymentRequirements.asset"),
        ({"extra": {"processor": "0x" + "9a" * 20}}, ErrorCode.INVALID_PAYMENT_REQUIREMENTS, "extra.processor"),
    ],
    ids=["scheme", "network", "asset", "processor"],
)
async def test_verify_refuses_requirements_it_cannot_settle(aep2, agent, deployment, payee, change, code, names):
    required = aep2_requirements(deployment, payee, **change)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, code), answer
    assert names in (answer.invalid_message or "")


async def test_verify_refuses_a_revoked_intent(aep2, make_payer, deployment, payee):
    escrow = make_payer()
    agent = aep2_payer(escrow.account.key, deployment)
    escrow.revoke_intent(escrow.register_intent(agent.signed))
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, ErrorCode.INTENT_REVOKED), answer


async def test_verify_refuses_without_consent(aep2, make_payer, deployment, payee):
    escrow = make_payer()
    escrow.authorize_processor(PROCESSOR, allowed=False)  # consent withdrawn: lapses later, refused now
    agent = aep2_payer(escrow.account.key, deployment)
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, ErrorCode.PROCESSOR_NOT_AUTHORIZED), answer
    assert "withdrew consent" in (answer.invalid_message or "")


async def test_verify_refuses_insufficient_escrow(aep2, make_payer, deployment, payee):
    agent = aep2_payer(make_payer(escrow=PRICE - 1).account.key, deployment)
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, ErrorCode.INSUFFICIENT_ESCROW), answer
    assert PROCESSOR in (answer.invalid_message or "")


async def test_verify_counts_a_pending_withdrawal_as_gone(aep2, make_payer, deployment, payee):
    escrow = make_payer(escrow=2 * PRICE)
    escrow.request_withdrawal(PRICE + 1)
    agent = aep2_payer(escrow.account.key, deployment)
    required = aep2_requirements(deployment, payee)
    answer = await aep2.verify(agent.pay(required), required)
    assert (answer.is_valid, answer.invalid_reason) == (False, ErrorCode.INSUFFICIENT_ESCROW), answer
    assert f"pending withdrawal {PRICE + 1}" in (answer.invalid_message or "")


async def test_settle_reserves_the_mandate_as_accepted(aep2, agent, deployment, payee, store):
    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    answer = await aep2.settle(paid, required)
    [record] = await store.mandates()
    assert answer.to_wire() == {
        "success": True,
        "transaction": "",
        "network": deployment.network,
        "payer": agent.address,
        "amount": str(PRICE),
        "extra": {"paymentId": record.payment_id, "scheme": "aep2", "status": "accepted"},
    }
    assert (record.status, record.payer, record.asset, record.mandate.amount) == (
        "accepted", agent.address, deployment.token, PRICE
    )
    assert (record.mandate.payee, record.mandate.intent_id) == (payee.lower(), agent.signed.intent.intent_id)
    # The processor settles from the store: the intent is there for it.
    assert await store.get_intent(agent.signed.intent.intent_id) == agent.signed


async def test_settle_twice_is_refused_nonce_used(aep2, agent, deployment, payee, store):
    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    assert (await aep2.settle(paid, required)).success
    again = await aep2.settle(paid, required)
    assert (again.success, again.error_reason, again.payer) == (False, ErrorCode.NONCE_USED, agent.address)
    assert (await aep2.verify(paid, required)).invalid_reason == ErrorCode.NONCE_USED
    assert len(await store.mandates()) == 1


async def test_settle_reservation_is_atomic_under_concurrency(aep2, agent, deployment, payee, store):
    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    answers = await asyncio.gather(*(aep2.settle(paid, required) for _ in range(5)))
    assert sorted(a.error_reason or "ok" for a in answers) == ["nonce_used"] * 4 + ["ok"]
    assert len(await store.mandates()) == 1


async def test_settle_enforces_the_budget_the_store_keeps(aep2, make_payer, deployment, payee):
    """``verify`` cannot know what is committed; the reservation does."""
    agent = aep2_payer(make_payer().account.key, deployment, max_amount=PRICE + PRICE // 2)
    required = aep2_requirements(deployment, payee)
    assert (await aep2.settle(agent.pay(required), required)).success
    second = agent.pay(required)
    assert (await aep2.verify(second, required)).is_valid
    answer = await aep2.settle(second, required)
    assert (answer.success, answer.error_reason) == (False, ErrorCode.BUDGET_EXCEEDED)


async def test_intent_may_be_left_out_once_the_store_knows_it(aep2, agent, deployment, payee, store):
    required = aep2_requirements(deployment, payee)
    assert (await aep2.settle(agent.pay(required), required)).success
    # A fresh facilitator (no memory of the intent) finds it in the processor's store.
    fresh = AEP2Facilitator(deployment, store, PROCESSOR)
    try:
        answer = await fresh.settle(agent.pay(required, include_intent=False), required)
    finally:
        await fresh.aclose()
    assert (answer.success, answer.payer) == (True, agent.address)


async def test_chain_failure_is_an_unexpected_error_not_an_exception(deployment, store, agent, payee):
    offline = AEP2Facilitator(deployment, store, PROCESSOR, rpc_url="http://127.0.0.1:9", rpc_timeout=1)
    try:
        required = aep2_requirements(deployment, payee)
        verified = await offline.verify(agent.pay(required), required)
        settled = await offline.settle(agent.pay(required), required)
    finally:
        await offline.aclose()
    assert verified.invalid_reason == ErrorCode.UNEXPECTED_VERIFY_ERROR
    assert settled.error_reason == ErrorCode.UNEXPECTED_SETTLE_ERROR
    assert await store.mandates() == []


# ---------------------------------------------------------------------------- one app, two kinds


@pytest.fixture
async def both(facilitator: ExactEvmFacilitator, aep2: AEP2Facilitator) -> Facilitators:
    """``exact`` and ``aep2`` behind one ``Facilitators`` (members closed by their fixtures)."""
    return Facilitators([facilitator, aep2])


async def test_facilitators_dispatch_by_scheme(both, agent, deployment, payee, payer):
    aep2_required = aep2_requirements(deployment, payee)
    assert (await both.verify(agent.pay(aep2_required), aep2_required)).is_valid
    exact_required = requirements(deployment.token, payee)
    exact_paid = payment(exact_required, sign(payer, domain(deployment.token), authorization(payer.address, payee)))
    assert (await both.verify(exact_paid, exact_required)).to_wire() == {"isValid": True, "payer": payer.address}

    unknown = aep2_requirements(deployment, payee, scheme="upto")
    refused = await both.verify(agent.pay(unknown), unknown)
    assert (refused.is_valid, refused.invalid_reason) == (False, ErrorCode.UNSUPPORTED_SCHEME)
    assert "'upto'" in (refused.invalid_message or "")
    not_settled = await both.settle(agent.pay(unknown), unknown)
    assert (not_settled.success, not_settled.error_reason) == (False, ErrorCode.UNSUPPORTED_SCHEME)


async def test_facilitators_merge_supported(both, deployment):
    answer = (await both.supported()).to_wire()
    extra = {"settlement": deployment.settlement, "processor": PROCESSOR, "minDeadlineSeconds": 300}
    assert answer["kinds"] == [
        {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"},
        {"x402Version": 1, "scheme": "exact", "network": "eip155:31337"},
        {"x402Version": 2, "scheme": "aep2", "network": "eip155:31337", "extra": extra},
        {"x402Version": 1, "scheme": "aep2", "network": "eip155:31337", "extra": extra},
    ]
    assert answer["signers"] == {"eip155:*": [Account.from_key(FACILITATOR_KEY).address], "eip155:31337": [PROCESSOR]}


def test_facilitators_refuse_two_members_for_one_scheme(deployment):
    one, two = (ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY) for _ in range(2))
    with pytest.raises(ValueError, match="'exact'"):
        Facilitators([one, two])
    with pytest.raises(ValueError):
        Facilitators([])


def _body(paid: Any, required: Any) -> dict[str, Any]:
    return {"x402Version": 2, "paymentPayload": paid.to_wire(), "paymentRequirements": required.to_wire()}


def test_one_app_serves_both_kinds_over_http(serve, deployment, store_path, agent, payee):
    # The served members live in uvicorn's event loop: the store is opened there, on first use.
    served = Facilitators(
        [
            ExactEvmFacilitator(deployment.rpc_url, SERVED_FACILITATOR_KEY),
            AEP2Facilitator(deployment, SQLiteStore(store_path), PROCESSOR, close_store=True),
        ]
    )
    server = serve(create_app(served))
    kinds = httpx.get(server.url + "/supported").json()["kinds"]
    assert {(k["x402Version"], k["scheme"]) for k in kinds} == {(2, "exact"), (1, "exact"), (2, "aep2"), (1, "aep2")}

    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    verified = httpx.post(server.url + "/verify", json=_body(paid, required))
    assert (verified.status_code, verified.json()) == (200, {"isValid": True, "payer": agent.address})
    settled = httpx.post(server.url + "/settle", json=_body(paid, required)).json()
    assert (settled["success"], settled["transaction"], settled["extra"]["status"]) == (True, "", "accepted")
    again = httpx.post(server.url + "/settle", json=_body(paid, required)).json()
    assert (again["success"], again["errorReason"]) == (False, ErrorCode.NONCE_USED)


def test_from_env_serves_aep2_with_the_processor_store(anvil, deployment, store_path, tmp_path, serve):
    env = {"FACILITATOR_RPC_URL": anvil.rpc_url, "FACILITATOR_PRIVATE_KEY": SERVED_FACILITATOR_KEY}
    with pytest.raises(RuntimeError, match="FACILITATOR_STORE and FACILITATOR_PROCESSOR"):
        from_env(env | {"FACILITATOR_DEPLOYMENT": "deployment.json"})
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    env |= {
        "FACILITATOR_DEPLOYMENT": str(deployment_file),
        "FACILITATOR_STORE": store_path,
        "FACILITATOR_PROCESSOR": PROCESSOR,
    }
    answer = httpx.get(serve(from_env(env)).url + "/supported").json()
    assert [k["scheme"] for k in answer["kinds"]] == ["exact", "exact", "aep2", "aep2"]
    assert answer["kinds"][2]["extra"]["processor"] == PROCESSOR


# ---------------------------------------------------------------------------- end to end


@pytest.mark.circuit
async def test_processor_settles_what_the_facilitator_accepted(
    aep2, agent, deployment, payee, store_path, small_artifacts, anvil
):
    required = aep2_requirements(deployment, payee)
    paid = agent.pay(required)
    accepted = await aep2.settle(paid, required)
    assert accepted.success
    payment_id = accepted.extra["paymentId"]

    # The processor, another process in production, over the same store file.
    processor_store = SQLiteStore(store_path)
    await processor_store.open()
    client = SettlementClient(deployment.rpc_url, deployment.settlement, PROCESSOR_KEY, backoff=0.2)
    try:
        processor = SettlementProcessor(processor_store, client, Prover(small_artifacts), deployment.token)
        [result] = await processor.settle_all()
        record = await processor_store.get_mandate(payment_id)
    finally:
        await client.aclose()
        await processor_store.close()
    assert result.mandates == 1
    assert (record.status, record.tx_hash) == ("settled", result.tx_hash)
    assert balance(sync_web3(anvil.rpc_url), deployment.token, payee) == PRICE

    # Settled on chain: the nonce bitmap now refuses it, whatever the store says.
    answer = await aep2.verify(paid, required)
    assert (answer.is_valid, answer.invalid_reason) == (False, ErrorCode.NONCE_USED)
    assert "settled on chain" in (answer.invalid_message or "")
