"""Prover actors on a real local Ray (settlement.ray_provers): proofs made in actor processes,
errors carried back, a killed actor replaced, and a processor settling on Anvil with them.

One Ray and one pool of two actors serve the whole module: starting Ray takes seconds and
hundreds of MB.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal

import pytest

from aep2.eddsa import SessionKey
from aep2.intent import Intent
from aep2.mandate import Mandate
from aep2.store import MandateRecord
from settlement.artifacts import CircuitArtifacts
from settlement.prover import Proof, ProofError, WitnessError
from settlement.ray_provers import ArtifactsMismatch, RayProverPool, find_artifacts
from settlement.witness import IntentSlot, build_statement

from examples.payee_service import create_app
from settlement_fixtures import PAYEE as PAYEE_ACCOUNT, PRICE, PROCESSOR, fund, pay, payee_balance, processor

pytestmark = [pytest.mark.circuit]

ADDRESS = "0x" + "ab" * 20
PAYEE = "0x" + "11" * 20
TIME_REF = 1_760_000_000


@pytest.fixture(scope="module")
async def pool(small_artifacts: CircuitArtifacts):
    provers = RayProverPool(small_artifacts, size=2, address="local")
    await provers.start()
    try:
        yield provers
    finally:
        await provers.aclose()


@pytest.fixture(scope="module")
def inputs(small_artifacts: CircuitArtifacts) -> dict:
    """A satisfiable statement of the small circuit: one intent, two mandates."""
    key = SessionKey(0x1234567)
    intent = Intent(
        payer=ADDRESS, asset=ADDRESS, session_key=key.public_key, max_amount=10**6, max_per_payment=500,
        valid_after=0, valid_before=TIME_REF + 10**6, chain_id=31337, verifying_contract=ADDRESS,
        processor=ADDRESS, salt=bytes(32),
    )
    records = []
    for nonce, amount in ((3, 7), (9, 500)):
        mandate = Mandate(intent.intent_id, PAYEE, amount, nonce, TIME_REF + 600, 0xABCDEF)
        records.append(MandateRecord(mandate.payment_id, mandate, mandate.sign(key), ADDRESS, ADDRESS, "accepted", 0.0))
    a = small_artifacts
    return build_statement([IntentSlot(intent, 0, tuple(records))], time_ref=TIME_REF, asset=ADDRESS,
                           n=a.n, i=a.i, p=a.p).inputs


async def test_actors_run_in_their_own_processes_and_prove_what_the_in_process_prover_does(pool, inputs, prover):
    actors = await pool.ready()
    assert len({info.pid for info in actors}) == 2 and os.getpid() not in {info.pid for info in actors}
    ours = await asyncio.to_thread(prover.prove, inputs)
    theirs = await asyncio.gather(pool.prove(inputs), pool.prove(inputs))
    for proof in theirs:
        assert pool.verify(proof) and prover.verify(proof)
        assert proof.public_inputs == ours.public_inputs
    # Groth16 is randomised: equal words would mean a replayed proof, not a new one.
    assert theirs[0].words != theirs[1].words
    changed = theirs[0].public_inputs[0] + 1
    assert not pool.verify(Proof(theirs[0].words, (changed, *theirs[0].public_inputs[1:]), 0.0))


async def test_unsatisfiable_inputs_raise_witness_error_and_leave_the_actor_alive(pool, inputs):
    before = {info.pid for info in await pool.ready()}
    forged = dict(inputs, S=[inputs["S"][0] + 1, *inputs["S"][1:]])
    with pytest.raises(WitnessError, match="witness generation failed"):
        await pool.prove(forged)
    assert {info.pid for info in await pool.ready()} == before
    assert pool.verify(await pool.prove(inputs))


async def test_actor_killed_mid_proof_gives_proof_error_and_is_replaced(small_artifacts, pool, inputs):
    # A second pool on the module's Ray, its one actor the one proving (asking for no CPU:
    # the module's two actors hold the local Ray's two).
    single = RayProverPool(small_artifacts, size=1, cpus_per_prover=0)
    await single.start()
    try:
        [victim] = await single.ready()
        proving = asyncio.ensure_future(single.prove(inputs))
        await asyncio.sleep(0.3)  # well inside the seconds a proof takes
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(ProofError, match="died"):
            await proving
        proof = await single.prove(inputs)
        assert single.verify(proof)
        [replacement] = await single.ready()
        assert replacement.pid != victim.pid
    finally:
        await single.aclose()
    assert len(await pool.ready()) == 2  # the module's Ray and pool outlive a pool that joined it


def test_actor_refuses_a_missing_build_or_other_keys(small_artifacts, tmp_path, monkeypatch):
    digest = hashlib.sha256(small_artifacts.verifying_key.read_bytes()).hexdigest()
    monkeypatch.setenv("AEP2_CACHE_DIR", str(tmp_path))
    elsewhere = str(tmp_path / "processor-only")
    with pytest.raises(ArtifactsMismatch, match=f"{small_artifacts.hash} are not on"):
        find_artifacts(small_artifacts.hash, digest, elsewhere)
    # The node's cache holds the build under the processor's hash, but from another setup.
    copy = tmp_path / small_artifacts.hash
    shutil.copytree(small_artifacts.directory, copy)
    assert find_artifacts(small_artifacts.hash, digest, elsewhere).directory == copy
    key = json.loads((copy / "verification_key.json").read_text())
    key["vk_alpha_1"][0] = str(int(key["vk_alpha_1"][0]) + 1)
    (copy / "verification_key.json").write_text(json.dumps(key))
    with pytest.raises(ArtifactsMismatch, match="other keys"):
        find_artifacts(small_artifacts.hash, digest, elsewhere)


@pytest.mark.chain
async def test_processor_with_a_ray_pool_settles_a_batch_on_anvil(pool, deployment, serve, store_path):
    payer = fund(deployment, 100_000)
    server = serve(create_app(deployment, PAYEE_ACCOUNT, store_path, processor=PROCESSOR))
    paid_before = payee_balance(payer)
    await pay(server.url, deployment, payer, 3)
    async with processor(deployment, store_path, pool) as settling:
        [result] = await settling.settle_all()
        assert result.mandates == 3
        mandates = await settling.store.mandates()
        assert {(m.status, m.tx_hash) for m in mandates} == {("settled", result.tx_hash)}
        [batch] = await settling.store.batches()
        assert batch.status == "settled" and batch.tx_hash == result.tx_hash
    assert payer.balance() == 100_000 - 3 * PRICE
    assert payee_balance(payer) - paid_before == 3 * PRICE
