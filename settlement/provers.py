"""Prover pools: where the settlement processor's proofs are made.

A pool proves up to ``size`` sealed batches at once and never loads a proving key on the
caller's event loop (groth16py's ``ProvingKey.load`` holds the GIL for its whole duration,
about 155 s at N=256, so loading it in a thread would freeze the processor)::

    provers = LocalProverPool(artifacts, size=2)    # two worker processes, one key each
    await provers.start()                           # begin loading keys; returns at once
    proof = await provers.prove(statement.inputs)   # witness + Groth16 proof in a worker
    assert provers.verify(proof)                    # in process, with the verifying key
    await provers.aclose()

- ``InProcessProverPool`` wraps an already loaded ``Prover`` (size 1, proves in a thread):
  what tests and small deployments use.
- ``LocalProverPool`` runs ``size`` worker processes (default: one per core). Each loads the
  key once and keeps it; witness generation and proving both run there.
- ``settlement.ray_provers.RayProverPool`` dispatches to prover actors on a Ray cluster.

All of them satisfy ``ProverPool``. ``prove`` raises ``WitnessError`` when the inputs do not
satisfy the circuit and ``ProofError`` when a worker is lost; the batch is then retried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from .artifacts import CircuitArtifacts
from .prover import Proof, ProofError, ProofVerifier, Prover

__all__ = ["ProverPool", "InProcessProverPool", "LocalProverPool", "default_pool_size"]

logger = logging.getLogger("settlement.provers")


def default_pool_size() -> int:
    """The number of cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@runtime_checkable
class ProverPool(Protocol):
    """Proves ``Batch(N, I, P, D)`` statements of one circuit, up to ``size`` at once."""

    artifacts: CircuitArtifacts
    size: int

    async def start(self) -> None:
        """Begin loading proving keys; returns without waiting for them."""

    async def prove(self, inputs: Mapping[str, Any]) -> Proof:
        """Witness and proof of ``inputs`` (``settlement.witness.build_statement`` layout)."""

    def verify(self, proof: Proof) -> bool:
        """Check ``proof`` against its public inputs with the verifying key, in process."""

    async def aclose(self) -> None:
        """Stop the workers; proofs in progress are abandoned."""


class InProcessProverPool:
    """One ``Prover`` whose key is already loaded in this process; proves in a thread."""

    size = 1

    def __init__(self, prover: Prover) -> None:
        self.prover = prover
        self.artifacts = prover.artifacts

    async def start(self) -> None:
        return None

    async def prove(self, inputs: Mapping[str, Any]) -> Proof:
        # prove_wtns releases the GIL, so the event loop keeps running.
        return await asyncio.to_thread(self.prover.prove, inputs)

    def verify(self, proof: Proof) -> bool:
        return self.prover.verify(proof)

    async def aclose(self) -> None:
        return None


# -- worker processes ---------------------------------------------------------------------

#: How long ``ready()`` waits for every worker to hold its key (N=256 takes minutes per key).
_READY_TIMEOUT = 1800.0

_worker_prover: Prover | None = None
_worker_load_seconds = 0.0
_worker_barrier: Any = None


def _load_worker(directory: str, barrier: Any) -> None:
    global _worker_prover, _worker_load_seconds, _worker_barrier
    started = time.monotonic()
    _worker_prover = Prover(CircuitArtifacts.load(Path(directory)))
    _worker_load_seconds = time.monotonic() - started
    _worker_barrier = barrier


def _worker_ready() -> tuple[int, float]:
    # Held until every worker runs one of these: a worker that loaded first cannot take them all.
    _worker_barrier.wait(_READY_TIMEOUT)
    return os.getpid(), _worker_load_seconds


def _worker_prove(inputs: Mapping[str, Any]) -> Proof:
    assert _worker_prover is not None  # the initializer ran first
    return _worker_prover.prove(inputs)


class LocalProverPool:
    """``size`` worker processes on this machine, each holding the circuit's proving key.

    Workers are started with ``spawn`` (the processor runs threads and an event loop, which
    ``fork`` would copy mid-flight) and load the key in their initializer, so ``start()`` and
    ``prove()`` never block the caller's loop on it. A worker that dies loses only its proof
    (``ProofError``); the pool starts fresh workers on the next call.
    """

    def __init__(self, artifacts: CircuitArtifacts, size: int | None = None) -> None:
        self.artifacts = artifacts
        self.size = size if size is not None else default_pool_size()
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")
        self._verifier = ProofVerifier(artifacts)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._warming: list[asyncio.Future[tuple[int, float]]] = []

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("spawn")
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=context,
                initializer=_load_worker,
                initargs=(str(self.artifacts.directory), context.Barrier(self.size)),
            )
            self._warming = []
        return self._executor

    async def start(self) -> None:
        """Start every worker; each loads the key in its own process."""
        loop = asyncio.get_running_loop()
        pool = self._pool()
        if not self._warming:
            # The executor spawns a worker per submission while none is idle: ``size``
            # submissions, each held until all have started, start them all.
            self._warming = [loop.run_in_executor(pool, _worker_ready) for _ in range(self.size)]

    async def ready(self) -> list[tuple[int, float]]:
        """Start the workers if need be and wait until each holds its key: ``(pid, load
        seconds)`` per worker. Raises ``ProofError`` if a worker cannot load it."""
        await self.start()
        try:
            return list(await asyncio.gather(*self._warming))
        except (BrokenProcessPool, threading.BrokenBarrierError) as exc:
            await self.aclose()
            raise ProofError(f"a prover worker could not load the proving key: {exc!r}") from exc

    async def prove(self, inputs: Mapping[str, Any]) -> Proof:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), _worker_prove, dict(inputs))
        except BrokenProcessPool as exc:
            broken, self._executor = self._executor, None
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            raise ProofError(f"a prover worker died: {exc}") from exc

    def verify(self, proof: Proof) -> bool:
        return self._verifier.verify(proof)

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        self._warming = []
        if executor is None:
            return
        # A proof takes up to minutes: end the workers instead of waiting for it
        # (ProcessPoolExecutor.terminate_workers() does this from Python 3.14 on).
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        await asyncio.to_thread(lambda: [process.join(5) for process in processes])
