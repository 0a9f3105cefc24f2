"""``aep2._native`` (C Poseidon and EdDSA-Poseidon verification) against the references it
replaced: the ``light-poseidon`` binding and gmpy2 arithmetic in ``aep2.babyjubjub``.
circomlibjs itself is checked in ``tests/circuits`` (``test_python_crypto_matches_circomlibjs``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from light_poseidon_python import Hasher

from aep2 import _gen_poseidon_constants, _native
from aep2 import babyjubjub as bjj
from aep2.eddsa import SessionKey, Signature, verify
from aep2.fields import FIELD_MODULUS
from aep2.poseidon import NATIVE_MAX_INPUTS, poseidon

R = FIELD_MODULUS
L = bjj.SUBGROUP_ORDER
field = st.integers(0, R - 1)
keys = st.integers(1, L - 1).map(SessionKey)


def _light(*inputs: int) -> int:
    return int(Hasher(len(inputs)).hash_bytes_be([v.to_bytes(32, "big") for v in inputs]), 16)


@settings(max_examples=200, deadline=None)
@given(st.lists(field | st.sampled_from([0, 1, R - 1]), min_size=1, max_size=NATIVE_MAX_INPUTS))
def testFuzz_native_poseidon_equals_light_poseidon(inputs: list[int]) -> None:
    assert poseidon(*inputs) == _light(*inputs)


def test_wide_poseidon_still_hashes() -> None:
    assert poseidon(*range(1, 7)) == _light(*range(1, 7))


@pytest.mark.parametrize("bad", [R, 2**256 - 1])
def test_RevertIf_native_poseidon_input_not_a_field_element(bad: int) -> None:
    with pytest.raises(ValueError):
        _native.poseidon(bad.to_bytes(32, "big"))
    with pytest.raises(ValueError):
        poseidon(1, bad)


@pytest.mark.parametrize("data", [b"", bytes(31), bytes(32 * (NATIVE_MAX_INPUTS + 1))])
def test_RevertIf_native_poseidon_width_unsupported(data: bytes) -> None:
    with pytest.raises(ValueError):
        _native.poseidon(data)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**254 - 1) | st.sampled_from([0, 1, L - 1, L, R - 1, 2**254 - 1]))
def testFuzz_fixed_base_multiply_equals_double_and_add(scalar: int) -> None:
    table = _native.FixedBase(bjj.B8[0].to_bytes(32, "big") + bjj.B8[1].to_bytes(32, "big"), 6)
    encoded = table.multiply(scalar.to_bytes(32, "big"))
    assert (int.from_bytes(encoded[:32], "big"), int.from_bytes(encoded[32:], "big")) == bjj.multiply(bjj.B8, scalar)


def test_RevertIf_fixed_base_scalar_over_254_bits() -> None:
    table = _native.FixedBase(bjj.B8[0].to_bytes(32, "big") + bjj.B8[1].to_bytes(32, "big"), 4)
    with pytest.raises(ValueError):
        table.multiply((2**254).to_bytes(32, "big"))


def _reference_verify(public_key: bjj.Point, message: int, sig: Signature) -> bool:
    """circomlib's check in plain gmpy2 arithmetic: S·B8 == R8 + 8·hm·A."""
    if not (0 <= message < R and 0 <= sig.S < L and 0 <= sig.R8x < R and 0 <= sig.R8y < R):
        return False
    r8 = (sig.R8x, sig.R8y)
    if not bjj.is_on_curve(r8) or not bjj.is_on_curve(public_key):
        return False
    eight_a = bjj.multiply(public_key, 8)
    if eight_a == bjj.IDENTITY:
        return False
    hm = _light(r8[0], r8[1], public_key[0], public_key[1], message)
    return bjj.multiply(bjj.B8, sig.S) == bjj.add(r8, bjj.multiply(eight_a, hm))


@settings(max_examples=30, deadline=None)
@given(keys, field)
def testFuzz_valid_signature_verifies(key: SessionKey, message: int) -> None:
    sig = key.sign(message)
    assert verify(key.public_key, message, sig)
    assert _reference_verify(key.public_key, message, sig)


@settings(max_examples=60, deadline=None)
@given(keys, field, st.sampled_from(["R8x", "R8y", "S", "M", "key"]), st.integers(1, 2**64))
def testFuzz_tampered_signature_is_refused_like_the_reference(
    key: SessionKey, message: int, part: str, delta: int
) -> None:
    # The key's table is cached by the first verify: a later forgery must still be refused.
    sig = key.sign(message)
    assert verify(key.public_key, message, sig)
    public_key = key.public_key
    if part == "M":
        message = (message + delta) % R
    elif part == "key":
        public_key = SessionKey(1 + (key.secret + delta) % (L - 1)).public_key
    else:
        sig = replace(sig, **{part: getattr(sig, part) + delta})
    assert verify(public_key, message, sig) is _reference_verify(public_key, message, sig) is False


def test_signature_valid_only_for_its_message_after_caching() -> None:
    key = SessionKey(12345)
    first, second = key.sign(1), key.sign(2)
    assert verify(key.public_key, 1, first) and verify(key.public_key, 2, second)
    assert not verify(key.public_key, 1, second)
    assert not verify(key.public_key, 2, first)


@pytest.mark.parametrize(
    "case",
    ["S = l", "S + l", "S negative", "S 2^256", "M = r", "M negative", "R8 off curve", "R8x + r", "key off curve",
     "key of small order"],
)
def test_RevertIf_out_of_range_or_off_curve(case: str) -> None:
    key = SessionKey(777)
    message = 42
    sig = key.sign(message)
    public_key = key.public_key
    if case == "S = l":
        sig = replace(sig, S=L)
    elif case == "S + l":  # the same point S·B8, but circomlib requires S < l
        sig = replace(sig, S=sig.S + L)
    elif case == "S negative":
        sig = replace(sig, S=-1)
    elif case == "S 2^256":
        sig = replace(sig, S=2**256)
    elif case == "M = r":
        message = R
    elif case == "M negative":
        message = -1
    elif case == "R8 off curve":
        sig = replace(sig, R8y=(sig.R8y + 1) % R)
    elif case == "R8x + r":  # the same field value, not reduced: circom would reject it
        sig = replace(sig, R8x=sig.R8x + R)
    elif case == "key off curve":
        public_key = (public_key[0], (public_key[1] + 1) % R)
    else:
        public_key = bjj.IDENTITY
    assert verify(public_key, message, sig) is False


@pytest.mark.skipif(not _gen_poseidon_constants.SOURCE.exists(), reason="needs node_modules/circomlibjs")
def test_constants_header_is_the_generator_output() -> None:
    expected = _gen_poseidon_constants.render(json.loads(_gen_poseidon_constants.SOURCE.read_text()))
    assert _gen_poseidon_constants.HEADER.read_text() == expected
    assert _gen_poseidon_constants.MAX_INPUTS == NATIVE_MAX_INPUTS
