"""Prover pools: where the settlement processor's proofs are made.

A pool proves up to ``size`` sealed batches at once and never loads a proving key on the
caller's event loop (groth16py's ``ProvingKey.load`` holds the GIL for its whole duration,
about 155 s at N=256, so loading it in a thread would freeze the processor)::

    provers = LocalProverPool(artifacts, size=2)    # two worker processes, one key load
    await provers.start()                           # begin loading the key; returns at once
    proof = await provers.prove(statement.inputs)   # witness + Groth16 proof in a worker
    assert provers.verify(proof)                    # in process, with the verifying key
    await provers.aclose()

- ``InProcessProverPool`` wraps an already loaded ``Prover`` (size 1, proves in a thread):
  what tests and small deployments use.
- ``LocalProverPool`` runs ``size`` worker processes (default: one per core) that share one
  load of the key copy-on-write; witness generation and proving both run there.
- ``settlement.ray_provers.RayProverPool`` dispatches to prover actors on a Ray cluster.

All of them satisfy ``ProverPool``. ``prove`` raises ``WitnessError`` when the inputs do not
satisfy the circuit and ``ProofError`` when a worker is lost; the batch is then retried.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from .artifacts import CircuitArtifacts
from .prover import Proof, ProofError, ProofVerifier, Prover

__all__ = ["ProverPool", "InProcessProverPool", "LocalProverPool", "default_pool_size"]


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

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    # Linux: the kernel kills this process when the (single-threaded) loader exits, so a
    # worker busy proving for minutes never outlives its loader.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: EOF on the worker's pipe still ends it
        pass
    if os.getppid() != parent:
        os._exit(0)


def _serve(conn: Connection, prover: Prover, load_seconds: float) -> None:
    """A worker: report ``("ready", pid, load seconds)``, then answer each ``inputs`` with
    ``("ok", proof)`` or ``("error", exception)`` until the pipe reaches EOF."""
    conn.send(("ready", os.getpid(), load_seconds))
    while True:
        try:
            inputs = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", prover.prove(inputs)))
        except Exception as exc:  # WitnessError and the like: this worker keeps serving
            conn.send(("error", exc))


def _fork_worker(loader: int, conn: Connection, prover: Prover, load_seconds: float,
                 inherited: list[Connection]) -> int:
    """Fork a worker serving on ``conn``; it closes the ``inherited`` ends it must not hold."""
    pid = os.fork()
    if pid == 0:
        _die_with_parent(loader)
        for other in inherited:
            other.close()
        try:
            _serve(conn, prover, load_seconds)
        finally:
            os._exit(0)  # never run the loader's exit handlers in a worker
    return pid


def _reap(children: set[int]) -> None:
    for pid in list(children):
        if os.waitpid(pid, os.WNOHANG)[0]:
            children.discard(pid)


def _loader(directory: str, control: Connection, workers: list[Connection]) -> None:
    """The loader process (spawned): load the key once, fork one worker per pipe in
    ``workers`` sharing it copy-on-write, then obey ``control``: ``"fork"`` forks one more
    worker from the same key and sends this process's end of its pipe back as a file
    descriptor; ``"stop"`` or EOF ends every worker and the loader."""
    started = time.monotonic()
    prover = Prover(CircuitArtifacts.load(Path(directory)))
    load_seconds = time.monotonic() - started
    loader, parent = os.getpid(), os.getppid()
    children = set()
    for index, conn in enumerate(workers):
        others = [control, *workers[:index], *workers[index + 1 :]]
        children.add(_fork_worker(loader, conn, prover, load_seconds, others))
    for conn in workers:
        conn.close()  # the worker's EOF is then the parent's close alone
    while True:
        try:
            if control.recv() != "fork":
                break
        except EOFError:
            break
        _reap(children)
        ours, theirs = multiprocessing.Pipe()
        children.add(_fork_worker(loader, theirs, prover, load_seconds, [control, ours]))
        theirs.close()
        reduction.send_handle(control, ours.fileno(), parent)
        ours.close()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)


class _WorkerLost(ProofError):
    """A worker died (or its pool was closed) before it answered."""


class _Workers:
    """One loader and the workers it forked; a worker that dies is replaced by a fresh fork
    of the loader's key. ``broken`` once the loader is gone."""

    def __init__(self, directory: str, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.control, loader_control = context.Pipe()
        pipes = [context.Pipe() for _ in range(size)]
        self.process = context.Process(
            target=_loader,
            args=(directory, loader_control, [child for _, child in pipes]),
            name="prover-loader",
            daemon=True,
        )
        self.process.start()
        # Only the loader and its workers hold these ends now: a dead worker means EOF here.
        loader_control.close()
        for _, child in pipes:
            child.close()
        self.idle: asyncio.Queue[tuple[int, Connection]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()
        self.broken = False
        self.forking = asyncio.Lock()  # one replacement at a time on ``control``
        self.replacing: set[asyncio.Future[None]] = set()
        self.warming = [asyncio.ensure_future(self._warm(slot, conn)) for slot, (conn, _) in enumerate(pipes)]

    async def _warm(self, slot: int, conn: Connection) -> tuple[int, float]:
        try:
            _tag, pid, load_seconds = await _receive(conn)
        except (EOFError, OSError) as exc:
            raise ProofError(f"a prover worker could not load the proving key: {exc!r}") from exc
        self._idle(slot, conn)
        return pid, load_seconds

    def _idle(self, slot: int, conn: Connection) -> None:
        # An idle worker sends nothing: its pipe turning readable means it died (EOF).
        asyncio.get_running_loop().add_reader(conn.fileno(), self._lost, slot, conn)
        self.idle.put_nowait((slot, conn))

    def _lost(self, slot: int, conn: Connection) -> None:
        """Worker ``slot`` died: have the loader fork its replacement."""
        if not conn.closed:
            asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()  # ``prove`` skips it if it is still queued as idle
        if self.closed.done():
            return
        replacing = asyncio.ensure_future(self._replace(slot))
        self.replacing.add(replacing)
        replacing.add_done_callback(self.replacing.discard)

    async def ready(self) -> list[tuple[int, float]]:
        while True:
            if self.replacing:
                await asyncio.wait(list(self.replacing))
            warming = list(self.warming)
            loaded = await asyncio.gather(*warming)
            if warming == self.warming and not self.replacing:  # none replaced meanwhile
                return list(loaded)

    async def prove(self, inputs: dict[str, Any]) -> Proof:
        """``inputs`` proven by the next idle worker; raises ``_WorkerLost`` if it dies."""
        while True:
            getting = asyncio.ensure_future(self.idle.get())
            try:
                await asyncio.wait([getting, self.closed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getting.done():
                    getting.cancel()
            if getting.cancelled():
                raise _WorkerLost("a prover worker died and its loader with it")
            slot, conn = getting.result()
            if not conn.closed:  # else it died while idle
                break
        asyncio.get_running_loop().remove_reader(conn.fileno())
        # Shielded: a caller that gives up still lets the worker finish and go back idle,
        # so its pipe never carries a stale answer.
        tag, value = await asyncio.shield(self._exchange(slot, conn, inputs))
        if tag == "error":
            raise value
        return value

    async def _exchange(self, slot: int, conn: Connection, inputs: dict[str, Any]) -> tuple[str, Any]:
        try:
            # send may fill the pipe with a large batch: off the loop; the answer comes back
            # through a loop reader, so no thread waits out the proof.
            await asyncio.to_thread(conn.send, inputs)
            answer = await _receive(conn)
        except (EOFError, OSError) as exc:
            self._lost(slot, conn)
            raise _WorkerLost(f"a prover worker died: {exc!r}") from exc
        self._idle(slot, conn)
        return answer

    async def _replace(self, slot: int) -> None:
        async with self.forking:
            try:
                self.control.send("fork")
                await _readable(self.control)
                conn = Connection(reduction.recv_handle(self.control))
            except (EOFError, OSError, RuntimeError):  # the loader is gone
                self.broken = True
                if not self.closed.done():
                    self.closed.set_result(None)
                return
        self.warming[slot] = asyncio.ensure_future(self._warm(slot, conn))

    async def close(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for task in [*self.warming, *self.replacing]:
            task.cancel()
        while not self.idle.empty():
            _slot, conn = self.idle.get_nowait()
            if not conn.closed:
                asyncio.get_running_loop().remove_reader(conn.fileno())
                conn.close()
        try:
            self.control.send("stop")
        except OSError:  # the loader is gone already
            pass
        self.control.close()
        process = self.process
        if all(warming.done() for warming in self.warming):
            # The loader waits on ``control`` once its workers run: it ends them and exits.
            await asyncio.to_thread(process.join, 2)
        if process.is_alive():  # still loading (it reads no pipe then) or stuck
            process.kill()  # its workers, if any, die with it (PR_SET_PDEATHSIG)
            await asyncio.to_thread(process.join, 5)


async def _readable(conn: Connection) -> None:
    """Wait, on the loop and without a thread, until ``conn`` has data or reached EOF."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())


async def _receive(conn: Connection) -> Any:
    """The next message on ``conn``; raises ``EOFError`` when the other end is gone."""
    await _readable(conn)
    return conn.recv()


class LocalProverPool:
    """``size`` worker processes on this machine sharing one load of the circuit's proving key.

    A loader process is started with ``spawn`` (the processor runs threads and an event loop,
    which ``fork`` would copy mid-flight): it loads the key once (groth16py's load checks
    every G2 point, minutes at N=256), then forks ``size`` workers that share it copy-on-write,
    each serving proofs over its own pipe. ``start()`` and ``prove()`` never block the caller's
    loop on it. A worker that dies loses only its proof (``ProofError``): the loader forks a
    replacement from the key it still holds; if the loader is gone too, the next call starts
    a fresh one. Workers end with their loader (Linux ``PR_SET_PDEATHSIG``) and the loader
    when its pipe to this process closes.
    """

    def __init__(self, artifacts: CircuitArtifacts, size: int | None = None) -> None:
        self.artifacts = artifacts
        self.size = size if size is not None else default_pool_size()
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")
        self._verifier = ProofVerifier(artifacts)
        self._workers: _Workers | None = None

    async def _current(self) -> _Workers:
        if self._workers is not None and self._workers.broken:
            await self.aclose()
        if self._workers is None:
            self._workers = _Workers(str(self.artifacts.directory), self.size)
        return self._workers

    async def start(self) -> None:
        """Start the loader; it loads the key once and forks the workers."""
        await self._current()

    async def ready(self) -> list[tuple[int, float]]:
        """Start the workers if need be and wait until each holds the key: ``(pid, load
        seconds)`` per worker (one load, so the same seconds for all). Raises ``ProofError``
        if the key cannot be loaded."""
        workers = await self._current()
        try:
            return await workers.ready()
        except ProofError:
            await self.aclose()
            raise

    async def prove(self, inputs: Mapping[str, Any]) -> Proof:
        workers = await self._current()
        return await workers.prove(dict(inputs))

    def verify(self, proof: Proof) -> bool:
        return self._verifier.verify(proof)

    async def aclose(self) -> None:
        workers, self._workers = self._workers, None
        if workers is not None:
            await workers.close()
