"""Witness generation: ``witness_seconds_n256``, circom's C++ generator against its WASM one.

On ``Batch(256, INTENT_SLOTS, PAYEE_SLOTS)`` (its artifacts and C++ generator built or taken
from the cache; the first C++ build takes minutes and is not timed), both generators compute
the witness of one full, satisfiable batch of real signed mandates (4 intents, 64 mandates
each, alternating between 2 payees), through ``settlement.prover.compute_witness`` as the
prover calls it (input JSON written, generator run, ``.wtns`` written). Each is timed
``RUNS`` times, alternating, and the median reported; the row's baseline is the WASM
generator's, its value the C++ one's (target: at most 3 s). The two witnesses must be
byte-identical, or the benchmark fails.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account

from aep2.mandate import Mandate, request_hash
from aep2.store import MandateRecord, MandateStatus
from payer import create_intent, create_session_key
from settlement.artifacts import build_artifacts, build_native_witness
from settlement.prover import compute_witness
from settlement.witness import IntentSlot, build_statement

from .common import INTENT_SLOTS, PAYEE_SLOTS, PRICE, Timer, log, median, row

N = 256
RUNS = 3
# Any addresses do: nothing here touches a chain, the circuit checks signatures and sums.
ASSET = "0x" + "11" * 20
SETTLEMENT = "0x" + "22" * 20
PROCESSOR = "0x" + "33" * 20
PAYEES = ("0x" + "44" * 20, "0x" + "55" * 20)
CHAIN_ID = 31337


def full_batch(n: int) -> dict[str, Any]:
    """Circuit inputs of ``n`` signed mandates over ``INTENT_SLOTS`` intents (``n`` divisible)."""
    time_ref = int(time.time())
    slots = []
    for _ in range(INTENT_SLOTS):
        owner, key = Account.create(), create_session_key()
        intent = create_intent(owner.key, session_key=key, asset=ASSET, max_amount=10**12, max_per_payment=PRICE,
                               chain_id=CHAIN_ID, settlement=SETTLEMENT, valid_for_seconds=3600,
                               processor=PROCESSOR).intent
        records = []
        for nonce in range(n // INTENT_SLOTS):
            mandate = Mandate(intent_id=intent.intent_id, payee=PAYEES[nonce % len(PAYEES)], amount=PRICE,
                              nonce=nonce, deadline=time_ref + 3600,
                              request_hash=request_hash("GET", f"/v1/forecast/city{nonce}"))
            records.append(MandateRecord(mandate.payment_id, mandate, mandate.sign(key), owner.address, ASSET,
                                         MandateStatus.BATCHED, time.time()))
        slots.append(IntentSlot(intent, 0, tuple(records)))
    return build_statement(slots, time_ref=time_ref, asset=ASSET, n=n, i=INTENT_SLOTS, p=PAYEE_SLOTS).inputs


def run() -> list[dict[str, Any]]:
    artifacts = build_artifacts(N, INTENT_SLOTS, PAYEE_SLOTS)
    with Timer() as build:
        native = build_native_witness(artifacts)
    if native is None:
        raise RuntimeError("no C++ witness generator (see the line above): install g++ libgmp-dev "
                           "nlohmann-json3-dev nasm make")
    log(f"witness N={N}: C++ generator ready in {build.seconds:.1f} s ({native.directory})")
    inputs = full_batch(N)
    seconds: dict[str, list[float]] = {"native": [], "wasm": []}
    with tempfile.TemporaryDirectory(prefix="aep2-bench-witness-") as tmp:
        for run_index in range(RUNS):
            for name, generator in (("wasm", None), ("native", native)):
                wtns = Path(tmp) / f"{name}-{run_index}.wtns"
                with Timer() as t:
                    compute_witness(artifacts, inputs, wtns, native=generator)
                seconds[name].append(t.seconds)
        if (Path(tmp) / "native-0.wtns").read_bytes() != (Path(tmp) / "wasm-0.wtns").read_bytes():
            raise RuntimeError(f"N={N}: the C++ witness differs from the WASM one")
    native_s, wasm_s = median(seconds["native"]), median(seconds["wasm"])
    log(f"witness N={N}: C++ {native_s:.2f} s, WASM {wasm_s:.2f} s (medians of {RUNS})")
    return [row(f"witness_seconds_n{N}", native_s, "s", wasm_s)]
