"""``aep2._native`` (C Poseidon and EdDSA-Poseidon verification) against the references it
replaced: the ``light-poseidon`` binding and gmpy2 arithmetic in ``aep2.babyjubjub``.
circomlibjs itself is checked in ``tests/circuits`` (``test_python_crypto_matches_circomlibjs``).

Every comparison runs under each field multiplication the CPU offers (``BACKENDS``: the
MULX/ADX assembly and the portable C), so neither can drift from the references.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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



def _available_backends() -> list[str]:
    chosen = _native.backend()
    try:
        _native.set_backend("adx")
        return ["adx", "portable"]
    except ValueError:
        return ["portable"]
    finally:
        _native.set_backend(chosen)


BACKENDS = _available_backends()


@contextmanager
def _backend(name: str) -> Iterator[None]:
    chosen = _native.backend()
    _native.set_backend(name)
    try:
        yield
    finally:
        _native.set_backend(chosen)


def _each_backend() -> Iterator[str]:
    for name in BACKENDS:
        with _backend(name):
            yield name


def _light(*inputs: int) -> int:
    return int(Hasher(len(inputs)).hash_bytes_be([v.to_bytes(32, "big") for v in inputs]), 16)


def test_backend_is_chosen_from_the_cpu_and_switchable() -> None:
    assert _native.backend() == BACKENDS[0]
    with _backend("portable"):
        assert _native.backend() == "portable"
    assert _native.backend() == BACKENDS[0]


@pytest.mark.parametrize("name", ["", "ADX", "avx512", 1])
def test_RevertIf_backend_unknown(name: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        _native.set_backend(name)  # type: ignore[arg-type]
    assert _native.backend() == BACKENDS[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(field | st.sampled_from([0, 1, R - 1, R - 2, 2**253, 2**64 - 1]), min_size=1, max_size=NATIVE_MAX_INPUTS))
def testFuzz_native_poseidon_equals_light_poseidon(inputs: list[int]) -> None:
    expected = _light(*inputs)
    for _ in _each_backend():
        assert poseidon(*inputs) == expected


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


def _encode(point: bjj.Point) -> bytes:
    return point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


def _decode(encoded: bytes) -> bjj.Point:
    return int.from_bytes(encoded[:32], "big"), int.from_bytes(encoded[32:], "big")


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**254 - 1) | st.sampled_from([0, 1, L - 1, L, R - 1, 2**254 - 1]),
    st.integers(2, 8),
    st.sampled_from(["B8", "8A", "A"]),
)
def testFuzz_fixed_base_multiply_equals_double_and_add(scalar: int, window: int, base: str) -> None:
    # Signed digits of every sign and carry, on B8, on a key's 8·A and on a point off the
    # prime subgroup (a key plus the point of order 2): the tables live on the a = -1 curve,
    # the answers must come back in circomlib's coordinates.
    key = SessionKey(1 + scalar % (L - 1)).public_key
    point = {"B8": bjj.B8, "8A": bjj.multiply(key, 8), "A": bjj.add(key, (0, R - 1))}[base]
    expected = bjj.multiply(point, scalar)
    for _ in _each_backend():
        assert _decode(_native.FixedBase(_encode(point), window).multiply(scalar.to_bytes(32, "big"))) == expected


def test_fixed_base_of_the_widest_window_matches() -> None:
    table = _native.FixedBase(_encode(bjj.B8), 12)
    for scalar in (1, 2**11, 2**11 + 1, 2**12 - 1, L - 1, 2**254 - 1):
        assert _decode(table.multiply(scalar.to_bytes(32, "big"))) == bjj.multiply(bjj.B8, scalar)


@pytest.mark.parametrize("point", [(0, 1), (0, R - 1)])
def test_fixed_base_of_small_order_points(point: bjj.Point) -> None:
    # The identity and the point of order 2: every table entry and sum is one of them.
    table = _native.FixedBase(_encode(point), 4)
    for scalar in (0, 1, 2, 12345):
        assert _decode(table.multiply(scalar.to_bytes(32, "big"))) == bjj.multiply(point, scalar)


@pytest.mark.parametrize("point", [(R, 1), (0, R), (0, 2**256 - 1)])
def test_RevertIf_fixed_base_coordinate_not_a_field_element(point: bjj.Point) -> None:
    with pytest.raises(ValueError):
        _native.FixedBase(_encode(point), 4)


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
    assert _reference_verify(key.public_key, message, sig)
    for _ in _each_backend():
        assert verify(key.public_key, message, sig)


@settings(max_examples=60, deadline=None)
@given(
    keys,
    field,
    st.sampled_from(["R8x", "R8y", "S", "M", "key", "R8 negated", "key negated", "S - 1"]),
    st.integers(1, 2**64),
)
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
    elif part == "R8 negated":  # -R8 = (-x, y) is on the curve too
        sig = replace(sig, R8x=(R - sig.R8x) % R)
    elif part == "key negated":
        public_key = ((R - public_key[0]) % R, public_key[1])
    elif part == "S - 1":
        sig = replace(sig, S=(sig.S - 1) % L)
    else:
        sig = replace(sig, **{part: getattr(sig, part) + delta})
    assert _reference_verify(public_key, message, sig) is False
    for _ in _each_backend():
        assert verify(public_key, message, sig) is False


def _sign_for(secret: int, public_key: bjj.Point, message: int, nonce: int) -> Signature:
    """circomlib's signing equation for ``public_key`` whose 8-fold is ``8·secret·B8``."""
    r8 = bjj.multiply(bjj.B8, nonce)
    hm = _light(r8[0], r8[1], public_key[0], public_key[1], message)
    return Signature(r8[0], r8[1], (nonce + 8 * hm * secret) % L)


@settings(max_examples=20, deadline=None)
@given(keys, field, st.integers(1, L - 1))
def testFuzz_key_with_a_torsion_part_verifies_like_circomlib(key: SessionKey, message: int, nonce: int) -> None:
    # A' = A + T (T of order 2) is no subgroup point, but 8·A' = 8·A: circomlib's verifier
    # accepts S·B8 == R8 + 8·hm·A' for it, and so must we; a signature made for A is not one
    # for A' (hm hashes the key).
    twisted = bjj.add(key.public_key, (0, R - 1))
    sig = _sign_for(key.secret, twisted, message, nonce)
    assert _reference_verify(twisted, message, sig)
    plain = key.sign(message)
    assert not _reference_verify(twisted, message, plain)
    for _ in _each_backend():
        assert verify(twisted, message, sig)
        assert not verify(twisted, message, plain)


def test_signature_valid_only_for_its_message_after_caching() -> None:
    key = SessionKey(12345)
    first, second = key.sign(1), key.sign(2)
    for _ in _each_backend():
        assert verify(key.public_key, 1, first) and verify(key.public_key, 2, second)
        assert not verify(key.public_key, 1, second)
        assert not verify(key.public_key, 2, first)


@pytest.mark.parametrize(
    "case",
    ["S = l", "S + l", "S negative", "S 2^256", "M = r", "M negative", "R8 off curve", "R8x + r", "key off curve",
     "key of small order", "key of order 2"],
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
    elif case == "key of order 2":
        public_key = (0, R - 1)
    else:
        public_key = bjj.IDENTITY
    for _ in _each_backend():
        assert verify(public_key, message, sig) is False


@pytest.mark.skipif(not _gen_poseidon_constants.SOURCE.exists(), reason="needs node_modules/circomlibjs")
def test_constants_header_is_the_generator_output() -> None:
    expected = _gen_poseidon_constants.render(json.loads(_gen_poseidon_constants.SOURCE.read_text()))
    assert _gen_poseidon_constants.HEADER.read_text() == expected
    assert _gen_poseidon_constants.MAX_INPUTS == NATIVE_MAX_INPUTS
