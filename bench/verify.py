"""``mandate_verify_us``: one full off-chain verification of a mandate, as the gateway does it.

Per mandate: ``parse_payload`` of the aep2 payload object (schema, decimal strings, Mandate
range checks), ``Mandate.message()`` (the packed Poseidon(3) mandate hash) and
``aep2.eddsa.verify`` with the session key's per-key table already built (the gateway's
steady state: the table is built on the intent's first mandate). The baseline runs the very
same steps but computes ``(8·hm)·A`` with the cold double-and-add ``aep2.babyjubjub.multiply``
instead of the per-key table, so the ratio shows what that precomputation buys.

Single-threaded, in this process; median over many distinct pre-signed mandates.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from aep2 import babyjubjub as bjj
from aep2.eddsa import _B8_TABLE, L, Signature, SessionKey, verify
from aep2.fields import FIELD_MODULUS
from aep2.intent import Intent
from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload, parse_payload
from aep2.poseidon import poseidon
from aep2.x402 import decode_header, encode_header

from .common import log, median, row

MANDATES = 200  # distinct signed mandates, cycled through
ROUNDS = 10  # passes over them for the warm (cached-table) variant
COLD_ROUNDS = 2  # the cold variant is ~10x slower


def _cold_verify(public_key: bjj.Point, message: int, signature: Signature) -> bool:
    """``aep2.eddsa.verify`` without the per-key table: ``(8·hm)·A`` by double-and-add."""
    if not (0 <= message < FIELD_MODULUS and 0 <= signature.S < L):
        return False
    r8 = (signature.R8x, signature.R8y)
    if not bjj.is_on_curve(r8) or not bjj.is_on_curve(public_key):
        return False
    eight_a = bjj.multiply(public_key, 8)
    if eight_a == bjj.IDENTITY:
        return False
    hm = poseidon(r8[0], r8[1], public_key[0], public_key[1], message)
    right = bjj.add(r8, bjj.multiply(eight_a, hm))
    left = _B8_TABLE.multiply_ext(signature.S)
    return bjj.ext_equals_affine(left, right)


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


def _measure(payloads: list[dict[str, Any]], public_key: bjj.Point, check, rounds: int) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            for payload in payloads:
                started = clock()
                parsed = parse_payload(payload)
                ok = check(public_key, parsed.mandate.message(), parsed.signature)
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
    # Warm the per-key table (built on the intent's first mandate in the gateway) and caches.
    first = parse_payload(payloads[0])
    assert verify(public_key, first.mandate.message(), first.signature)
    assert _cold_verify(public_key, first.mandate.message(), first.signature)
    _measure(payloads[:20], public_key, verify, 1)

    warm = median(_measure(payloads, public_key, verify, ROUNDS))
    cold = median(_measure(payloads, public_key, _cold_verify, COLD_ROUNDS))
    log(f"verify: warm {warm:.1f} µs, cold double-and-add {cold:.1f} µs")

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
        row("mandate_verify_us", warm, "us", cold, digits=1),
        row("mandate_verify_signature_only_us", median(sig_only), "us", digits=1),
        row("mandate_verify_with_header_decode_us", with_header, "us", digits=1),
    ]
