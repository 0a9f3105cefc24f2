"""Prover actors on a Ray cluster: one processor's proofs made on many machines.

``RayProverPool`` satisfies ``settlement.provers.ProverPool``. Each prover is a Ray actor,
its own process on some node of the cluster, that loads the circuit's proving key once in
its constructor and then makes witnesses and Groth16 proofs on request::

    provers = RayProverPool(artifacts, address="auto")   # join the cluster `ray start` made
    await provers.start()                                # connect, create the actors
    proof = await provers.prove(statement.inputs)        # on whichever actor is idle
    assert provers.verify(proof)                         # in process, verifying key only
    await provers.aclose()                               # kill the actors, disconnect

``address`` is what ``ray.init`` takes: ``"local"`` starts a Ray of this machine's cores for
this process (stopped again by ``aclose``), ``"auto"`` joins the cluster running on this
machine (``RAY_ADDRESS`` or the last ``ray start``), ``"<host>:6379"`` a given head, and
``"ray://<host>:10001"`` a remote head through Ray Client. A Ray this process had already
initialised is used as it is and left running.

Every actor must find the very build of the processor's circuit, keys included: the
processor's artifact directory when the actor runs on its machine (or a shared filesystem),
otherwise ``<cache>/<hash>`` in the node's own cache (``$AEP2_CACHE_DIR`` or
``~/.cache/aep2-gateway/circuits``, copied there from the processor's). An actor never
builds: a development setup run elsewhere would make other keys under the same hash. It
refuses to start, naming the node and the directory, when the build is missing or its
verifying key differs from the processor's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from .artifacts import CircuitArtifacts, default_cache_dir
from .prover import Proof, ProofError, ProofVerifier, Prover
from .provers import default_pool_size

__all__ = ["RayProverPool", "ProverInfo", "ArtifactsMismatch", "find_artifacts"]

logger = logging.getLogger("settlement.ray_provers")


class ArtifactsMismatch(ProofError):
    """A node lacks the processor's circuit build, or holds other keys under its hash."""


class ProverInfo(NamedTuple):
    """Where a prover actor runs: its node's IP, its process id, and how long its key took to load (s)."""

    node_ip: str
    pid: int
    load_seconds: float


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_artifacts(circuit_hash: str, verifying_key_digest: str, directory: str) -> CircuitArtifacts:
    """This node's build of circuit ``circuit_hash``: ``directory`` if it holds it, else the cache's.

    Raises ``ArtifactsMismatch`` when neither holds a complete build or its verifying key's
    sha256 is not ``verifying_key_digest``.
    """
    node = ray.util.get_node_ip_address() if ray.is_initialized() else "this node"
    candidates = [Path(directory), default_cache_dir() / circuit_hash]
    found = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if found is None:
        raise ArtifactsMismatch(
            f"circuit artifacts {circuit_hash} are not on {node}: copy the processor's {directory} "
            f"to {candidates[1]} there (or set AEP2_CACHE_DIR on that node)"
        )
    artifacts = CircuitArtifacts.load(found)
    if artifacts.hash != circuit_hash or _digest(artifacts.verifying_key) != verifying_key_digest:
        raise ArtifactsMismatch(
            f"{found} on {node} holds other keys than the processor's circuit {circuit_hash} "
            "(a separate setup?): copy the processor's build there"
        )
    return artifacts


@ray.remote(num_cpus=1, max_restarts=0)
class _ProverActor:
    """One prover process on a Ray node; its constructor loads the proving key."""

    def __init__(self, circuit_hash: str, verifying_key_digest: str, directory: str) -> None:
        started = time.monotonic()
        self._prover = Prover(find_artifacts(circuit_hash, verifying_key_digest, directory))
        self._info = ProverInfo(ray.util.get_node_ip_address(), os.getpid(), time.monotonic() - started)

    def info(self) -> ProverInfo:
        return self._info

    def prove(self, inputs: Mapping[str, Any]) -> Proof:
        return self._prover.prove(inputs)


class RayProverPool:
    """``size`` prover actors on a Ray cluster, each holding the circuit's proving key.

    ``size`` defaults to this machine's cores for ``address="local"`` and to the cluster's
    CPUs otherwise (known once ``start()`` has connected). Each actor asks Ray for
    ``cpus_per_prover`` CPUs (groth16py proves on one thread), so Ray spreads the actors over
    the nodes with free CPUs; an actor for which no node has room waits until one has.
    ``prove`` hands a statement to an idle actor, so at most ``size`` proofs run at once.
    An actor that dies (its process or node lost) fails only its proof with ``ProofError``
    and is replaced by a new one.
    """

    def __init__(
        self,
        artifacts: CircuitArtifacts,
        size: int | None = None,
        *,
        address: str = "local",
        cpus_per_prover: float = 1,
    ) -> None:
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if cpus_per_prover < 0:
            raise ValueError(f"cpus_per_prover must not be negative, got {cpus_per_prover}")
        self.artifacts = artifacts
        self.address = address
        self.size = size if size is not None else default_pool_size()
        self._size_from_cluster = size is None and address != "local"
        self._cpus = cpus_per_prover
        self._verifier = ProofVerifier(artifacts)
        self._key = (artifacts.hash, _digest(artifacts.verifying_key), str(artifacts.directory))
        self._owns_ray = False
        self._actors: list[Any] = []
        self._idle: asyncio.Queue[Any] | None = None
        self._starting = asyncio.Lock()  # a prove() racing start() must not init Ray twice

    async def start(self) -> None:
        """Connect to Ray (starting it for ``"local"``) and create the actors.

        Returns once the actors are requested; each loads its key in its own process.
        Raises ``ConnectionError`` when ``"auto"`` or an address finds no cluster.
        """
        async with self._starting:
            if self._idle is not None:
                return
            if not ray.is_initialized():
                options: dict[str, Any] = {"include_dashboard": False}
                if self.address == "local":
                    options["num_cpus"] = max(default_pool_size(), int(self.size * self._cpus))
                # ray.init blocks for seconds while it starts or reaches the cluster.
                await asyncio.to_thread(ray.init, address=self.address, **options)
                self._owns_ray = True
            if self._size_from_cluster:
                cpus = ray.cluster_resources().get("CPU", 1)
                self.size = max(1, int(cpus // self._cpus if self._cpus else cpus))
            idle: asyncio.Queue[Any] = asyncio.Queue()
            for _ in range(self.size):
                idle.put_nowait(self._new_actor())
            self._idle = idle
        logger.info("%d prover actors requested on Ray (%s)", self.size, self.address)

    def _new_actor(self) -> Any:
        actor = _ProverActor.options(num_cpus=self._cpus).remote(*self._key)
        self._actors.append(actor)
        return actor

    def _replace(self, actor: Any) -> Any:
        self._actors.remove(actor)
        ray.kill(actor, no_restart=True)
        return self._new_actor()

    async def ready(self) -> list[ProverInfo]:
        """Wait until every actor holds its key (also while the cluster has no free CPU for
        one); where each runs.

        Raises ``ProofError`` (``ArtifactsMismatch``'s message in it) when an actor could not start.
        """
        await self.start()
        try:
            return list(await asyncio.gather(*(actor.info.remote() for actor in list(self._actors))))
        except RayActorError as exc:
            raise ProofError(f"a prover actor could not start: {exc}") from exc

    async def prove(self, inputs: Mapping[str, Any]) -> Proof:
        """Witness and proof of ``inputs`` on an idle actor (waits for one).

        Raises ``WitnessError`` when the inputs do not satisfy the circuit and ``ProofError``
        when the actor died (it is replaced; proving again may succeed).
        """
        await self.start()
        idle = self._idle
        assert idle is not None
        actor = await idle.get()
        try:
            return await actor.prove.remote(dict(inputs))
        except RayTaskError as exc:  # raised by the prover in the actor, which lives on
            if isinstance(exc.cause, ProofError):
                raise exc.cause from None
            raise ProofError(f"a prover actor failed: {exc}") from exc
        except RayError as exc:  # the actor's process, node or connection is gone
            if self._idle is idle:  # not closed meanwhile
                actor = self._replace(actor)
            raise ProofError(f"a prover actor died ({type(exc).__name__}): {exc}") from exc
        finally:
            idle.put_nowait(actor)

    def verify(self, proof: Proof) -> bool:
        """Check ``proof`` against its public inputs with the verifying key, in process (never raises)."""
        return self._verifier.verify(proof)

    async def aclose(self) -> None:
        """Kill the actors, then stop the Ray this pool started (a joined cluster keeps running)."""
        actors, self._actors, self._idle = self._actors, [], None
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.to_thread(ray.shutdown)
