"""Attacks on "a served payment is a paid payment", on a real chain (Anvil, the deployed
Settlement contract): a payer who would keep the processor from settling what the gateway
serves — by naming another processor, de-authorising ours, revoking the intent, withdrawing
the escrow, or replaying a nonce that is already settled — is refused with a precise 402
before the handler runs, and nothing is reserved.

Escrow is held per (payer, token, processor): the gateway reserves against the payer's account
with its own processor only, so funds escrowed with another processor — withdrawn, or spent
through that processor's settlements — neither pay for nor reduce what this gateway serves.

The gateway runs in-process (``InProcessGateway``: the example routes, a real
``Web3ChainReader``) so a test can force its chain cache to refresh (``chain.refresh()``)
instead of sleeping through the background interval, and count the handler's calls.
"""

from __future__ import annotations

import time

import httpx
import pytest
from eth_account import Account
from gateway_fixtures import (
    FORECAST_PRICE,
    PROCESSOR,
    InProcessGateway,
    MandateSigner,
    error_code,
    make_intent,
    open_store,
    signer_for,
)
from web3 import Web3

from aep2.deployment import Deployment
from aep2.errors import ErrorCode
from gateway.chain import CONSENT_NOT_WITHDRAWN, Web3ChainReader
from payer import AEP2Auth, Escrow, PayerState, PaymentRefused, create_session_key
from settlement.devchain import mint

pytestmark = pytest.mark.chain

PATH = "/v1/forecast/paris"


@pytest.fixture
async def gateway(deployment, store_path):
    gateway = InProcessGateway(deployment, store_path)
    yield gateway
    await gateway.aclose()


async def pay(gateway: InProcessGateway, signer: MandateSigner, path: str = PATH, **options) -> httpx.Response:
    async with gateway.client() as client:
        return await client.get(path, headers={"PAYMENT-SIGNATURE": signer.header("GET", path, **options)})


def fund_with(payer: Escrow, processor: str, amount: int) -> Escrow:
    """Mint ``amount`` to ``payer``, escrow it in its account with ``processor`` and authorise
    that processor; returns the ``Escrow`` of that account."""
    deployment = payer.deployment
    mint(deployment.rpc_url, deployment.token, payer.address, amount)
    account = Escrow(deployment, payer.account.key, processor=processor)
    account.deposit(amount)
    account.authorize_processor(processor)
    return account


async def assert_refused(gateway: InProcessGateway, response: httpx.Response, code: str, *, served: int) -> str:
    """A 402 with ``code``; the handler ran only for the ``served`` earlier payments and the store
    holds only their mandates (nothing reserved for this one). Returns the wire error."""
    assert error_code(response) == code
    assert sum(gateway.handled.values()) == served
    assert len(await gateway.store.mandates()) == served
    return response.json()["error"]


async def test_reader_sees_what_the_contract_holds(deployment, make_payer):
    """``Web3ChainReader`` against the contract: escrow, consent, intent, nonces at one block."""
    payer = make_payer(escrow=7_000)
    reader = Web3ChainReader(deployment.rpc_url, deployment.settlement)
    try:
        escrow = await reader.escrow_state(payer.address, deployment.token, PROCESSOR)
        assert (escrow.balance, escrow.pending_withdrawal, escrow.consent_until) == (7_000, 0, CONSENT_NOT_WITHDRAWN)
        other = await reader.escrow_state(payer.address, deployment.token, Account.create().address)
        assert (other.balance, other.consent_until) == (0, 0) and not other.consent_current
        # Escrow is per processor: the account with another processor is read apart.
        q = Account.create().address
        with_q = fund_with(payer, q, 3_000)
        with_q.request_withdrawal(1_000)
        theirs = await reader.escrow_state(payer.address, deployment.token, q)
        assert (theirs.balance, theirs.pending_withdrawal) == (3_000, 1_000) and theirs.consent_current
        ours = await reader.escrow_state(payer.address, deployment.token, PROCESSOR)
        assert (ours.balance, ours.pending_withdrawal) == (7_000, 0)
        signer = signer_for(payer, deployment)
        state = await reader.intent_state(signer.intent_id)
        assert (state.registered, state.revoked_at) == (False, 0) and state.block >= escrow.block
        assert (await reader.settled_nonces(signer.intent_id, 0))[0] == 0
    finally:
        await reader.aclose()


async def test_intent_naming_another_processor(gateway, make_payer, deployment):
    signer = signer_for(make_payer(), deployment, processor=Account.create().address)
    error = await assert_refused(gateway, await pay(gateway, signer), ErrorCode.PROCESSOR_MISMATCH, served=0)
    assert PROCESSOR in error  # says which processor to name


async def test_payer_deauthorises_the_processor(gateway, make_payer, deployment):
    payer = make_payer()
    signer = signer_for(payer, deployment)
    assert (await pay(gateway, signer)).status_code == 200

    payer.authorize_processor(PROCESSOR, False)
    lapses_at = payer.processor_consent_until(PROCESSOR)
    assert time.time() < lapses_at < CONSENT_NOT_WITHDRAWN  # the served mandate still settles until then
    await gateway.chain.refresh()
    response = await pay(gateway, signer, "/v1/forecast/rome")
    error = await assert_refused(gateway, response, ErrorCode.PROCESSOR_NOT_AUTHORIZED, served=1)
    assert f"lapses at {lapses_at}" in error

    # Consent given again: served again.
    payer.authorize_processor(PROCESSOR, True)
    await gateway.chain.refresh()
    assert (await pay(gateway, signer, "/v1/forecast/oslo")).status_code == 200


async def test_payer_revokes_the_intent(gateway, make_payer, deployment):
    """Through the payer SDK: the refusal is ``PaymentRefused('intent_revoked')`` and not charged."""
    payer = make_payer()
    key = create_session_key()
    signed = make_intent(payer.account.key, key, deployment)
    auth = AEP2Auth(signed, key, PayerState())
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", auth=auth) as client:
        assert (await client.get(PATH)).status_code == 200  # unregistered: fine, the processor registers it
        payer.register_intent(signed)
        payer.revoke_intent(signed.intent.intent_id)
        await gateway.chain.refresh()
        with pytest.raises(PaymentRefused) as refused:
            await client.get("/v1/forecast/rome")
    assert refused.value.code == ErrorCode.INTENT_REVOKED
    assert auth.spent == FORECAST_PRICE
    assert sum(gateway.handled.values()) == 1 and len(await gateway.store.mandates()) == 1


async def test_intent_revoked_before_the_gateway_saw_it(gateway, make_payer, deployment):
    """The first read of an intent is a chain read: no refresh needed to refuse it."""
    payer = make_payer()
    signer = signer_for(payer, deployment)
    payer.register_intent(signer.signed)
    payer.revoke_intent(signer.intent_id)
    await assert_refused(gateway, await pay(gateway, signer), ErrorCode.INTENT_REVOKED, served=0)


async def test_payer_requests_a_withdrawal(gateway, make_payer, deployment):
    """Escrow a pending withdrawal will take is not reserved against: refused once
    ``balance - pending < outstanding + price``; accepted again when the request is cancelled."""
    payer = make_payer(escrow=10 * FORECAST_PRICE)
    signer = signer_for(payer, deployment)
    assert (await pay(gateway, signer, "/v1/forecast/a")).status_code == 200  # outstanding: 1 price

    payer.request_withdrawal(8 * FORECAST_PRICE + 500)  # available: 1.5 prices
    assert payer.pending_withdrawal()[0] == 8 * FORECAST_PRICE + 500
    await gateway.chain.refresh()
    response = await pay(gateway, signer, "/v1/forecast/b")
    error = await assert_refused(gateway, response, ErrorCode.INSUFFICIENT_ESCROW, served=1)
    assert f"pending withdrawal {8 * FORECAST_PRICE + 500}" in error

    payer.cancel_withdrawal()
    await gateway.chain.refresh()
    assert (await pay(gateway, signer, "/v1/forecast/c")).status_code == 200


async def test_escrow_with_another_processor_is_not_counted(gateway, make_payer, deployment):
    """A payer escrows 3 prices with our processor P and 100 with another processor Q. P's
    gateway reserves against the P account only: it serves 3 calls and refuses the 4th
    ``insufficient_escrow``, and a withdrawal draining the Q account changes nothing it accepts."""
    payer = make_payer(escrow=3 * FORECAST_PRICE)
    q = Account.create().address
    with_q = fund_with(payer, q, 100 * FORECAST_PRICE)
    assert (payer.balance(), with_q.balance()) == (3 * FORECAST_PRICE, 100 * FORECAST_PRICE)
    signer = signer_for(payer, deployment)
    for city in ("a", "b"):
        assert (await pay(gateway, signer, f"/v1/forecast/{city}")).status_code == 200
    before = await gateway.chain.escrow(payer.address, deployment.token, PROCESSOR)
    assert (before.balance, before.pending_withdrawal) == (3 * FORECAST_PRICE, 0)

    with_q.request_withdrawal(100 * FORECAST_PRICE)  # the whole Q account leaves
    assert with_q.pending_withdrawal()[0] == 100 * FORECAST_PRICE and payer.pending_withdrawal()[0] == 0
    await gateway.chain.refresh()
    after = await gateway.chain.escrow(payer.address, deployment.token, PROCESSOR)
    assert (after.balance, after.pending_withdrawal, after.consent_until) == (
        before.balance,
        before.pending_withdrawal,
        before.consent_until,
    )
    assert after.block > before.block  # re-read after the withdrawal, not a stale entry

    assert (await pay(gateway, signer, "/v1/forecast/c")).status_code == 200  # the P account's last price
    response = await pay(gateway, signer, "/v1/forecast/d")
    error = await assert_refused(gateway, response, ErrorCode.INSUFFICIENT_ESCROW, served=3)
    assert f"> escrow {3 * FORECAST_PRICE}" in error and f"escrow with processor {PROCESSOR}" in error


async def test_payer_funded_only_with_another_processor(gateway, make_payer, deployment):
    """Consent to P but escrow only with Q: P's gateway refuses ``insufficient_escrow`` before
    serving (handler not run, nothing reserved); a deposit with P is then accepted."""
    payer = make_payer(escrow=0, wallet=FORECAST_PRICE)
    assert payer.processor_consent_until(PROCESSOR) == CONSENT_NOT_WITHDRAWN
    fund_with(payer, Account.create().address, 100 * FORECAST_PRICE)
    signer = signer_for(payer, deployment)
    error = await assert_refused(gateway, await pay(gateway, signer), ErrorCode.INSUFFICIENT_ESCROW, served=0)
    assert "> escrow 0" in error and f"escrow with processor {PROCESSOR}" in error

    payer.deposit(FORECAST_PRICE)
    await gateway.chain.refresh()
    assert (await pay(gateway, signer, "/v1/forecast/rome")).status_code == 200


async def settle(store_path: str, key: str, deployment: Deployment, artifacts) -> int:
    """One settlement round of the store at ``store_path`` by the processor ``key``: the number
    of mandates settled on chain."""
    from settlement.chain import SettlementClient
    from settlement.processor import SettlementProcessor
    from settlement.prover import Prover

    async with open_store(store_path) as store:
        client = SettlementClient(deployment.rpc_url, deployment.settlement, key)
        try:
            result = await SettlementProcessor(store, client, Prover(artifacts), deployment.token).settle_once()
        finally:
            await client.aclose()
    return 0 if result is None else result.mandates


@pytest.mark.circuit
async def test_settlement_by_another_processor_leaves_our_account(
    deployment, make_payer, anvil, small_artifacts, processor_key, tmp_path
):
    """A payer escrows 2 prices with P and 2 with Q. Q's gateway serves 2 calls and Q settles
    them on chain, draining the Q account: P's gateway, which served 1 call, still serves exactly
    one more and refuses the next, and P settles both of its mandates in full."""
    q_account = Account.create()
    Web3(Web3.HTTPProvider(anvil.rpc_url)).provider.make_request("anvil_setBalance", [q_account.address, hex(10**20)])
    payer = make_payer(escrow=2 * FORECAST_PRICE)
    with_q = fund_with(payer, q_account.address, 2 * FORECAST_PRICE)
    ours = InProcessGateway(deployment, str(tmp_path / "p.sqlite"))
    theirs = InProcessGateway(deployment, str(tmp_path / "q.sqlite"), processor=q_account.address)
    try:
        signer = signer_for(payer, deployment)
        via_q = signer_for(payer, deployment, processor=q_account.address)
        assert (await pay(ours, signer, "/v1/forecast/a")).status_code == 200
        before = await ours.chain.escrow(payer.address, deployment.token, PROCESSOR)
        for city in ("a", "b"):
            assert (await pay(theirs, via_q, f"/v1/forecast/{city}")).status_code == 200
        assert await settle(str(tmp_path / "q.sqlite"), q_account.key, deployment, small_artifacts) == 2
        assert (with_q.balance(), payer.balance()) == (0, 2 * FORECAST_PRICE)  # Q debited only its own account

        await ours.chain.refresh()
        after = await ours.chain.escrow(payer.address, deployment.token, PROCESSOR)
        assert (after.balance, after.pending_withdrawal) == (before.balance, before.pending_withdrawal)
        assert after.block > before.block
        assert (await pay(ours, signer, "/v1/forecast/b")).status_code == 200
        response = await pay(ours, signer, "/v1/forecast/c")
        await assert_refused(ours, response, ErrorCode.INSUFFICIENT_ESCROW, served=2)

        # Everything P's gateway served is paid.
        assert await settle(str(tmp_path / "p.sqlite"), processor_key, deployment, small_artifacts) == 2
        assert payer.balance() == 0
    finally:
        await ours.aclose()
        await theirs.aclose()


@pytest.mark.circuit
async def test_nonce_settled_on_chain_is_refused(deployment, make_payer, small_artifacts, processor_key, tmp_path):
    """Gateway A serves nonces 0 and 1 and the processor settles them on chain. Replayed to
    gateway B (same processor, a fresh store that never saw them), nonce 0 is refused
    ``nonce_used`` from the contract's bitmap; nonce 2 of the same window is still fine."""
    from aep2.sqlite_store import SQLiteStore
    from settlement.chain import SettlementClient
    from settlement.processor import SettlementProcessor
    from settlement.prover import Prover

    payer = make_payer()
    signer = signer_for(payer, deployment)
    replay = signer.header("GET", PATH, nonce=0)
    first = InProcessGateway(deployment, str(tmp_path / "a.sqlite"))
    try:
        async with first.client() as client:
            assert (await client.get(PATH, headers={"PAYMENT-SIGNATURE": replay})).status_code == 200
        assert (await pay(first, signer, "/v1/forecast/rome", nonce=1)).status_code == 200
    finally:
        await first.aclose()

    store = SQLiteStore(str(tmp_path / "a.sqlite"))
    await store.open()
    client = SettlementClient(deployment.rpc_url, deployment.settlement, processor_key)
    try:
        result = await SettlementProcessor(store, client, Prover(small_artifacts), deployment.token).settle_once()
        assert result is not None and result.mandates == 2
    finally:
        await client.aclose()
        await store.close()

    second = InProcessGateway(deployment, str(tmp_path / "b.sqlite"))
    try:
        async with second.client() as client:
            response = await client.get(PATH, headers={"PAYMENT-SIGNATURE": replay})
        error = await assert_refused(second, response, ErrorCode.NONCE_USED, served=0)
        assert "settled on chain" in error
        assert (await pay(second, signer, "/v1/forecast/oslo", nonce=2)).status_code == 200
    finally:
        await second.aclose()
