"""Groth16 proofs for the batch circuit (circuits/batch.circom, docs/PROTOCOL.md §5).

A ``Prover`` loads the proving key once (tens of MB, seconds to load) and then turns circuit
input dicts into proofs: circom's witness generator computes the witness (and fails if any
constraint does not hold), then ``groth16py.prove_wtns`` proves it. The generator is circom's
C++ one when it has been built for these artifacts and this machine's toolchain
(``settlement.artifacts.build_native_witness``; several times faster, byte-identical
witnesses), else circom's Node/WASM one. Proving releases the GIL but takes seconds, so async
callers run it in a thread::

    prover = Prover(build_artifacts(16, 8, 4))
    proof = await asyncio.to_thread(prover.prove, inputs)
    assert prover.verify(proof)

``inputs`` maps each input signal of ``Batch(N, I, P, D)`` to an int or a nested list of
ints, as ``settlement.witness.build_statement`` lays them out: public ``timeRef``,
``intentHash[I]``, ``intentWord[I]``, ``payeeWord[P]``; private intent-slot openings and
allowlist paths, and the mandate columns (circuits/batch.circom names them all).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import groth16py

from aep2.fields import FIELD_MODULUS

from .artifacts import CircuitArtifacts, NativeWitness, find_native_witness

__all__ = ["Proof", "Prover", "ProofVerifier", "WitnessError", "ProofError", "compute_witness", "public_inputs"]


class ProofError(Exception):
    """Base class of this module's errors."""


class WitnessError(ProofError):
    """The inputs do not satisfy the circuit (or are malformed); ``stderr`` is the witness
    generator's output (node's error trace, or the C++ generator's ``Failed assert in
    template/function …`` line and its abort message)."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(f"{message}\n{stderr}".rstrip())
        self.stderr = stderr


@dataclass(frozen=True)
class Proof:
    """A Groth16 proof and the public inputs it proves.

    ``words`` is groth16py's Ethereum proof blob as 8 integers:
    ``a[0], a[1], b[0][0], b[0][1], b[1][0], b[1][1], c[0], c[1]`` (``b``'s Fp2 coordinates
    already in the (c1, c0) order the Solidity verifier expects), i.e. the ``uint256[8]``
    of ``settleBatch``. ``public_inputs`` is the PROTOCOL.md §5 order.
    """

    words: tuple[int, ...]
    public_inputs: tuple[int, ...]
    seconds: float

    def to_bytes(self) -> bytes:
        """The 256-byte Ethereum proof blob."""
        return b"".join(word.to_bytes(32, "big") for word in self.words)

    def solidity_args(self) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """``(a, b, c, input)`` for the snarkjs-style ``verifyProof``."""
        w = self.words
        return [w[0], w[1]], [[w[2], w[3]], [w[4], w[5]]], [w[6], w[7]], list(self.public_inputs)


def public_inputs(inputs: Mapping[str, Any]) -> tuple[int, ...]:
    """The public inputs of a circuit input dict, in PROTOCOL.md §5 order."""
    try:
        values = [
            int(inputs["timeRef"]),
            *(int(v) for v in inputs["intentHash"]),
            *(int(v) for v in inputs["intentWord"]),
            *(int(v) for v in inputs["payeeWord"]),
        ]
    except KeyError as exc:
        raise WitnessError(f"missing public input {exc.args[0]!r}") from exc
    return tuple(values)


def _to_json(value: Any, name: str) -> Any:
    # Decimal strings: node's JSON.parse would round integers above 2^53.
    if isinstance(value, (list, tuple)):
        return [_to_json(v, name) for v in value]
    if isinstance(value, bool) or not isinstance(value, int):
        raise WitnessError(f"input {name!r} must be an int or nested lists of ints")
    if not 0 <= value < FIELD_MODULUS:
        raise WitnessError(f"input {name!r} has a value outside the field: {value}")
    return str(value)


class ProofVerifier:
    """Checks proofs of one ``Batch(N, I, P, D)`` circuit in process with its verifying key
    (milliseconds; no proving key needed)."""

    def __init__(self, artifacts: CircuitArtifacts) -> None:
        self.artifacts = artifacts
        vk = groth16py.VerifyingKey.from_snarkjs_file(str(artifacts.verifying_key))
        self._verifier = groth16py.Verifier(vk)

    def verify(self, proof: Proof) -> bool:
        """Whether ``proof`` verifies against its public inputs (never raises)."""
        if len(proof.words) != 8 or len(proof.public_inputs) != self.artifacts.n_public:
            return False
        if any(not 0 <= v < FIELD_MODULUS for v in proof.public_inputs):
            return False
        try:
            return bool(self._verifier.verify(proof.to_bytes(), list(proof.public_inputs)))
        except (OverflowError, ValueError, groth16py.VerificationError, groth16py.EncodingError):
            return False


def compute_witness(
    artifacts: CircuitArtifacts,
    inputs: Mapping[str, Any],
    wtns_path: Path,
    *,
    native: NativeWitness | None = None,
    node: str = "node",
) -> None:
    """Write the witness of ``inputs`` to ``wtns_path`` (iden3 ``.wtns``), with ``native`` (the
    C++ generator of ``artifacts``) when given, else with the WASM generator run by ``node``.

    Raises ``WitnessError`` when an input is malformed or outside the field, or a constraint
    does not hold (both generators then write no witness); ``inputs`` is written beside
    ``wtns_path`` as ``<stem>.input.json``.
    """
    payload = {name: _to_json(value, name) for name, value in inputs.items()}
    input_path = wtns_path.with_suffix(".input.json")
    input_path.write_text(json.dumps(payload))
    if native is not None:
        command = native.command(input_path, wtns_path)
    else:
        command = artifacts.wasm_witness_command(input_path, wtns_path, node=node)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wtns_path.is_file():
        # The C++ generator names the failed assert on stdout, then aborts on stderr.
        output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
        raise WitnessError(
            "witness generation failed (a constraint does not hold or an input is malformed)", output
        )


class Prover:
    """Proves ``Batch(N, I, P, D)`` statements with a proving key held in memory.

    Loading the key holds the GIL for about 6–7 MB/s of key (seconds at N=16, minutes at
    N=256): a long-running service loads it in a worker (``settlement.provers``).
    ``native=False`` keeps the WASM witness generator even where the C++ one is built;
    ``compiler`` names the toolchain the C++ one was built with (see ``find_native_witness``).
    """

    def __init__(self, artifacts: CircuitArtifacts, *, node: str = "node", native: bool = True,
                 compiler: str = "g++") -> None:
        self.artifacts = artifacts
        self._node = node
        self._native = find_native_witness(artifacts, compiler=compiler) if native else None
        self._pk = groth16py.ProvingKey.load(str(artifacts.proving_key))
        self._verifier = ProofVerifier(artifacts)

    @property
    def witness_generator(self) -> str:
        """``"native"`` (circom's C++ generator) or ``"wasm"`` (circom's Node/WASM one)."""
        return "native" if self._native is not None else "wasm"

    def witness(self, inputs: Mapping[str, Any], wtns_path: Path) -> None:
        """Compute the witness file for ``inputs``; raises ``WitnessError`` if unsatisfiable."""
        compute_witness(self.artifacts, inputs, wtns_path, native=self._native, node=self._node)

    def prove(self, inputs: Mapping[str, Any]) -> Proof:
        """Prove ``inputs`` (the circuit input JSON as a dict of ints / nested lists)."""
        started = time.monotonic()
        publics = public_inputs(inputs)
        with tempfile.TemporaryDirectory(prefix="aep2-prove-") as tmp:
            wtns = Path(tmp) / "witness.wtns"
            self.witness(inputs, wtns)
            try:
                blob = groth16py.prove_wtns(self._pk, str(wtns))
            except Exception as exc:  # groth16py errors on a witness that does not fit the key
                raise WitnessError(f"proving failed: {exc}") from exc
        words = tuple(int.from_bytes(blob[k : k + 32], "big") for k in range(0, 256, 32))
        return Proof(words=words, public_inputs=publics, seconds=time.monotonic() - started)

    def verify(self, proof: Proof) -> bool:
        """Check ``proof`` against its public inputs with the verifying key (in process)."""
        return self._verifier.verify(proof)
