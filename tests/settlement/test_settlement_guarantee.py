"""The settlement guarantee (docs/PROTOCOL.md §7) under attack, on a real Anvil node with the
compiled contracts, real proofs and the real gateway on loopback.

Each test performs one attack from the settlement-guarantee issue and shows either the payee
paid in full for every served call, or the mandate refused before serving (or, for the
attacks by a processor, that no proof exists for the cheating statement).
"""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from aep2.deployment import Deployment
from aep2.eddsa import SessionKey
from aep2.intent import SignedIntent
from aep2.mandate import MAX_NONCE, Mandate, request_hash
from aep2.payload import build_payload
from aep2.sqlite_store import SQLiteStore
from aep2.store import MandateRecord
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_SIGNATURE_HEADER, decode_header, encode_header
from examples.payee_service import create_app
from payer import Escrow, create_intent, create_session_key
from settlement.chain import ChainRevert, SettlementClient
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, mint
from settlement.processor import SettlementProcessor
from settlement.prover import WitnessError
from settlement.witness import IntentSlot, build_statement

from settlement_fixtures import PAYEE, PRICE, PROCESSOR, PROCESSOR_KEY, fund, processor

pytestmark = [pytest.mark.chain, pytest.mark.circuit]

OUTSIDER = Account.from_key(anvil_key(5)).address
WINDOW = 600  # settlement window of these deployments (s)


@pytest.fixture
def chain(small_artifacts):
    with Anvil() as node:
        yield node, deploy(node.rpc_url, anvil_key(0), small_artifacts, withdrawal_delay=WINDOW,
                           settlement_window=WINDOW)


def intent_for(deployment: Deployment, payer: Escrow, key: SessionKey, **options) -> SignedIntent:
    terms = {"asset": deployment.token, "max_amount": 10**6, "max_per_payment": 10**4, "valid_for_seconds": 3600,
             "chain_id": deployment.chain_id, "settlement": deployment.settlement, "processor": PROCESSOR}
    return create_intent(payer.account.key, session_key=key, **{**terms, **options})


async def send(client: httpx.AsyncClient, signed: SignedIntent, key: SessionKey, nonce: int, *,
               payee: str = PAYEE) -> httpx.Response:
    """One paid call carrying a mandate with exactly ``nonce`` (the payer SDK counts up; an
    attacker or a concurrent agent need not)."""
    path = f"/v1/forecast/n{nonce}"
    challenge = await client.get(path)
    assert challenge.status_code == 402
    required = decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER], header=PAYMENT_REQUIRED_HEADER)
    requirement = next(entry for entry in required["accepts"] if entry["scheme"] == "aep2")
    mandate = Mandate(signed.intent.intent_id, payee, PRICE, nonce, int(time.time()) + 3000, request_hash("GET", path))
    envelope = {"x402Version": 2, "accepted": requirement, "resource": required.get("resource"),
                "payload": build_payload(mandate, mandate.sign(key), signed)}
    return await client.get(path, headers={PAYMENT_SIGNATURE_HEADER: encode_header(envelope)})


def balance_of(deployment: Deployment, node: Anvil, owner: str) -> int:
    token = Web3(Web3.HTTPProvider(node.rpc_url)).eth.contract(
        address=deployment.token, abi=[{"name": "balanceOf", "type": "function", "stateMutability": "view",
                                        "inputs": [{"name": "a", "type": "address"}],
                                        "outputs": [{"name": "", "type": "uint256"}]}])
    return token.functions.balanceOf(owner).call()


async def assert_store_matches_chain(settler: SettlementProcessor, deployment: Deployment, node: Anvil) -> None:
    settled = sum(m.mandate.amount for m in await settler.store.mandates("settled"))
    assert balance_of(deployment, node, PAYEE) == settled


def warp(node: Anvil, seconds: int) -> None:
    w3 = Web3(Web3.HTTPProvider(node.rpc_url))
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


# -- 1. accept vs seal ------------------------------------------------------------------------


async def test_a_lower_nonce_accepted_after_a_higher_one_was_sealed_still_settles(chain, prover, serve, store_path):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    signed = intent_for(deployment, payer, key)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client, processor(deployment, store_path, prover) as settler:
        assert (await send(client, signed, key, 25)).status_code == 200
        # The processor snapshots and seals a batch holding nonce 25 …
        accepted = await settler.store.accepted_mandates()
        intents, states = await settler.load_intents(accepted)
        batch, statement, _ = await settler.plan(accepted, intents, states)
        # … and only then does nonce 24 (sent earlier, arriving late) reach the gateway.
        assert (await send(client, signed, key, 24)).status_code == 200
        proof = await settler.prove(batch.batch_id, statement)
        assert await settler.submit(batch.batch_id, statement, proof) is not None
        results = await settler.settle_all()
        assert sum(r.mandates for r in results) == 1
        assert {(m.mandate.nonce, m.status) for m in await settler.store.mandates()} == {(24, "settled"), (25, "settled")}
        await assert_store_matches_chain(settler, deployment, node)
    assert balance_of(deployment, node, PAYEE) == 2 * PRICE


# -- 2. revocation, de-authorisation and withdrawal after being served ------------------------


@pytest.mark.parametrize("withdrawal", ["revoke", "deauthorize"])
async def test_revoking_after_being_served_does_not_void_the_served_mandates(
    chain, prover, serve, store_path, withdrawal
):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    signed = intent_for(deployment, payer, key)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client:
        for nonce in range(3):
            assert (await send(client, signed, key, nonce)).status_code == 200
    async with processor(deployment, store_path, prover) as settler:
        await settler.load_intents(await settler.store.accepted_mandates())  # registers the intent
    # Served: now the payer tries to take everything back.
    if withdrawal == "revoke":
        payer.revoke_intent(signed.intent.intent_id)
    else:
        payer.authorize_processor(PROCESSOR, allowed=False)
    payer.request_withdrawal(100_000)
    warp(node, WINDOW // 2)
    async with processor(deployment, store_path, prover) as settler:
        results = await settler.settle_all()
        assert sum(r.mandates for r in results) == 3
        await assert_store_matches_chain(settler, deployment, node)
    assert balance_of(deployment, node, PAYEE) == 3 * PRICE
    warp(node, WINDOW)
    payer.execute_withdrawal()
    assert payer.token_balance() == 100_000 - 3 * PRICE


# -- 3. session-key squatting ----------------------------------------------------------------


async def test_a_squatted_session_key_cannot_block_the_real_intent(chain, prover, serve, store_path):
    node, deployment = chain
    payer, attacker = fund(deployment, 100_000), fund(deployment, 10)
    key = create_session_key()
    signed = intent_for(deployment, payer, key)
    # The attacker saw the session key in an x402 payload and binds it to a throw-away intent.
    squat = intent_for(deployment, attacker, key, max_amount=1, max_per_payment=1)
    async with processor(deployment, store_path, prover) as settler:
        await settler.client.register_intent(squat)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client:
        for nonce in range(2):
            assert (await send(client, signed, key, nonce)).status_code == 200
    async with processor(deployment, store_path, prover) as settler:
        assert sum(r.mandates for r in await settler.settle_all()) == 2
    assert balance_of(deployment, node, PAYEE) == 2 * PRICE


# -- 4. nonce burning and 5. the largest nonce --------------------------------------------------


async def test_settling_the_largest_nonce_first_burns_no_other_mandate(chain, prover, serve, store_path):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    signed = intent_for(deployment, payer, key)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client, processor(deployment, store_path, prover) as settler:
        assert (await send(client, signed, key, MAX_NONCE)).status_code == 200
        assert sum(r.mandates for r in await settler.settle_all()) == 1
        for nonce in (0, MAX_NONCE - 1, 7):
            assert (await send(client, signed, key, nonce)).status_code == 200
        # A nonce settled on chain is refused before serving.
        refused = await send(client, signed, key, MAX_NONCE)
        assert refused.status_code == 402
        assert sum(r.mandates for r in await settler.settle_all()) == 3
        await assert_store_matches_chain(settler, deployment, node)
    assert balance_of(deployment, node, PAYEE) == 4 * PRICE


async def test_an_intent_naming_another_processor_is_refused_before_serving(chain, serve, store_path):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    rival = intent_for(deployment, payer, key, processor=payer.account.address)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await send(client, rival, key, 0)
    assert response.status_code == 402
    assert "processor_mismatch" in response.text
    async with SQLiteStore(store_path) as store:
        assert await store.mandates() == []


# -- 5. a deterministic revert never stalls the other payers ----------------------------------


async def test_spending_through_another_processor_cannot_drain_what_was_served(chain, prover, serve, store_path):
    """Escrow is per processor: a hostile payer served by our gateway cannot take the same
    funds back through a second processor of its own before we settle."""
    node, deployment = chain
    hostile = fund(deployment, PRICE)
    key = create_session_key()
    signed = intent_for(deployment, hostile, key)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await send(client, signed, key, 0)).status_code == 200

    hostile.authorize_processor(hostile.address)
    rival_key = create_session_key()
    rival = intent_for(deployment, hostile, rival_key, processor=hostile.address)
    drain = build_statement([IntentSlot(rival.intent, 0, (record(rival, rival_key, 0, OUTSIDER),))],
                            time_ref=int(time.time()) - 5, asset=deployment.token,
                            n=prover.artifacts.n, i=prover.artifacts.i, p=prover.artifacts.p)
    rival_client = SettlementClient(deployment.rpc_url, deployment.settlement, hostile.account.key.hex())
    try:
        await rival_client.register_intent(rival)
        with pytest.raises(ChainRevert, match="InsufficientBalance"):
            await rival_client.settle_batch(prover.prove(drain.inputs).words, drain.batch)
    finally:
        await rival_client.aclose()

    async with processor(deployment, store_path, prover) as settler:
        assert sum(r.mandates for r in await settler.settle_all()) == 1
        await assert_store_matches_chain(settler, deployment, node)
    assert balance_of(deployment, node, PAYEE) == PRICE


async def test_a_slot_the_contract_refuses_is_isolated_and_the_rest_settles(chain, prover, serve, tmp_path):
    """Outside the guarantee: a processor key shared by two gateways with separate stores. A
    payer replays one mandate to both; one store settles it first, so the other's batch would
    revert for that slot alone: only that slot fails, with the contract's reason."""
    node, deployment = chain
    honest, replayer = fund(deployment, 100_000), fund(deployment, 100_000)
    keys = create_session_key(), create_session_key()
    intents = intent_for(deployment, honest, keys[0]), intent_for(deployment, replayer, keys[1])
    store_a, store_b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    gateway_a = serve(create_app(deployment, PAYEE, store_a, processor=PROCESSOR))
    gateway_b = serve(create_app(deployment, PAYEE, store_b, processor=PROCESSOR))
    async with httpx.AsyncClient(base_url=gateway_a.url) as a, httpx.AsyncClient(base_url=gateway_b.url) as b:
        assert (await send(a, intents[0], keys[0], 0)).status_code == 200
        assert (await send(a, intents[1], keys[1], 0)).status_code == 200
        assert (await send(b, intents[1], keys[1], 0)).status_code == 200
    async with processor(deployment, store_a, prover) as settler:
        accepted = await settler.store.accepted_mandates()
        loaded, states = await settler.load_intents(accepted)
        batch, statement, _ = await settler.plan(accepted, loaded, states)
        proof = await settler.prove(batch.batch_id, statement)
        async with processor(deployment, store_b, prover) as other:
            assert sum(r.mandates for r in await other.settle_all()) == 1
        assert await settler.submit(batch.batch_id, statement, proof) is None
        statuses = {(m.payer, m.status, m.reason) for m in await settler.store.mandates()}
        assert (replayer.address, "failed", "nonce_already_settled") in statuses
        # The honest payer's mandate goes back to the queue and settles in the next batch.
        assert sum(r.mandates for r in await settler.settle_all()) == 1
        assert {(m.payer, m.status) for m in await settler.store.mandates("settled")} == {(honest.address, "settled")}
    assert balance_of(deployment, node, PAYEE) == 2 * PRICE


# -- 6. the allowlist and 7. intent binding, against a cheating processor ---------------------


def record(signed: SignedIntent, key: SessionKey, nonce: int, payee: str) -> MandateRecord:
    mandate = Mandate(signed.intent.intent_id, payee, PRICE, nonce, int(time.time()) + 3000, 1)
    return MandateRecord(mandate.payment_id, mandate, mandate.sign(key), signed.intent.payer, signed.intent.asset,
                         "accepted", time.time())


def test_no_proof_pays_an_address_outside_the_owners_allowlist(chain, prover):
    """A compromised session key signs a mandate to an outsider; a colluding processor
    cannot prove a batch paying it (the gateway refuses it as payee_not_allowed before)."""
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    signed = intent_for(deployment, payer, key, payees=[PAYEE])
    n, i, p = prover.artifacts.n, prover.artifacts.i, prover.artifacts.p
    honest = build_statement([IntentSlot(signed.intent, 0, (record(signed, key, 0, PAYEE),))],
                             time_ref=int(time.time()), asset=deployment.token, n=n, i=i, p=p)
    assert prover.verify(prover.prove(honest.inputs))
    cheat = build_statement([IntentSlot(signed.intent, 0, (record(signed, key, 1, PAYEE),))],
                            time_ref=int(time.time()), asset=deployment.token, n=n, i=i, p=p)
    cheat.inputs["payeeWord"][0] = int(OUTSIDER, 16) + (PRICE << 160)
    with pytest.raises(WitnessError):
        prover.prove(cheat.inputs)


@pytest.mark.parametrize("target", ["same_key_other_intent", "other_deployment"])
async def test_a_mandate_settles_only_against_the_intent_it_signed(chain, prover, small_artifacts, target):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    key = create_session_key()
    signed = intent_for(deployment, payer, key)
    if target == "same_key_other_intent":
        other_deployment = deployment
        other = intent_for(deployment, payer, key)  # same key, other salt: another intent
    else:
        other_deployment = deploy(node.rpc_url, anvil_key(0), small_artifacts, withdrawal_delay=WINDOW,
                                  settlement_window=WINDOW)
        mint(node.rpc_url, other_deployment.token, payer.address, 100_000)
        there = Escrow(other_deployment, payer.account.key, processor=PROCESSOR)
        there.deposit(100_000)
        there.authorize_processor(PROCESSOR)
        # The same intent terms, signed by the same owner for the other deployment.
        other = dataclasses.replace(
            signed.intent, verifying_contract=other_deployment.settlement, asset=other_deployment.token
        ).sign(payer.account.key)
    forged = record(signed, key, 0, PAYEE)  # signed for `signed`, presented as `other`'s
    statement = build_statement([IntentSlot(other.intent, 0, (forged,))], time_ref=int(time.time()),
                                asset=other_deployment.token, n=prover.artifacts.n, i=prover.artifacts.i,
                                p=prover.artifacts.p)
    with pytest.raises(WitnessError):
        prover.prove(statement.inputs)
    # Nor can the proof of the genuine statement be replayed against the other intent.
    genuine = build_statement([IntentSlot(signed.intent, 0, (forged,))], time_ref=int(time.time()),
                              asset=other_deployment.token, n=prover.artifacts.n, i=prover.artifacts.i, p=prover.artifacts.p)
    proof = prover.prove(genuine.inputs)
    client = SettlementClient(other_deployment.rpc_url, other_deployment.settlement, PROCESSOR_KEY)
    try:
        await client.register_intent(other)
        with pytest.raises(ChainRevert, match="InvalidProof"):
            await client.settle_batch(proof.words, statement.batch)
    finally:
        await client.aclose()


# -- 8. development keys stay on development chains -------------------------------------------


def test_development_keys_are_refused_on_a_named_chain(small_artifacts):
    with Anvil(chain_id=84532) as node:
        with pytest.raises(ValueError, match="development setup"):
            deploy(node.rpc_url, anvil_key(0), small_artifacts)
