"""Batch(N, I, P) circuit: a valid batch proves and verifies; each broken statement fails.

Every pass case has its failing cases next to it, at the field and budget boundaries
(amount == cap passes, cap + 1 fails; deadline == timeRef passes, timeRef - 1 fails; first
nonce == startNonce passes, startNonce - 1 fails). A failing case must be refused already by
the witness generator (``WitnessError``): the circuit's constraints do not hold.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import pytest

from aep2.eddsa import SessionKey, Signature
from aep2.fields import FIELD_MODULUS
from aep2.mandate import message_hash
from aep2.poseidon import poseidon
from settlement.artifacts import PROJECT_ROOT, CircuitArtifacts
from settlement.prover import (
    PADDING_MESSAGE,
    Proof,
    Prover,
    WitnessError,
    pack_intent_word,
    pack_payee_word,
    padding_signature,
    public_inputs,
)

pytestmark = pytest.mark.circuit

N, I, P = 4, 2, 2  # must match the batch_artifacts fixture (tests/circuits/conftest.py)

TIME_REF = 1_760_000_000
DEADLINE = TIME_REF + 600
PAYEES = (0x1111111111111111111111111111111111111111, 0x2222222222222222222222222222222222222222)
OUTSIDER = 0x3333333333333333333333333333333333333333


@dataclass(frozen=True)
class Intent:
    key: SessionKey
    field: int  # uint256(intentId) >> 8
    start: int  # on-chain nextNonce
    cap: int


@dataclass(frozen=True)
class Mandate:
    slot: int  # intent slot
    payee_slot: int
    amount: int
    nonce: int
    deadline: int = DEADLINE
    request_hash: int = 0xABCDEF
    signer: SessionKey | None = None  # default: the slot's session key
    signed_field: int | None = None  # default: the slot's intent field
    signed_payee: int | None = None  # default: the payee slot's address


@lru_cache(maxsize=1)
def intents() -> tuple[Intent, Intent]:
    # Fixed secrets: deterministic signatures, and reruns hit the same witness paths.
    return (
        Intent(SessionKey(0x1234567), field=(0xA1 << 240) + 1, start=0, cap=1_000),
        Intent(SessionKey(0x7654321), field=(0xB2 << 240) + 2, start=3, cap=500),
    )


def valid_mandates() -> list[Mandate]:
    """Two intents interleaved; intent 0 has a nonce gap (0, 2); intent 1 sits on its bounds."""
    return [
        Mandate(slot=0, payee_slot=0, amount=100, nonce=0),
        Mandate(slot=1, payee_slot=1, amount=500, nonce=3, deadline=TIME_REF),  # == cap, == start
        Mandate(slot=0, payee_slot=1, amount=250, nonce=2),
    ]


def build_inputs(
    slots: tuple[Intent | None, ...],
    mandates: list[Mandate],
    *,
    time_ref: int = TIME_REF,
    payees: tuple[int, ...] = PAYEES,
) -> dict[str, Any]:
    """Circuit inputs for ``mandates`` (padded to N), with honestly computed public words.

    Sums are taken mod r, as a cheating prover would (the circuit must catch the wrap).
    """
    assert len(slots) == I and len(payees) == P and len(mandates) <= N
    count = [0] * I
    total = [0] * I
    last = [0] * I
    paid = [0] * P
    inputs: dict[str, Any] = {k: [] for k in (
        "enabled", "intentSel", "payeeSel", "amount", "nonce", "deadline", "requestHash",
        "R8x", "R8y", "S")}
    for m in mandates:
        intent = slots[m.slot]
        assert intent is not None
        count[m.slot] += 1
        total[m.slot] = (total[m.slot] + m.amount) % FIELD_MODULUS
        last[m.slot] = m.nonce % 2**40  # the public word has 40 bits for it
        paid[m.payee_slot] = (paid[m.payee_slot] + m.amount) % FIELD_MODULUS
        field = intent.field if m.signed_field is None else m.signed_field
        payee = payees[m.payee_slot] if m.signed_payee is None else m.signed_payee
        message = message_hash(field, payee, m.amount, m.nonce, m.deadline, m.request_hash) if (
            m.amount < 2**64 and m.nonce < 2**40 and m.deadline < 2**40
        ) else poseidon(field, 0, 0)
        sig = (m.signer or intent.key).sign(message)
        _append_mandate(inputs, 1, [int(s == m.slot) for s in range(I)],
                        [int(p == m.payee_slot) for p in range(P)],
                        m.amount % FIELD_MODULUS, m.nonce, m.deadline, m.request_hash, sig)
    for _ in range(N - len(mandates)):
        _append_mandate(inputs, 0, [0] * I, [0] * P, 0, 0, 0, 0, padding_signature())
    key_hash, words, ax, ay, fields = [], [], [], [], []
    for s, intent in enumerate(slots):
        if intent is None:
            key_hash.append(0); words.append(0); ax.append(0); ay.append(0); fields.append(0)
            continue
        key_hash.append(intent.key.key_hash)
        words.append(pack_intent_word(intent.start, last[s], count[s], total[s], intent.cap))
        ax.append(intent.key.public_key[0])
        ay.append(intent.key.public_key[1])
        fields.append(intent.field)
    return {
        "timeRef": time_ref,
        "keyHash": key_hash,
        "intentWord": words,
        "payeeWord": [pack_payee_word(payees[p], paid[p]) for p in range(P)],
        "Ax": ax,
        "Ay": ay,
        "intentField": fields,
        **inputs,
    }


def _append_mandate(inputs: dict[str, Any], enabled: int, isel: list[int], psel: list[int],
                    amount: int, nonce: int, deadline: int, request_hash: int,
                    sig: Signature) -> None:
    for key, value in (("enabled", enabled), ("intentSel", isel), ("payeeSel", psel),
                       ("amount", amount), ("nonce", nonce), ("deadline", deadline),
                       ("requestHash", request_hash), ("R8x", sig.R8x), ("R8y", sig.R8y),
                       ("S", sig.S)):
        inputs[key].append(value)


def valid_inputs() -> dict[str, Any]:
    return build_inputs(intents(), valid_mandates())


def repack_intent(inputs: dict[str, Any], slot: int, **changes: int) -> dict[str, Any]:
    """Copy of ``inputs`` with fields of one intent word replaced."""
    word = inputs["intentWord"][slot]
    fields = {"start": word & (2**40 - 1), "last": (word >> 40) & (2**40 - 1),
              "count": (word >> 80) & 0xFFFF, "total": (word >> 96) & (2**88 - 1),
              "cap": word >> 184}
    fields.update(changes)
    words = list(inputs["intentWord"])
    words[slot] = pack_intent_word(**fields)
    return {**inputs, "intentWord": words}


def set_mandate(inputs: dict[str, Any], j: int, **changes: Any) -> dict[str, Any]:
    """Copy of ``inputs`` with mandate slot ``j``'s private values replaced."""
    out = dict(inputs)
    for key, value in changes.items():
        column = list(out[key])
        column[j] = value
        out[key] = column
    return out


CIRCUIT_SOURCE = (PROJECT_ROOT / "circuits" / "batch.circom").read_text().splitlines()


def assert_unprovable(prover: Prover, inputs: dict[str, Any], at: str) -> None:
    """The witness generator refuses ``inputs`` at the Batch line containing ``at``.

    Pinning the failing constraint keeps a case from passing for an unrelated reason.
    """
    lines = {n for n, text in enumerate(CIRCUIT_SOURCE, 1) if at in text}
    assert lines, f"marker {at!r} not in batch.circom"
    with pytest.raises(WitnessError) as info:
        prover.prove(inputs)
    failed = re.findall(r"Error in template Batch_\d+ line: (\d+)", info.value.stderr)
    assert failed and int(failed[-1]) in lines, info.value.stderr


# --------------------------------------------------------------------------------------
# Pass case and the public-input binding


@pytest.fixture(scope="module")
def valid_proof(batch_prover: Prover) -> Proof:
    return batch_prover.prove(valid_inputs())


def test_valid_batch_proves_and_verifies(batch_prover: Prover, valid_proof: Proof) -> None:
    assert batch_prover.verify(valid_proof)
    assert len(valid_proof.words) == 8
    assert valid_proof.public_inputs == public_inputs(valid_inputs())
    assert len(valid_proof.public_inputs) == 1 + 2 * I + P
    # Public words carry exactly what the contract will settle.
    a, b = valid_proof.public_inputs[1 + I : 1 + 2 * I]
    assert a == pack_intent_word(0, 2, 2, 350, 1_000)
    assert b == pack_intent_word(3, 3, 1, 500, 500)
    assert valid_proof.public_inputs[1 + 2 * I :] == (
        pack_payee_word(PAYEES[0], 100), pack_payee_word(PAYEES[1], 750))


@pytest.mark.parametrize("index", range(1 + 2 * I + P))
def test_changing_any_public_input_fails_verification(
    batch_prover: Prover, valid_proof: Proof, index: int
) -> None:
    publics = list(valid_proof.public_inputs)
    publics[index] = (publics[index] + 1) % FIELD_MODULUS
    assert not batch_prover.verify(replace(valid_proof, public_inputs=tuple(publics)))


def test_tampered_proof_fails_verification(batch_prover: Prover, valid_proof: Proof) -> None:
    words = list(valid_proof.words)
    words[6] ^= 1
    assert not batch_prover.verify(replace(valid_proof, words=tuple(words)))


def test_single_intent_with_unused_slot_proves(batch_prover: Prover) -> None:
    inputs = build_inputs((intents()[0], None), [Mandate(slot=0, payee_slot=0, amount=1, nonce=7)])
    assert batch_prover.verify(batch_prover.prove(inputs))


# --------------------------------------------------------------------------------------
# Soundness: each statement below is false, so no witness exists


def _with(index: int, **changes: Any) -> list[Mandate]:
    mandates = valid_mandates()
    mandates[index] = replace(mandates[index], **changes)
    return mandates


SIGNATURE = "sigCheck[j].M <=="  # EdDSAPoseidonVerifier fails when its last input arrives
NONCE_ORDER = "nonceCheck[j].out === 0"

BROKEN_MANDATES: dict[str, tuple[list[Mandate] | None, str]] = {
    "wrong_signature": (None, SIGNATURE),  # built in the test: S + 1
    "signed_by_other_intents_key": (_with(0, signer=intents()[1].key), SIGNATURE),
    "signed_for_other_intent_field": (_with(0, signed_field=intents()[1].field), SIGNATURE),
    "payee_not_in_slots": (_with(0, signed_payee=OUTSIDER), SIGNATURE),
    "amount_2_pow_64": (_with(0, amount=2**64), "amountBits[j].in <== amount[j]"),
    # r - 1 would make the slot total 100 + (r - 1) = 99 (mod r): the range check stops it.
    "amount_negative_wraps_field": (_with(2, amount=FIELD_MODULUS - 1),
                                    "amountBits[j].in <== amount[j]"),
    "amount_over_cap": (_with(1, amount=501), "capCheck[j].out === 1"),
    "repeated_nonce": (_with(2, nonce=0), NONCE_ORDER),
    "decreasing_nonce": ([replace(valid_mandates()[0], nonce=2), valid_mandates()[1],
                          replace(valid_mandates()[2], nonce=1)], NONCE_ORDER),
    "first_nonce_below_start": (_with(1, nonce=2), NONCE_ORDER),
    "nonce_over_40_bits": (_with(2, nonce=2**40 + 2), "nonceBits[j].in <== nonce[j]"),
    "deadline_before_time_ref": (_with(1, deadline=TIME_REF - 1),
                                 "deadlineCheck[j].out * enabled[j] === 0"),
    # The signed message packs requestHash, nonce and deadline into one element: each part
    # must stay in its bits, or another split of the same element would verify.
    "deadline_over_40_bits": (_with(1, deadline=2**40 + TIME_REF), "deadlineBits[j].in <== deadline[j]"),
    "request_hash_over_160_bits": (_with(0, request_hash=2**160 + 1), "requestBits[j].in <== requestHash[j]"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MANDATES))
def test_broken_mandate_is_unprovable(batch_prover: Prover, case: str) -> None:
    mandates, at = BROKEN_MANDATES[case]
    if mandates is None:
        inputs = valid_inputs()
        inputs = set_mandate(inputs, 0, S=(inputs["S"][0] + 1))
    else:
        inputs = build_inputs(intents(), mandates)
    assert_unprovable(batch_prover, inputs, at)


@pytest.mark.parametrize(
    ("changes", "at"),
    [
        ({"total": 351}, "total[s] === sum"),
        ({"total": 349}, "total[s] === sum"),
        ({"count": 1}, "count[s] === cnt"),
        ({"count": 3}, "count[s] === cnt"),
        ({"last": 0}, "count[s] * (nextAllowed[N][s] - 1 - lastNonce[s]) === 0"),
        ({"last": 3}, "count[s] * (nextAllowed[N][s] - 1 - lastNonce[s]) === 0"),
        ({"start": 1}, NONCE_ORDER),  # nonce 0 is now below startNonce
        ({"cap": 249}, "capCheck[j].out === 1"),  # the 250 mandate is over the cap
    ],
    ids=lambda c: "_".join(f"{k}{v}" for k, v in c.items()) if isinstance(c, dict) else "",
)
def test_public_intent_word_not_matching_is_unprovable(
    batch_prover: Prover, changes: dict[str, int], at: str
) -> None:
    assert_unprovable(batch_prover, repack_intent(valid_inputs(), 0, **changes), at)


def test_public_payee_amount_not_matching_is_unprovable(batch_prover: Prover) -> None:
    inputs = valid_inputs()
    words = list(inputs["payeeWord"])
    words[0] = pack_payee_word(PAYEES[0], 101)
    assert_unprovable(batch_prover, {**inputs, "payeeWord": words}, "payeeAmount[p] === sum")


def test_time_ref_over_64_bits_is_unprovable(batch_prover: Prover) -> None:
    assert_unprovable(batch_prover, {**valid_inputs(), "timeRef": 2**64 + TIME_REF},
                      "timeBits.in <== timeRef")


def test_padding_slot_carrying_value_is_unprovable(batch_prover: Prover) -> None:
    inputs = valid_inputs()
    assert inputs["enabled"][3] == 0
    assert_unprovable(batch_prover, set_mandate(inputs, 3, amount=5),
                      "(1 - enabled[j]) * amount[j] === 0")


def test_padding_slot_selecting_an_intent_is_unprovable(batch_prover: Prover) -> None:
    inputs = set_mandate(valid_inputs(), 3, intentSel=[1, 0])
    assert_unprovable(batch_prover, repack_intent(inputs, 0, count=3), "acc === enabled[j]")


def test_selector_not_one_hot_is_unprovable(batch_prover: Prover) -> None:
    # Sums to enabled = 1 but is not boolean: would mix two intents' keys and caps.
    assert_unprovable(batch_prover, set_mandate(valid_inputs(), 0, intentSel=[2, FIELD_MODULUS - 1]),
                      "intentSel[j][s] * (1 - intentSel[j][s]) === 0")


def test_unused_intent_slot_with_nonzero_word_is_unprovable(batch_prover: Prover) -> None:
    inputs = build_inputs((intents()[0], None), [Mandate(slot=0, payee_slot=0, amount=1, nonce=7)])
    words = list(inputs["intentWord"])
    words[1] = pack_intent_word(0, 0, 0, 0, 1)
    assert_unprovable(batch_prover, {**inputs, "intentWord": words},
                      "slotUnused[s].out * intentWord[s] === 0")


def test_intent_without_mandates_cannot_move_last_nonce(batch_prover: Prover) -> None:
    inputs = build_inputs(intents(), [Mandate(slot=0, payee_slot=0, amount=1, nonce=0)])
    assert batch_prover.verify(batch_prover.prove(inputs))
    assert_unprovable(batch_prover, repack_intent(inputs, 1, last=1_000),
                      "noMandates[s].out * lastNonce[s] === 0")


def test_wrong_key_for_key_hash_is_unprovable(batch_prover: Prover) -> None:
    inputs = valid_inputs()
    other = SessionKey(0x999).public_key
    assert_unprovable(batch_prover, {**inputs, "Ax": [other[0], inputs["Ax"][1]],
                                     "Ay": [other[1], inputs["Ay"][1]]},
                      "(1 - slotUnused[s].out) * (keyHasher[s].out - keyHash[s]) === 0")


def test_padding_signature_is_valid_for_base_point() -> None:
    from aep2 import eddsa

    assert eddsa.verify(SessionKey(1).public_key, PADDING_MESSAGE, padding_signature())


# --------------------------------------------------------------------------------------
# Pure helpers


def test_pack_words_round_trip_and_range_checks() -> None:
    word = pack_intent_word(1, 2, 3, 4, 5)
    assert word == 1 + (2 << 40) + (3 << 80) + (4 << 96) + (5 << 184)
    assert pack_payee_word(7, 9) == 7 + (9 << 160)
    assert pack_intent_word(2**40 - 1, 2**40 - 1, 2**16 - 1, 2**88 - 1, 2**64 - 1) < 2**248
    for kwargs, name in [
        (dict(start=2**40, last=0, count=0, total=0, cap=0), "startNonce"),
        (dict(start=0, last=2**40, count=0, total=0, cap=0), "lastNonce"),
        (dict(start=0, last=0, count=2**16, total=0, cap=0), "count"),
        (dict(start=0, last=0, count=0, total=2**88, cap=0), "total"),
        (dict(start=0, last=0, count=0, total=0, cap=2**64), "cap"),
        (dict(start=-1, last=0, count=0, total=0, cap=0), "startNonce"),
    ]:
        with pytest.raises(ValueError, match=name):
            pack_intent_word(**kwargs)
    with pytest.raises(ValueError, match="payee"):
        pack_payee_word(2**160, 0)
    with pytest.raises(ValueError, match="amount"):
        pack_payee_word(0, 2**93)


def test_artifacts_are_complete(batch_artifacts: CircuitArtifacts) -> None:
    a = batch_artifacts
    assert (a.n, a.i, a.p) == (N, I, P)
    for path in (a.r1cs, a.wasm, a.generate_witness_js, a.proving_key, a.verifying_key,
                 a.solidity_verifier):
        assert path.is_file(), path
    assert "UNSAFE FOR PRODUCTION" in (a.directory / "SETUP.txt").read_text()
    sol = a.solidity_verifier.read_text()
    assert "contract BatchVerifier" in sol and "GENERATED" in sol
    assert f"uint256[{a.n_public}] memory input" in sol
    assert json.loads(a.verifying_key.read_text())["nPublic"] == a.n_public
    assert 0 < a.constraints < 6_000 * N * 2


def test_build_reuses_complete_cache(batch_artifacts: CircuitArtifacts,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from settlement.artifacts import build_artifacts

    again = build_artifacts(N, I, P, cache_dir=batch_artifacts.directory.parent)
    assert again == batch_artifacts
    assert "compiling" not in capsys.readouterr().err  # no work done
    leftovers = [d.name for d in batch_artifacts.directory.parent.iterdir() if d.name.startswith(".")]
    assert not [d for d in leftovers if d.startswith(f".{batch_artifacts.hash}-")]


# --------------------------------------------------------------------------------------
# Cross-checks against circomlibjs (what the circuit's own tests are written against)

_NODE_CHECK = r"""
const {buildPoseidon, buildEddsa} = require('circomlibjs');
(async () => {
  const req = JSON.parse(process.argv[1]);
  const poseidon = await buildPoseidon();
  const eddsa = await buildEddsa();
  const F = eddsa.babyJub.F;
  const hashes = req.hashes.map(xs => poseidon.F.toString(poseidon(xs.map(BigInt))));
  const sigs = req.sigs.map(s => eddsa.verifyPoseidon(
    F.e(BigInt(s.M)),
    {R8: [F.e(BigInt(s.R8x)), F.e(BigInt(s.R8y))], S: BigInt(s.S)},
    [F.e(BigInt(s.Ax)), F.e(BigInt(s.Ay))]));
  console.log(JSON.stringify({hashes, sigs}));
})().catch(e => { console.error(e); process.exit(1); });
"""


def test_python_crypto_matches_circomlibjs() -> None:
    import random

    rng = random.Random(402)
    hashes = [[rng.randrange(FIELD_MODULUS) for _ in range(arity)] for arity in (2, 5, 6)]
    hashes.append([0] * 6)
    key = intents()[0].key
    sigs = []
    for message in (0, 12345, FIELD_MODULUS - 1, poseidon(*hashes[2])):
        sig = key.sign(message)
        sigs.append({"M": message, "R8x": sig.R8x, "R8y": sig.R8y, "S": sig.S,
                     "Ax": key.public_key[0], "Ay": key.public_key[1]})
    bad = dict(sigs[1], M=12346)
    request = {"hashes": [[str(x) for x in xs] for xs in hashes],
               "sigs": [{k: str(v) for k, v in s.items()} for s in sigs + [bad]]}
    result = subprocess.run(["node", "-e", _NODE_CHECK, json.dumps(request)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(result.stdout)
    assert [int(h) for h in answer["hashes"]] == [poseidon(*xs) for xs in hashes]
    assert answer["sigs"] == [True] * len(sigs) + [False]


def test_concurrent_builds_compile_once(tmp_path: Any) -> None:
    # Two processes race for the same (tiny) circuit: the fcntl lock lets one build it.
    import os
    import sys

    code = "from settlement.artifacts import build_artifacts; print(build_artifacts(1, 1, 1).hash)"
    env = {**os.environ, "AEP2_CACHE_DIR": str(tmp_path)}
    env.pop("AEP2_ZKEY", None)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert outputs[0][0] == outputs[1][0]
    assert sum(err.count("compiling circuit") for _, err in outputs) == 1
    built = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert [d.name for d in built] == [outputs[0][0].strip()]
    assert (built[0] / "manifest.json").is_file()
