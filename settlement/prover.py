"""Groth16 proofs for the batch circuit (circuits/batch.circom, docs/PROTOCOL.md §5).

A ``Prover`` loads the proving key once (tens of MB, seconds to load) and then turns circuit
input dicts into proofs: circom's Node witness generator computes the witness (and fails if
any constraint does not hold), then ``groth16py.prove_wtns`` proves it. Proving releases the
GIL but takes seconds, so async callers run it in a thread::

    prover = Prover(build_artifacts(16, 8, 4))
    proof = await asyncio.to_thread(prover.prove, inputs)
    assert prover.verify(proof)

``inputs`` maps each input signal of ``Batch(N, I, P)`` to an int or a nested list of ints:
public ``timeRef``, ``keyHash[I]``, ``intentWord[I]``, ``payeeWord[P]``; private ``Ax[I]``,
``Ay[I]``, ``intentField[I]``, ``enabled[N]``, ``intentSel[N][I]``, ``payeeSel[N][P]``,
``amount[N]``, ``nonce[N]``, ``deadline[N]``, ``requestHash[N]``, ``R8x[N]``, ``R8y[N]``, ``S[N]``.
A padding mandate slot has ``enabled = 0``, all selectors, ``amount``, ``nonce``, ``deadline``
and ``requestHash`` 0, and carries ``padding_signature()``; an unused intent slot has
``keyHash = intentWord = Ax = Ay = intentField = 0``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import groth16py

from aep2.eddsa import SessionKey, Signature
from aep2.fields import FIELD_MODULUS
from aep2.poseidon import poseidon

from .artifacts import CircuitArtifacts

__all__ = [
    "Proof",
    "Prover",
    "WitnessError",
    "ProofError",
    "pack_intent_word",
    "pack_payee_word",
    "public_inputs",
    "padding_signature",
    "PADDING_MESSAGE",
    "PADDING_SECRET",
]

# Field widths inside the packed public words (PROTOCOL.md §5).
_INTENT_FIELDS = (("startNonce", 40), ("lastNonce", 40), ("count", 16), ("total", 88), ("cap", 64))
_PAYEE_FIELDS = (("payee", 160), ("amount", 93))

# A padding slot verifies (with the check switched off) against the base point B8, i.e. the
# key with secret scalar 1, over the message of an all-zero mandate (circuits/batch.circom).
PADDING_SECRET = 1
PADDING_MESSAGE = poseidon(0, 0, 0)


class ProofError(Exception):
    """Base class of this module's errors."""


class WitnessError(ProofError):
    """The inputs do not satisfy the circuit (or are malformed); ``stderr`` is node's output."""

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


def _pack(fields: tuple[tuple[str, int], ...], values: tuple[int, ...]) -> int:
    word = 0
    shift = 0
    for (name, bits), value in zip(fields, values):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} = {value} does not fit in {bits} bits")
        word |= value << shift
        shift += bits
    return word


def pack_intent_word(start: int, last: int, count: int, total: int, cap: int) -> int:
    """``startNonce + lastNonce·2^40 + count·2^80 + total·2^96 + cap·2^184`` (range-checked)."""
    return _pack(_INTENT_FIELDS, (start, last, count, total, cap))


def pack_payee_word(payee: int, amount: int) -> int:
    """``payee + amount·2^160`` (payee < 2^160, amount < 2^93)."""
    return _pack(_PAYEE_FIELDS, (payee, amount))


@lru_cache(maxsize=1)
def padding_signature() -> Signature:
    """The signature a padding mandate slot carries (key B8, message ``PADDING_MESSAGE``)."""
    return SessionKey(PADDING_SECRET).sign(PADDING_MESSAGE)


def public_inputs(inputs: Mapping[str, Any]) -> tuple[int, ...]:
    """The public inputs of a circuit input dict, in PROTOCOL.md §5 order."""
    try:
        values = [
            int(inputs["timeRef"]),
            *(int(v) for v in inputs["keyHash"]),
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


class Prover:
    """Proves ``Batch(N, I, P)`` statements with a proving key held in memory."""

    def __init__(self, artifacts: CircuitArtifacts, *, node: str = "node") -> None:
        self.artifacts = artifacts
        self._node = node
        self._pk = groth16py.ProvingKey.load(str(artifacts.proving_key))
        vk = groth16py.VerifyingKey.from_snarkjs_file(str(artifacts.verifying_key))
        self._verifier = groth16py.Verifier(vk)

    def witness(self, inputs: Mapping[str, Any], wtns_path: Path) -> None:
        """Compute the witness file for ``inputs``; raises ``WitnessError`` if unsatisfiable."""
        payload = {name: _to_json(value, name) for name, value in inputs.items()}
        input_path = wtns_path.with_suffix(".input.json")
        input_path.write_text(json.dumps(payload))
        result = subprocess.run(
            [
                self._node,
                str(self.artifacts.generate_witness_js),
                str(self.artifacts.wasm),
                str(input_path),
                str(wtns_path),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not wtns_path.is_file():
            raise WitnessError(
                "witness generation failed (a constraint does not hold or an input is malformed)",
                (result.stderr or result.stdout).strip(),
            )

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
        if len(proof.words) != 8 or len(proof.public_inputs) != self.artifacts.n_public:
            return False
        if any(not 0 <= v < FIELD_MODULUS for v in proof.public_inputs):
            return False
        try:
            return bool(self._verifier.verify(proof.to_bytes(), list(proof.public_inputs)))
        except (OverflowError, ValueError, groth16py.VerificationError, groth16py.EncodingError):
            return False
