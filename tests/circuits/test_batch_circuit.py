"""Batch(N, I, P, D) circuit: a valid batch proves and verifies; each broken statement fails.

Every pass case has its failing cases next to it, at the field and budget boundaries
(amount == cap passes, cap + 1 fails; deadline == timeRef passes, timeRef - 1 fails; a
window's first and last nonce pass, the nonces either side fail; a listed payee passes, an
unlisted one fails). A failing case must be refused already by the witness generator
(``WitnessError``), and at the constraint named next to it: the refusing template and
source line are read from the generator's error trace, so no case passes for an unrelated
reason. Only the valid batch is proved; every other case needs the witness alone.

The inputs are built as a cheating prover would build them: public words hold whatever the
circuit's own sums come to (mod r, bitmaps added rather than OR-ed), and every signature is
valid for the message the circuit hashes. What refuses a case is then the constraint under
test, not a side effect of sloppy inputs.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from aep2 import babyjubjub as bjj
from aep2.eddsa import SessionKey, Signature, verify
from aep2.fields import FIELD_MODULUS as R
from aep2.intent import Intent as ProtocolIntent
from aep2.mandate import Mandate as WireMandate
from aep2.mandate import nonce_window
from aep2.payees import PAYEE_TREE_DEPTH, payee_path, payees_root
from aep2.poseidon import poseidon
from aep2.store import MandateRecord
from settlement.artifacts import PROJECT_ROOT, CircuitArtifacts
from settlement.encoding import (
    PADDING_MESSAGE,
    pack_intent_word,
    pack_payee_word,
    padding_signature,
)
from settlement.prover import Proof, Prover, WitnessError, public_inputs
from settlement.witness import IntentSlot, build_statement

pytestmark = pytest.mark.circuit

N, I, P = 4, 2, 2  # must match the batch_artifacts fixture (tests/circuits/conftest.py)
D = PAYEE_TREE_DEPTH

TIME_REF = 1_760_000_000
DEADLINE = TIME_REF + 600
PAYEES = (0x1111111111111111111111111111111111111111, 0x2222222222222222222222222222222222222222)
OUTSIDER = 0x3333333333333333333333333333333333333333
# Intent 1's allowlist: PAYEES[1] (leaf 1 of the sorted tree) and two others, not PAYEES[0].
LISTED = (0x0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A, PAYEES[1], 0x5555555555555555555555555555555555555555)
WINDOW = 3  # intent 1's nonce window in the valid batch


def hex_address(value: int) -> str:
    return f"0x{value:040x}"


@dataclass(frozen=True)
class Intent:
    """What a slot opens: the session key, the signed intent field, the allowlist, the cap."""

    key: SessionKey
    field: int  # uint256(intentId) >> 8
    cap: int
    payees: tuple[int, ...] = ()  # the allowlist; empty: any payee

    @cached_property
    def root(self) -> int:
        return payees_root([hex_address(a) for a in self.payees])

    @cached_property
    def commitment(self) -> int:
        return poseidon(self.field, self.key.key_hash, self.root, self.cap)

    def path(self, payee: int) -> tuple[int, list[int]]:
        return payee_path([hex_address(a) for a in self.payees], hex_address(payee))


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
        Intent(SessionKey(0x1234567), field=(0xA1 << 240) + 1, cap=1_000),
        Intent(SessionKey(0x7654321), field=(0xB2 << 240) + 2, cap=500, payees=LISTED),
    )


def valid_mandates() -> list[Mandate]:
    """Intent 0 (any payee) pays both payees with a nonce gap (0, 2); intent 1 (allowlist)
    pays its listed payee on every bound: amount == cap, deadline == timeRef, the window's
    last nonce. Payee slot 1 is shared by both intents. The fourth slot is padding."""
    return [
        Mandate(slot=0, payee_slot=0, amount=100, nonce=0),
        Mandate(slot=1, payee_slot=1, amount=500, nonce=WINDOW * 128 + 127, deadline=TIME_REF),
        Mandate(slot=0, payee_slot=1, amount=250, nonce=2),
    ]


def raw_intent_word(window: int, nonces: int, total: int) -> int:
    """``window + nonces·2^33 + total·2^161`` mod r, without ``pack_intent_word``'s range checks."""
    return (window + (nonces << 33) + (total << 161)) % R


def unpack_intent_word(word: int) -> dict[str, int]:
    return {"window": word % 2**33, "nonces": (word >> 33) % 2**128, "total": word >> 161}


def signed_message(field: int, payee: int, amount: int, nonce: int, deadline: int, request_hash: int) -> int:
    """``M`` exactly as the circuit hashes it, wrapping mod r (aep2.mandate.message_hash when in range)."""
    return poseidon(field % R, (payee + (amount << 160)) % R,
                    (request_hash + (nonce << 160) + (deadline << 200)) % R)


def build_inputs(
    slots: tuple[Intent | None, ...],
    mandates: list[Mandate],
    *,
    time_ref: int = TIME_REF,
    payees: tuple[int, ...] = PAYEES,
) -> dict[str, Any]:
    """Circuit inputs for ``mandates`` (padded to N), laid out as settlement.witness does.

    A slot's window is its first mandate's; bitmaps, totals and payee amounts are the
    circuit's sums mod r. A (slot, payee) pair gets its Merkle path when the payee is listed.
    """
    assert len(slots) == I and len(payees) == P and len(mandates) <= N
    window: list[int | None] = [None] * I
    nonces, total, paid = [0] * I, [0] * I, [0] * P
    used: set[tuple[int, int]] = set()
    columns: dict[str, list[Any]] = {k: [] for k in (
        "enabled", "intentSel", "payeeSel", "amount", "nonce", "deadline", "requestHash", "R8x", "R8y", "S")}
    for m in mandates:
        intent = slots[m.slot]
        assert intent is not None
        if window[m.slot] is None:
            window[m.slot] = m.nonce >> 7
        nonces[m.slot] += 1 << (m.nonce % 128)
        total[m.slot] = (total[m.slot] + m.amount) % R
        paid[m.payee_slot] = (paid[m.payee_slot] + m.amount) % R
        used.add((m.slot, m.payee_slot))
        message = signed_message(
            intent.field if m.signed_field is None else m.signed_field,
            payees[m.payee_slot] if m.signed_payee is None else m.signed_payee,
            m.amount, m.nonce, m.deadline, m.request_hash)
        sig = (m.signer or intent.key).sign(message)
        _append_mandate(columns, 1, [int(s == m.slot) for s in range(I)],
                        [int(p == m.payee_slot) for p in range(P)],
                        m.amount % R, m.nonce, m.deadline, m.request_hash, sig)
    for _ in range(N - len(mandates)):
        _append_mandate(columns, 0, [0] * I, [0] * P, 0, 0, 0, 0, padding_signature())

    opening: dict[str, list[int]] = {k: [0] * I for k in (
        "intentHash", "intentWord", "Ax", "Ay", "intentField", "payeesRoot", "cap")}
    index = [[0] * P for _ in range(I)]
    path = [[[0] * D for _ in range(P)] for _ in range(I)]
    for s, intent in enumerate(slots):
        if intent is None:
            continue
        opening["intentHash"][s] = intent.commitment
        opening["intentWord"][s] = raw_intent_word(window[s] or 0, nonces[s], total[s])
        opening["Ax"][s], opening["Ay"][s] = intent.key.public_key
        opening["intentField"][s] = intent.field
        opening["payeesRoot"][s] = intent.root
        opening["cap"][s] = intent.cap
        for p in range(P):
            if (s, p) in used and payees[p] in intent.payees:
                index[s][p], path[s][p] = intent.path(payees[p])
    return {
        "timeRef": time_ref,
        "intentHash": opening.pop("intentHash"),
        "intentWord": opening.pop("intentWord"),
        "payeeWord": [(payees[p] + (paid[p] << 160)) % R for p in range(P)],
        **opening,
        "payeeIndex": index,
        "payeePath": path,
        **columns,
    }


def _append_mandate(columns: dict[str, list[Any]], enabled: int, isel: list[int], psel: list[int],
                    amount: int, nonce: int, deadline: int, request_hash: int, sig: Signature) -> None:
    for key, value in (("enabled", enabled), ("intentSel", isel), ("payeeSel", psel),
                       ("amount", amount), ("nonce", nonce), ("deadline", deadline),
                       ("requestHash", request_hash), ("R8x", sig.R8x), ("R8y", sig.R8y),
                       ("S", sig.S)):
        columns[key].append(value)


def valid_inputs() -> dict[str, Any]:
    return build_inputs(intents(), valid_mandates())


def with_mandates(**changes: Any) -> list[Mandate]:
    """``valid_mandates()`` with ``m<j>=dict(...)`` changes applied to mandate ``j``."""
    mandates = valid_mandates()
    for name, fields in changes.items():
        j = int(name[1:])
        mandates[j] = replace(mandates[j], **fields)
    return mandates


def set_at(inputs: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    """Copy of ``inputs`` with entry ``index`` of each named column replaced."""
    out = dict(inputs)
    for key, value in changes.items():
        column = list(out[key])
        column[index] = value
        out[key] = column
    return out


def repack_intent(inputs: dict[str, Any], slot: int, **parts: int) -> dict[str, Any]:
    """Copy of ``inputs`` with parts of one public intent word replaced (raw, unchecked)."""
    fields = unpack_intent_word(inputs["intentWord"][slot]) | parts
    return set_at(inputs, slot, intentWord=raw_intent_word(**fields))


# --------------------------------------------------------------------------------------
# Pinning a refusal to its constraint


class Constraint(NamedTuple):
    """A constraint of circuits/batch.circom (or of a circomlib template it uses)."""

    template: str
    text: str  # a fragment of its source line


# IntentSlot
WORD_BITS = Constraint("IntentSlot", "bits.in <== intentWord;")
CAP_BITS = Constraint("IntentSlot", "capBits.in <== cap;")
COMMITMENT = Constraint("IntentSlot", "(1 - unused.out) * (commitment.out - intentHash) === 0;")
UNUSED_WORD = Constraint("IntentSlot", "unused.out * intentWord === 0;")
KEY_ON_CURVE = Constraint("IntentSlot", "(1 - unused.out) * (168700 * x2 + y2 - 1 - 168696 * x2y2) === 0;")
# PayeeSlot, OneHot, NonceBit, MerkleRoot
PAYEE_WORD_BITS = Constraint("PayeeSlot", "bits.in <== payeeWord;")
SELECTOR_BIT = Constraint("OneHot", "sel[k] * (1 - sel[k]) === 0;")
SELECTOR_SUM = Constraint("OneHot", "acc === enabled;")
NONCE_BITS = Constraint("NonceBit", "bits.in <== nonce;")
LEAF_INDEX_BITS = Constraint("MerkleRoot", "bits.in <== index;")
# MandateCheck
PADDING_VALUE = Constraint("MandateCheck", "(1 - enabled) * amount === 0;")
AMOUNT_BITS = Constraint("MandateCheck", "amountBits.in <== amount;")
DEADLINE_BITS = Constraint("MandateCheck", "deadlineBits.in <== deadline;")
REQUEST_BITS = Constraint("MandateCheck", "requestBits.in <== requestHash;")
AMOUNT_CAP = Constraint("MandateCheck", "capCheck.out === 1;")
NONCE_WINDOW = Constraint("MandateCheck", "enabled * (nonceBit.window - window) === 0;")
NONCE_ORDER = Constraint("MandateCheck", "nonceCheck.out === 0;")
NOT_EXPIRED = Constraint("MandateCheck", "deadlineCheck.out * enabled === 0;")
R8_ON_CURVE = Constraint("MandateCheck", "r8OnCurve.y <== R8y;")  # BabyCheck runs on its last input
SIGNATURE = Constraint("MandateCheck", "signature.M <== message.out;")  # EdDSA runs on its last input
S_BELOW_ORDER = Constraint("EdDSAPoseidonVerifier", "compConstant.out*enabled === 0;")
# Batch
TIME_BITS = Constraint("Batch", "timeBits.in <== timeRef;")
ENABLED_BIT = Constraint("Batch", "enabled[j] * (1 - enabled[j]) === 0;")
BITMAP_SUM = Constraint("Batch", "slot[s].bitmap === bits;")
TOTAL_SUM = Constraint("Batch", "slot[s].total === sum;")
PAYEE_SUM = Constraint("Batch", "payee[p].amount === sum;")
ALLOWLIST = Constraint("Batch", "guarded[s][p] * (member[s][p].root - payeesRoot[s]) === 0;")

ALL_CONSTRAINTS = {name: c for name, c in globals().items() if isinstance(c, Constraint)}

_FRAME = re.compile(r"Error in template (\w+)_\d+ line: (\d+)")
_TEMPLATE = re.compile(r"^template (\w+)\(", re.MULTILINE)


class Circuit:
    """The compiled circuit's witness generator, and the sources its error trace points into."""

    def __init__(self, prover: Prover, artifacts: CircuitArtifacts) -> None:
        self.prover = prover
        # The copy that was compiled, so trace line numbers match.
        main = artifacts.directory / "sources" / "batch.circom"
        library = PROJECT_ROOT / "node_modules" / "circomlib" / "circuits" / "eddsaposeidon.circom"
        self.sources: dict[str, list[str]] = {}
        for path in (main, library):
            text = path.read_text()
            for name in _TEMPLATE.findall(text):
                self.sources[name] = text.splitlines()
        self.own = frozenset(_TEMPLATE.findall(main.read_text()))

    def witness(self, inputs: dict[str, Any]) -> None:
        """Compute the witness; raises ``WitnessError`` if a constraint does not hold."""
        with tempfile.TemporaryDirectory(prefix="aep2-wtns-") as tmp:
            self.prover.witness(inputs, Path(tmp) / "witness.wtns")

    def assert_refused(self, inputs: dict[str, Any], at: Constraint) -> None:
        """The witness generator stops at ``at``: the innermost frame of the trace in
        batch.circom (or in ``at.template``, for a circomlib check) is that constraint's line."""
        with pytest.raises(WitnessError) as info:
            self.witness(inputs)
        trace = info.value.stderr
        frames = _FRAME.findall(trace)
        assert frames, trace
        for name, line in frames:
            if name == at.template:
                source = self.sources[name][int(line) - 1]
                assert at.text in source, f"refused by {name} line {line}: {source.strip()!r}\n{trace}"
                return
            assert name not in self.own, f"refused by {name} line {line}, not {at}\n{trace}"
        pytest.fail(f"no frame in {at.template}:\n{trace}")


@pytest.fixture(scope="module")
def circuit(batch_prover: Prover, batch_artifacts: CircuitArtifacts) -> Circuit:
    return Circuit(batch_prover, batch_artifacts)


def test_every_constraint_names_one_source_line(circuit: Circuit) -> None:
    for name, c in ALL_CONSTRAINTS.items():
        lines = [line for line in circuit.sources[c.template] if c.text in line]
        assert len(lines) == 1, (name, lines)


# --------------------------------------------------------------------------------------
# Pass case and the public-input binding


@pytest.fixture(scope="module")
def valid_proof(batch_prover: Prover) -> Proof:
    return batch_prover.prove(valid_inputs())


def test_valid_batch_proves_and_verifies(batch_prover: Prover, valid_proof: Proof) -> None:
    assert batch_prover.verify(valid_proof)
    assert len(valid_proof.words) == 8
    inputs = valid_inputs()
    assert valid_proof.public_inputs == public_inputs(inputs)
    assert len(valid_proof.public_inputs) == 1 + 2 * I + P
    # The public values are exactly what the contract will settle and record.
    x, y = intents()
    assert valid_proof.public_inputs[: 1 + I] == (TIME_REF, x.commitment, y.commitment)
    assert valid_proof.public_inputs[1 + I : 1 + 2 * I] == (
        pack_intent_word(0, 0b101, 350), pack_intent_word(WINDOW, 1 << 127, 500))
    assert valid_proof.public_inputs[1 + 2 * I :] == (
        pack_payee_word(PAYEES[0], 100), pack_payee_word(PAYEES[1], 750))
    # Intent 1's pair carries a real allowlist path (leaf 1), intent 0's (any payee) none.
    assert y.root != 0 and x.root == 0
    assert inputs["payeeIndex"] == [[0, 0], [0, 1]]


@pytest.mark.parametrize("index", range(1 + 2 * I + P))
def test_changing_any_public_input_fails_verification(
    batch_prover: Prover, valid_proof: Proof, index: int
) -> None:
    publics = list(valid_proof.public_inputs)
    publics[index] = (publics[index] + 1) % R
    assert not batch_prover.verify(replace(valid_proof, public_inputs=tuple(publics)))


def test_tampered_proof_fails_verification(batch_prover: Prover, valid_proof: Proof) -> None:
    words = list(valid_proof.words)
    words[6] ^= 1
    assert not batch_prover.verify(replace(valid_proof, words=tuple(words)))


def test_single_intent_with_unused_slot_is_provable(circuit: Circuit) -> None:
    inputs = build_inputs((intents()[0], None), [Mandate(slot=0, payee_slot=0, amount=1, nonce=7)],
                          payees=(PAYEES[0], 0))
    # The unused slot opens to (0, 0), which is no curve point: the key check is off there.
    assert (inputs["Ax"][1], inputs["Ay"][1]) == (0, 0) and not bjj.is_on_curve((0, 0))
    assert inputs["intentHash"][1] == inputs["intentWord"][1] == inputs["payeeWord"][1] == 0
    circuit.witness(inputs)


def test_statement_from_the_witness_builder_matches_and_is_provable(circuit: Circuit) -> None:
    """settlement.witness lays out one real intent spanning two windows (two slots, same
    commitment) exactly as this file's builder does, and the circuit accepts it."""
    key = intents()[1].key
    terms = ProtocolIntent(
        payer=hex_address(0xAA), asset=hex_address(0xBB), session_key=key.public_key,
        max_amount=10**6, max_per_payment=500, valid_after=0, valid_before=TIME_REF + 10**6,
        chain_id=31337, verifying_contract=hex_address(0xCC), processor=hex_address(0xDD),
        payees=tuple(hex_address(a) for a in LISTED), salt=bytes(32))

    def record(nonce: int, amount: int) -> MandateRecord:
        mandate = WireMandate(terms.intent_id, hex_address(PAYEES[1]), amount, nonce, DEADLINE, 0xABCDEF)
        return MandateRecord(mandate.payment_id, mandate, mandate.sign(key), terms.payer, terms.asset,
                             "accepted", 0.0)

    slots = [IntentSlot(terms, 1, (record(130, 7), record(255, 500))),
             IntentSlot(terms, 0, (record(5, 1),))]
    statement = build_statement(slots, time_ref=TIME_REF, asset=terms.asset, n=N, i=I, p=P)

    ours = Intent(key, field=terms.intent_field, cap=terms.cap, payees=LISTED)
    assert ours.commitment == terms.commitment
    expected = build_inputs((ours, ours), [
        Mandate(slot=0, payee_slot=0, amount=1, nonce=5),
        Mandate(slot=1, payee_slot=0, amount=7, nonce=130),
        Mandate(slot=1, payee_slot=0, amount=500, nonce=255),
    ], payees=(PAYEES[1], 0))
    assert statement.inputs == expected
    circuit.witness(statement.inputs)


# --------------------------------------------------------------------------------------
# Soundness of one mandate: each statement below is false, so no witness exists


# Each case: mandate changes (``with_mandates`` keywords) or a function of the valid inputs.
BROKEN_MANDATES: dict[str, tuple[Any, Constraint]] = {
    "wrong_signature": (lambda v: set_at(v, 0, S=v["S"][0] + 1), SIGNATURE),
    # S + l satisfies S·B8 = R8 + 8·hm·A as well (l·B8 = 0): only the S < l check stops it.
    "signature_s_plus_l": (lambda v: set_at(v, 0, S=v["S"][0] + bjj.SUBGROUP_ORDER), S_BELOW_ORDER),
    "signed_by_other_intents_key": (dict(m0=dict(signer=SessionKey(0x7654321))), SIGNATURE),
    "signed_for_other_intent_field": (dict(m0=dict(signed_field=(0xB2 << 240) + 2)), SIGNATURE),
    "signed_payee_not_the_slots": (dict(m0=dict(signed_payee=OUTSIDER)), SIGNATURE),
    "r8_off_curve": (lambda v: set_at(v, 0, R8y=v["R8y"][0] + 1), R8_ON_CURVE),
    "padding_r8_off_curve": (lambda v: set_at(v, 3, R8x=0, R8y=0), R8_ON_CURVE),
    "amount_2_pow_64": (dict(m0=dict(amount=2**64)), AMOUNT_BITS),
    # r - 1 would make slot 0's total 100 + (r - 1) = 99 (mod r): the range check stops it.
    "amount_negative_wraps_field": (dict(m2=dict(amount=R - 1)), AMOUNT_BITS),
    "amount_over_cap": (dict(m1=dict(amount=501)), AMOUNT_CAP),
    "deadline_before_time_ref": (dict(m1=dict(deadline=TIME_REF - 1)), NOT_EXPIRED),
    # The signed message packs requestHash, nonce and deadline into one element: each part
    # must stay in its bits, or another split of the same element would verify.
    "deadline_over_40_bits": (dict(m1=dict(deadline=2**40 + TIME_REF)), DEADLINE_BITS),
    "request_hash_over_160_bits": (dict(m0=dict(request_hash=2**160 + 1)), REQUEST_BITS),
    "nonce_over_40_bits": (dict(m2=dict(nonce=2**40 + 2)), NONCE_BITS),
    # Nonce 130 sets bit 2 like nonce 2, but lies in window 1, not the slot's window 0.
    "nonce_outside_slot_window": (dict(m2=dict(nonce=128 + 2)), NONCE_WINDOW),
    # A repeated nonce would add its bit twice (a carry into the next bit).
    "repeated_nonce": (dict(m2=dict(nonce=0)), NONCE_ORDER),
    "decreasing_nonces": (dict(m0=dict(nonce=2), m2=dict(nonce=0)), NONCE_ORDER),
    "padding_slot_carrying_value": (lambda v: set_at(v, 3, amount=5), PADDING_VALUE),
    "enabled_not_a_bit": (lambda v: set_at(v, 0, enabled=2), ENABLED_BIT),
    # Sums to enabled = 1 but is not boolean: would mix two intents' keys and caps.
    "intent_selector_not_one_hot": (lambda v: set_at(v, 0, intentSel=[2, R - 1]), SELECTOR_BIT),
    "payee_selector_picks_two": (lambda v: set_at(v, 0, payeeSel=[1, 1]), SELECTOR_SUM),
    "padding_slot_selecting_an_intent": (lambda v: set_at(v, 3, intentSel=[1, 0]), SELECTOR_SUM),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MANDATES))
def test_broken_mandate_is_unprovable(circuit: Circuit, case: str) -> None:
    change, at = BROKEN_MANDATES[case]
    if callable(change):
        inputs = change(valid_inputs())
    else:
        inputs = build_inputs(intents(), with_mandates(**change))
    circuit.assert_refused(inputs, at)


def test_signature_checks_are_sound_off_circuit() -> None:
    # The S + l case above is a valid signature equation; the Python verifier refuses it too.
    x = intents()[0]
    m = valid_mandates()[0]
    message = signed_message(x.field, PAYEES[0], m.amount, m.nonce, m.deadline, m.request_hash)
    sig = x.key.sign(message)
    assert verify(x.key.public_key, message, sig)
    assert not verify(x.key.public_key, message, replace(sig, S=sig.S + bjj.SUBGROUP_ORDER))


def test_time_ref_over_64_bits_is_unprovable(circuit: Circuit) -> None:
    circuit.assert_refused({**valid_inputs(), "timeRef": 2**64 + TIME_REF}, TIME_BITS)


@pytest.mark.parametrize(
    ("nonce", "ok"),
    [(WINDOW * 128, True), (WINDOW * 128 - 1, False), (WINDOW * 128 + 128, False)],
    ids=["first", "below", "above"],
)
def test_nonce_window_bounds(circuit: Circuit, nonce: int, ok: bool) -> None:
    # The window's last nonce, WINDOW * 128 + 127, is the valid batch's (proved above).
    inputs = repack_intent(build_inputs(intents(), with_mandates(m1=dict(nonce=nonce))), 1, window=WINDOW)
    if ok:
        circuit.witness(inputs)
    else:
        circuit.assert_refused(inputs, NONCE_WINDOW)


# --------------------------------------------------------------------------------------
# Intent binding: the public commitment and its private opening


@pytest.mark.parametrize(
    ("slot", "changes"),
    [
        (0, {"intentField": (0xA1 << 240) + 2}),
        (0, {"cap": 10**6}),  # a larger cap than the payer signed
        (1, {"payeesRoot": 0}),  # dropping the allowlist
        (1, {"payeesRoot": Intent(SessionKey(1), 0, 0, payees=(OUTSIDER,)).root}),  # another list
        (0, dict(zip(("Ax", "Ay"), SessionKey(0x999).public_key))),  # another session key
    ],
    ids=["field", "cap", "root_zero", "root_other", "key"],
)
def test_opening_other_than_the_commitment_is_unprovable(
    circuit: Circuit, slot: int, changes: dict[str, int]
) -> None:
    circuit.assert_refused(set_at(valid_inputs(), slot, **changes), COMMITMENT)


@pytest.mark.parametrize("opening", ["signed_intent", "claimed_intent", "resigned"])
def test_mandate_settles_only_under_the_intent_it_signed(circuit: Circuit, opening: str) -> None:
    """Intents X and Y share a session key (and cap and allowlist). Mandates signed for X
    cannot be proven under Y's commitment: opening X's field breaks the commitment, opening
    Y's breaks the signature. Mandates signed for Y itself pass (the control)."""
    x = intents()[0]
    y = replace(x, field=(0xC3 << 240) + 3)
    signed_for = y.field if opening == "resigned" else x.field
    mandates = [replace(m, signed_field=signed_for) if m.slot == 0 else m for m in valid_mandates()]
    inputs = build_inputs((y, intents()[1]), mandates)
    assert inputs["intentHash"][0] == y.commitment
    if opening == "resigned":
        circuit.witness(inputs)
    elif opening == "claimed_intent":
        circuit.assert_refused(inputs, SIGNATURE)
    else:
        circuit.assert_refused(set_at(inputs, 0, intentField=x.field), COMMITMENT)


def test_used_slot_key_off_the_curve_is_unprovable(circuit: Circuit) -> None:
    # The commitment is honestly computed over the off-curve key, so only the curve check refuses.
    inputs = valid_inputs()
    x = intents()[0]
    ax, ay = x.key.public_key
    assert not bjj.is_on_curve((ax, ay + 1))
    commitment = poseidon(x.field, poseidon(ax, ay + 1), x.root, x.cap)
    circuit.assert_refused(set_at(inputs, 0, Ay=ay + 1, intentHash=commitment), KEY_ON_CURVE)


@pytest.mark.parametrize(("cap", "at"), [(2**64 - 1, None), (2**64, CAP_BITS), (R - 1, CAP_BITS)],
                         ids=["max", "2_pow_64", "negative"])
def test_cap_range(circuit: Circuit, cap: int, at: Constraint | None) -> None:
    # A committed cap >= 2^64 would break the 64-bit amount <= cap comparison.
    x = replace(intents()[0], cap=cap)
    inputs = build_inputs((x, intents()[1]), valid_mandates())
    if at is None:
        circuit.witness(inputs)
    else:
        circuit.assert_refused(inputs, at)


def test_unused_slot_with_nonzero_word_is_unprovable(circuit: Circuit) -> None:
    inputs = build_inputs((intents()[0], None), [Mandate(slot=0, payee_slot=0, amount=1, nonce=7)])
    circuit.assert_refused(set_at(inputs, 1, intentWord=pack_intent_word(0, 0, 1)), UNUSED_WORD)


def test_mandate_selecting_an_unused_slot_is_unprovable(circuit: Circuit) -> None:
    """An unused slot's opening is unchecked, so a prover may open it to any key it signs
    with; the slot's zero word still has no bit for the mandate."""
    rogue = Intent(SessionKey(0xBAD), field=0xBAD, cap=2**64 - 1)
    inputs = build_inputs((intents()[0], rogue), [
        Mandate(slot=0, payee_slot=0, amount=1, nonce=7),
        Mandate(slot=1, payee_slot=1, amount=1_000, nonce=5),
    ])
    inputs = set_at(inputs, 1, intentHash=0, intentWord=0)
    circuit.assert_refused(inputs, BITMAP_SUM)


# --------------------------------------------------------------------------------------
# The public words: exactly the sums of the mandates


@pytest.mark.parametrize(
    ("slot", "changes", "at"),
    [
        (0, {"nonces": 0b001}, BITMAP_SUM),  # nonce 2 settled but not recorded
        (0, {"nonces": 0b111}, BITMAP_SUM),  # nonce 1 recorded without a mandate
        (1, {"nonces": 1 << 126}, BITMAP_SUM),  # the right count, the wrong nonce
        (0, {"total": 351}, TOTAL_SUM),
        (0, {"total": 349}, TOTAL_SUM),
        (1, {"window": WINDOW + 1}, NONCE_WINDOW),
        (0, {"total": 2**88}, WORD_BITS),  # total past its 88 bits: the word is >= 2^249
        # Lower parts cannot overflow the word: they carry into the next part, which a sum catches.
        (0, {"nonces": 0b101 + (1 << 128)}, TOTAL_SUM),  # reads as total + 1
        (0, {"window": 2**33}, BITMAP_SUM),  # reads as window 0, nonces + 1
    ],
    ids=["bit_missing", "bit_extra", "bit_moved", "total_over", "total_under", "window",
         "total_overflow", "nonce_bit_128", "window_2_pow_33"],
)
def test_public_intent_word_not_matching_is_unprovable(
    circuit: Circuit, slot: int, changes: dict[str, int], at: Constraint
) -> None:
    circuit.assert_refused(repack_intent(valid_inputs(), slot, **changes), at)


def test_intent_word_outside_249_bits_is_unprovable(circuit: Circuit) -> None:
    circuit.assert_refused(set_at(valid_inputs(), 0, intentWord=R - 1), WORD_BITS)


@pytest.mark.parametrize(
    ("word", "at"),
    [
        (pack_payee_word(PAYEES[0], 101), PAYEE_SUM),
        (pack_payee_word(PAYEES[0], 99), PAYEE_SUM),
        (pack_payee_word(OUTSIDER, 100), SIGNATURE),  # the mandate signed PAYEES[0]
        (R - 1, PAYEE_WORD_BITS),
    ],
    ids=["amount_over", "amount_under", "other_payee", "outside_253_bits"],
)
def test_public_payee_word_not_matching_is_unprovable(circuit: Circuit, word: int, at: Constraint) -> None:
    circuit.assert_refused(set_at(valid_inputs(), 0, payeeWord=word), at)


# --------------------------------------------------------------------------------------
# Payee allowlists


@pytest.mark.parametrize(
    ("case", "at"),
    [
        ("any_payee", None),
        ("listed_with_path", None),
        ("unlisted_without_path", ALLOWLIST),
        ("unlisted_path_to_other_root", ALLOWLIST),
        ("unlisted_forged_path", ALLOWLIST),
        ("listed_index_past_the_tree", LEAF_INDEX_BITS),
    ],
)
def test_allowlist(circuit: Circuit, case: str, at: Constraint | None) -> None:
    """One intent, one mandate: PAYEES[0] passes with no allowlist, PAYEES[1] with its path
    in LISTED; PAYEES[0] under LISTED is refused whatever path the prover makes up."""
    restricted = intents()[1]
    unrestricted = replace(restricted, payees=())
    payee = PAYEES[1] if case.startswith("listed") else PAYEES[0]
    intent = unrestricted if case == "any_payee" else restricted
    inputs = build_inputs((intent, None), [Mandate(slot=0, payee_slot=0, amount=500, nonce=WINDOW * 128)],
                          payees=(payee, 0))
    index, path = inputs["payeeIndex"][0][0], inputs["payeePath"][0][0]
    if case == "unlisted_without_path":
        assert (index, path) == (0, [0] * D)
    elif case == "unlisted_path_to_other_root":
        index, path = Intent(SessionKey(1), 0, 0, payees=(PAYEES[0], OUTSIDER)).path(PAYEES[0])
    elif case == "unlisted_forged_path":
        index, path = restricted.path(PAYEES[1])  # a listed payee's path, under another leaf
    elif case == "listed_index_past_the_tree":
        assert index == 1
        index += 2**D  # same low bits, so the same path would otherwise fit
    inputs = {**inputs, "payeeIndex": [[index, 0], [0, 0]],
              "payeePath": [[path, [0] * D], [[0] * D, [0] * D]]}
    if at is None:
        circuit.witness(inputs)
    else:
        circuit.assert_refused(inputs, at)


@pytest.mark.parametrize("payee_slot", [1, 0], ids=["listed", "unlisted_shared_with_any_payee_intent"])
def test_allowlist_is_per_intent_and_payee_pair(circuit: Circuit, payee_slot: int) -> None:
    """Intent 0 (any payee) pays payee slot 0; a mandate of intent 1 (allowlist without
    PAYEES[0]) to the same payee slot is refused: that slot's use by intent 0 proves nothing
    for intent 1. To its listed payee (slot 1, also shared with intent 0) it passes."""
    mandates = valid_mandates()
    mandates.insert(1, Mandate(slot=1, payee_slot=payee_slot, amount=1, nonce=WINDOW * 128))
    inputs = build_inputs(intents(), mandates)
    if payee_slot == 1:
        circuit.witness(inputs)
    else:
        assert inputs["payeePath"][1][0] == [0] * D  # the prover has no path to give
        circuit.assert_refused(inputs, ALLOWLIST)


# --------------------------------------------------------------------------------------
# Pure helpers


def test_padding_signature_is_valid_for_base_point() -> None:
    assert verify(SessionKey(1).public_key, PADDING_MESSAGE, padding_signature())


def test_pack_words_match_the_circuit_layout() -> None:
    assert pack_intent_word(1, 2, 3) == 1 + (2 << 33) + (3 << 161) == raw_intent_word(1, 2, 3)
    assert unpack_intent_word(pack_intent_word(2**33 - 1, 2**128 - 1, 2**88 - 1)) == {
        "window": 2**33 - 1, "nonces": 2**128 - 1, "total": 2**88 - 1}
    assert pack_intent_word(2**33 - 1, 2**128 - 1, 2**88 - 1) == 2**249 - 1
    assert pack_payee_word(7, 9) == 7 + (9 << 160)
    assert nonce_window(WINDOW * 128 + 127) == (WINDOW, 127)
    for args, name in [((2**33, 0, 0), "window"), ((0, 2**128, 0), "nonces"), ((0, 0, 2**88), "total"),
                       ((-1, 0, 0), "window")]:
        with pytest.raises(ValueError, match=name):
            pack_intent_word(*args)
    with pytest.raises(ValueError, match="payee"):
        pack_payee_word(2**160, 0)
    with pytest.raises(ValueError, match="amount"):
        pack_payee_word(0, 2**93)


def test_signed_message_is_the_mandate_message_hash() -> None:
    from aep2.mandate import message_hash

    args = (0xA1 << 240, PAYEES[0], 2**64 - 1, 2**40 - 1, 2**40 - 1, 2**160 - 1)
    assert signed_message(*args) == message_hash(*args)


def test_artifacts_are_complete(batch_artifacts: CircuitArtifacts) -> None:
    a = batch_artifacts
    assert (a.n, a.i, a.p) == (N, I, P)
    for path in (a.r1cs, a.wasm, a.generate_witness_js, a.proving_key, a.verifying_key,
                 a.solidity_verifier):
        assert path.is_file(), path
    assert "UNSAFE FOR PRODUCTION" in (a.directory / "SETUP.txt").read_text()
    manifest = json.loads((a.directory / "manifest.json").read_text())
    assert manifest["depth"] == D
    assert manifest["publicSignals"] == ["timeRef", f"intentHash[{I}]", f"intentWord[{I}]", f"payeeWord[{P}]"]
    sol = a.solidity_verifier.read_text()
    assert "contract BatchVerifier" in sol and "GENERATED" in sol
    assert f"uint256[{a.n_public}] memory input" in sol
    assert f"return ({N}, {I}, {P}, {D}, true);" in sol
    assert json.loads(a.verifying_key.read_text())["nPublic"] == a.n_public
    assert 0 < a.constraints < 40_000  # 30,020 for Batch(4, 2, 2, 8)


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
    # Arities 2 (key hash, tree node), 3 (message), 4 (commitment), 5 (EdDSA challenge).
    hashes = [[rng.randrange(R) for _ in range(arity)] for arity in (2, 3, 4, 5, 6)]
    hashes.append([0] * 4)
    key = intents()[0].key
    sigs = []
    for message in (0, 12345, R - 1, poseidon(*hashes[2])):
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
