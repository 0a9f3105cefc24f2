"""Prover pools behind the settlement processor (``settlement.provers``), on a real Anvil node
with real proofs: two batches proven at once settle every mandate once, batches in flight
never overspend an escrow together, a worker that dies loses only its proof, and loading a
proving key never stalls the processor's event loop nor stops it settling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from web3 import Web3

from examples.payee_service import create_app
from payer import Escrow
from settlement.prover import ProofError
from settlement.provers import LocalProverPool

from settlement_fixtures import PAYEE, PRICE, PROCESSOR, WINDOW, fund, pay, payee_balance, processor

pytestmark = [pytest.mark.chain, pytest.mark.circuit]


@pytest.fixture
async def provers(small_artifacts):
    pool = LocalProverPool(small_artifacts, size=2)
    yield pool
    await pool.aclose()


async def served(deployment, serve, store_path: str, *calls: int) -> list[Escrow]:
    """One funded payer per entry of ``calls``, each served that many paid calls by the
    example payee service over the store at ``store_path``."""
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    payers = []
    for count in calls:
        payers.append(fund(deployment, 100_000))
        await pay(server.url, deployment, payers[-1], count)
    return payers


def kill_mid_proof(pool: LocalProverPool, pids: list[int]):
    """Make ``pool.prove`` SIGKILL the workers ``pids`` 0.2 s into each proof; returns the
    original ``prove`` to put back."""
    prove = pool.prove

    async def prove_and_kill(inputs):
        proving = asyncio.ensure_future(prove(inputs))
        await asyncio.sleep(0.2)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return await proving

    pool.prove = prove_and_kill  # type: ignore[method-assign]
    return prove


class Concurrency:
    """Wraps a pool's ``prove`` and records how many proofs ran at once."""

    def __init__(self, pool: LocalProverPool) -> None:
        self.inner, self.running, self.peak = pool.prove, 0, 0
        pool.prove = self.prove  # type: ignore[method-assign]

    async def prove(self, inputs):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            return await self.inner(inputs)
        finally:
            self.running -= 1


async def settle_two_at_a_time(deployment, store_path: str, provers: LocalProverPool):
    """``settle_all`` over the store with ``provers``, checking that 2 proofs ran at once:
    ``(results, mandates, batches)`` afterwards."""
    watch = Concurrency(provers)
    async with processor(deployment, store_path, provers) as settler:
        results = await settler.settle_all()
        mandates = await settler.store.mandates()
        batches = await settler.store.batches()
    assert watch.peak == 2
    return results, mandates, batches


async def test_two_provers_settle_a_backlog_two_batches_at_a_time(chain, provers, serve, store_path):
    _node, deployment = chain
    first, second = await served(deployment, serve, store_path, 6, 5)
    results, mandates, batches = await settle_two_at_a_time(deployment, store_path, provers)
    assert sum(r.mandates for r in results) == 11 and len(results) == 3  # N = 4
    assert {m.status for m in mandates} == {"settled"}
    assert [b.status for b in batches] == ["settled"] * 3
    assert sorted(p for b in batches for p in b.payment_ids) == sorted(m.payment_id for m in mandates)
    assert [r.batch_id for r in results] == sorted(r.batch_id for r in results)  # submitted in seal order
    assert payee_balance(first) == 11 * PRICE
    assert (first.balance(), second.balance()) == (100_000 - 6 * PRICE, 100_000 - 5 * PRICE)


async def test_batches_in_flight_never_overspend_the_escrow_together(chain, provers, serve, store_path):
    node, deployment = chain
    (payer,) = await served(deployment, serve, store_path, 8)
    # Served for 8 calls, the payer leaves 5 calls' worth in escrow: the first batch (4)
    # fits, and the batch proven next to it may take only 1 more.
    payer.request_withdrawal(100_000 - 5 * PRICE)
    w3 = Web3(Web3.HTTPProvider(node.rpc_url))
    w3.provider.make_request("evm_increaseTime", [WINDOW + 1])
    w3.provider.make_request("evm_mine", [])
    payer.execute_withdrawal()
    results, mandates, batches = await settle_two_at_a_time(deployment, store_path, provers)
    assert [r.mandates for r in results] == [4, 1]
    assert [b.status for b in batches] == ["settled", "settled"]  # no batch reverted
    assert sorted((m.status, m.reason) for m in mandates) == [("failed", "insufficient_escrow")] * 3 + [
        ("settled", None)
    ] * 5
    assert payer.balance() == 0 and payee_balance(payer) == 5 * PRICE


async def test_a_prover_worker_that_dies_loses_only_its_proof(chain, serve, store_path, small_artifacts):
    _node, deployment = chain
    (payer,) = await served(deployment, serve, store_path, 3)
    pool = LocalProverPool(small_artifacts, size=1)
    try:
        [(pid, _load_seconds)] = await pool.ready()
        prove = kill_mid_proof(pool, [pid])
        async with processor(deployment, store_path, pool) as settler:
            with pytest.raises(ProofError, match="worker died"):
                await settler.settle_all()
            assert [b.status for b in await settler.store.batches()] == ["failed"]
            assert {m.status for m in await settler.store.mandates()} == {"accepted"}
            pool.prove = prove  # type: ignore[method-assign]
            results = await settler.settle_all()  # a fresh worker
            assert [r.mandates for r in results] == [3]
            assert {m.status for m in await settler.store.mandates()} == {"settled"}
    finally:
        await pool.aclose()
    assert payee_balance(payer) == 3 * PRICE


async def test_loading_the_proving_key_never_stalls_the_event_loop(small_artifacts):
    pool = LocalProverPool(small_artifacts, size=2)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    try:
        started = time.monotonic()
        await pool.start()
        assert time.monotonic() - started < 0.5  # start() does not wait for the keys
        loaded = await pool.ready()
    finally:
        stop.set()
        await beating
        await pool.aclose()
    assert len({pid for pid, _ in loaded}) == 2 and os.getpid() not in {pid for pid, _ in loaded}
    slowest_load = max(seconds for _, seconds in loaded)
    # Loading in this process would hold the GIL for the whole load (TOOLCHAIN: groth16py),
    # one gap at least as long as the load; a busy machine stretches both alike.
    assert max(gaps) < slowest_load / 4, (max(gaps), slowest_load)


async def test_the_processor_settles_a_submitted_batch_while_its_workers_load_their_keys(
    chain, prover, serve, store_path, small_artifacts
):
    _node, deployment = chain
    (payer,) = await served(deployment, serve, store_path, 2)
    async with processor(deployment, store_path, prover) as first:
        # The first run broadcast its batch and died before it saw the receipt.
        async def die(*args: object, **kwargs: object) -> None:
            raise asyncio.CancelledError

        first.store.mark_batch_settled = die  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await first.settle_once()
    cold = LocalProverPool(small_artifacts, size=2)
    try:
        async with processor(deployment, store_path, cold) as second:
            await cold.start()
            loading = asyncio.ensure_future(cold.ready())
            await second.reconcile()
            assert not loading.done()  # the keys are still loading
            assert [b.status for b in await second.store.batches()] == ["settled"]
            assert {m.status for m in await second.store.mandates()} == {"settled"}
            await loading
    finally:
        await cold.aclose()
    assert payee_balance(payer) == 2 * PRICE


def parent_pid(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


async def test_the_workers_share_one_load_of_the_key_and_end_with_the_pool(small_artifacts):
    pool = LocalProverPool(small_artifacts, size=2)
    try:
        loaded = await pool.ready()
        pids = [pid for pid, _ in loaded]
        [loader] = {parent_pid(pid) for pid in pids}  # forked by one process...
        assert len(set(pids)) == 2 and loader != os.getpid()
        assert parent_pid(loader) == os.getpid()
        assert len({seconds for _, seconds in loaded}) == 1  # ...from one load
    finally:
        await pool.aclose()
    # Reaped, not left as zombies or orphans.
    assert not any(os.path.exists(f"/proc/{pid}") for pid in [loader, *pids])


async def test_workers_killed_mid_proof_are_forked_again_from_the_loaded_key(chain, serve, store_path, small_artifacts):
    _node, deployment = chain
    (payer,) = await served(deployment, serve, store_path, 3)
    pool = LocalProverPool(small_artifacts, size=2)
    try:
        before = await pool.ready()
        killed = [pid for pid, _ in before]
        loader = parent_pid(killed[0])
        prove = kill_mid_proof(pool, killed)  # whichever of them takes the proof
        async with processor(deployment, store_path, pool) as settler:
            with pytest.raises(ProofError, match="worker died"):
                await settler.settle_all()
            pool.prove = prove  # type: ignore[method-assign]
            after = await pool.ready()
            fresh = [pid for pid, _ in after]
            assert not set(fresh) & set(killed)
            # Forked again by the same loader from the key it holds: no second load.
            assert {parent_pid(pid) for pid in fresh} == {loader}
            assert {seconds for _, seconds in after} == {seconds for _, seconds in before}
            results = await settler.settle_all()
            assert [r.mandates for r in results] == [3]
    finally:
        await pool.aclose()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in killed + fresh)
    assert payee_balance(payer) == 3 * PRICE
