"""``mandate_verify_us``: one full off-chain verification of a mandate, as the gateway does it.

Per mandate: ``parse_payload`` of the aep2 payload object (schema, decimal strings, Mandate
range checks), ``Mandate.message()`` (the packed Poseidon(3) mandate hash) and
``aep2.eddsa.verify`` with the session key's per-key table already built (the gateway's
steady state: the table is built on the intent's first mandate).

The baseline runs the very same steps the way they ran before ``aep2._native``: both Poseidon
hashes through the ``light-poseidon`` binding and both scalar multiplications on gmpy2 with
the same per-key precomputation (``aep2.babyjubjub.FixedBaseTable``), so the ratio shows what
the native field arithmetic buys and nothing else. ``mandate_verify_portable_us`` is the
native path with the portable C field product (what a CPU without BMI2 and ADX runs), against
the same baseline.

Single-threaded, in this process; median over many distinct pre-signed mandates.
"""

from __future__ import annotations

import gc
import time
from functools import lru_cache
from typing import Any

from light_poseidon_python import Hasher

from aep2 import _native
from aep2 import babyjubjub as bjj
from aep2.eddsa import L, Signature, SessionKey, verify
from aep2.fields import FIELD_MODULUS
from aep2.intent import Intent
from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload, parse_payload
from aep2.x402 import decode_header, encode_header

from .common import log, median, row

MANDATES = 200  # distinct signed mandates, cycled through
ROUNDS = 10  # passes over them for each variant


@lru_cache(maxsize=None)
def _hasher(arity: int) -> Hasher:
    return Hasher(arity)


def _light_poseidon(*inputs: int) -> int:
    return int(_hasher(len(inputs)).hash_bytes_be([value.to_bytes(32, "big") for value in inputs]), 16)


@lru_cache(maxsize=None)
def _gmpy2_tables(public_key: bjj.Point) -> tuple[bjj.FixedBaseTable, bjj.FixedBaseTable]:
    # The windows the gmpy2 verifier used: B8 with 12-bit windows, 8·A with 9-bit windows.
    return bjj.FixedBaseTable(bjj.B8, window=12, bits=253), bjj.FixedBaseTable(
        bjj.multiply(public_key, 8), window=9, bits=254
    )


def _baseline_message(mandate: Mandate) -> int:
    """``Mandate.message()`` through ``light-poseidon``."""
    return _light_poseidon(
        mandate.intent_field,
        int(mandate.payee, 16) + (mandate.amount << 160),
        mandate.request_hash + (mandate.nonce << 160) + (mandate.deadline << 200),
    )


def _baseline_verify(public_key: bjj.Point, message: int, signature: Signature) -> bool:
    """``aep2.eddsa.verify`` before ``aep2._native``: light-poseidon and gmpy2 tables."""
    if not (0 <= message < FIELD_MODULUS and 0 <= signature.S < L):
        return False
    r8 = (signature.R8x, signature.R8y)
    if not bjj.is_on_curve(r8) or not bjj.is_on_curve(public_key):
        return False
    b8_table, key_table = _gmpy2_tables(public_key)
    hm = _light_poseidon(r8[0], r8[1], public_key[0], public_key[1], message)
    right = bjj.ext_add(bjj.ext_from_affine(r8), key_table.multiply_ext(hm))
    left = b8_table.multiply_ext(signature.S)
    p = FIELD_MODULUS
    return (left[0] * right[2] - right[0] * left[2]) % p == 0 and (
        left[1] * right[2] - right[1] * left[2]
    ) % p == 0


def _payloads(n: int) -> tuple[SessionKey, list[dict[str, Any]]]:
    key = SessionKey.generate()
    intent = Intent(
        payer="0x" + "11" * 20,
        asset="0x" + "22" * 20,
        session_key=key.public_key,
        max_amount=10**12,
        max_per_payment=5_000,
        valid_after=0,
        valid_before=2**40,
        chain_id=31337,
        verifying_contract="0x" + "33" * 20,
        processor="0x" + "55" * 20,
    )
    deadline = int(time.time()) + 3600
    payloads = []
    for nonce in range(n):
        mandate = Mandate(
            intent_id=intent.intent_id,
            payee="0x" + "44" * 20,
            amount=1_000,
            nonce=nonce,
            deadline=deadline,
            request_hash=request_hash("GET", f"/v1/forecast/city{nonce}"),
        )
        payloads.append(build_payload(mandate, mandate.sign(key)))
    return key, payloads


def _measure(payloads: list[dict[str, Any]], public_key: bjj.Point, message, check, rounds: int) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            for payload in payloads:
                started = clock()
                parsed = parse_payload(payload)
                ok = check(public_key, message(parsed.mandate), parsed.signature)
                samples.append((clock() - started) / 1000)
                if not ok:
                    raise AssertionError("a valid mandate did not verify")
    finally:
        gc.enable()
    return samples


def _measure_header(headers: list[str], public_key: bjj.Point, rounds: int) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for header in headers:
            started = clock()
            envelope = decode_header(header)
            parsed = parse_payload(envelope["payload"])
            ok = verify(public_key, parsed.mandate.message(), parsed.signature)
            samples.append((clock() - started) / 1000)
            if not ok:
                raise AssertionError("a valid mandate did not verify")
    return samples


def run() -> list[dict[str, Any]]:
    log(f"verify: signing {MANDATES} mandates")
    key, payloads = _payloads(MANDATES)
    public_key = key.public_key
    # Warm both variants' per-key tables (built on the intent's first mandate in the gateway)
    # and caches, and check that they agree on a valid mandate.
    first = parse_payload(payloads[0])
    assert verify(public_key, first.mandate.message(), first.signature)
    assert _baseline_verify(public_key, _baseline_message(first.mandate), first.signature)
    _measure(payloads[:20], public_key, Mandate.message, verify, 1)
    _measure(payloads[:20], public_key, _baseline_message, _baseline_verify, 1)

    # Interleave the variants' rounds so that load from other processes hits all alike.
    native: list[float] = []
    portable: list[float] = []
    baseline: list[float] = []
    chosen = _native.backend()
    for _ in range(ROUNDS):
        native += _measure(payloads, public_key, Mandate.message, verify, 1)
        _native.set_backend("portable")
        try:
            portable += _measure(payloads, public_key, Mandate.message, verify, 1)
        finally:
            _native.set_backend(chosen)
        baseline += _measure(payloads, public_key, _baseline_message, _baseline_verify, 1)
    warm, before = median(native), median(baseline)
    log(f"verify: native ({chosen}) {warm:.1f} µs, portable C {median(portable):.1f} µs, "
        f"light-poseidon + gmpy2 {before:.1f} µs")

    # Breakdown: the signature check alone (warm table), and the whole header path.
    parsed = [parse_payload(p) for p in payloads]
    clock = time.perf_counter_ns
    sig_only: list[float] = []
    for _ in range(ROUNDS):
        for p in parsed:
            message = p.mandate.message()
            started = clock()
            verify(public_key, message, p.signature)
            sig_only.append((clock() - started) / 1000)
    envelope = {"x402Version": 2, "accepted": {"scheme": "aep2"}, "payload": None}
    headers = [encode_header({**envelope, "payload": p}) for p in payloads]
    with_header = median(_measure_header(headers, public_key, ROUNDS))

    return [
        row("mandate_verify_us", warm, "us", before, digits=1),
        row("mandate_verify_portable_us", median(portable), "us", before, digits=1),
        row("mandate_verify_signature_only_us", median(sig_only), "us", digits=1),
        row("mandate_verify_with_header_decode_us", with_header, "us", digits=1),
    ]
