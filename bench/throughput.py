"""``priced_throughput``: requests/s of a priced route against the same app's free route.

``examples.payee_service.create_app`` (built from the environment by
``uvicorn examples.payee_service:app``) runs under uvicorn in a subprocess (one worker, its
own GIL) on a real Anvil deployment. The load generator runs httpx ``AsyncClient``s in this
process (one keep-alive connection per worker) at fixed concurrency for a fixed duration:

* baseline: ``GET /health`` (unpriced, passes straight through the middleware);
* value: ``GET /v1/forecast/<city>``, every request carrying a fresh valid mandate of one
  intent in Intent Mode (paid up front, no 402 round trip). The mandates are signed before
  the timed window exactly as ``payer.AEP2Auth`` signs them (``Mandate.sign`` →
  ``build_payload`` → v2 envelope → ``encode_header``) so that the generator measures the
  server, not the client's signing. Each must come back 200 with a ``PAYMENT-RESPONSE``.

Extra row ``priced_throughput_aep2auth``: the same priced route driven by ``payer.AEP2Auth``
itself in Intent Mode (signing inside the load generator), for comparison.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
from eth_account import Account

from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER, decode_header, encode_header
from examples.payee_service import start_process, stop_process
from settlement.artifacts import build_artifacts
from settlement.deploy import deploy
from settlement.devchain import Anvil, free_port, anvil_key

from .common import INTENT_SLOTS, PAYEE_INDICES, PAYEE_SLOTS, PROCESSOR_INDEX, FundedPayer, fund_payer, log, row

CONCURRENCY = 32
DURATION = 6.0  # seconds per timed window
WARMUP = 1.5  # seconds of load before each timed window
LIVE_DURATION = 4.0
PRESIGNED = 7_000  # mandates signed up front (the priced window stops early if it runs out)
CITIES = 64


def presign(payer: FundedPayer, requirement: dict[str, Any], base_url: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """``count`` (path, headers) pairs, nonces 0.., the first one carrying the signed intent."""
    intent_id = payer.signed_intent.intent.intent_id
    deadline = int(time.time()) + 3600
    out = []
    for nonce in range(count):
        path = f"/v1/forecast/city{nonce % CITIES}"
        mandate = Mandate(
            intent_id=intent_id,
            payee=requirement["payTo"],
            amount=int(requirement["amount"]),
            nonce=nonce,
            deadline=deadline,
            request_hash=request_hash("GET", path, b""),
        )
        payload = build_payload(mandate, mandate.sign(payer.session_key), payer.signed_intent if nonce == 0 else None)
        envelope = {"x402Version": 2, "accepted": requirement, "resource": {"url": base_url + path}, "payload": payload}
        out.append((path, {PAYMENT_SIGNATURE_HEADER: encode_header(envelope)}))
    return out


def prepare_priced(
    payer: FundedPayer, base_url: str, count: int
) -> tuple[dict[str, Any], Iterator[tuple[str, dict[str, str]]]]:
    """The service's ``aep2`` requirement (from a 402 challenge) and ``count - 1`` pre-signed
    paid requests, after the first one (carrying the intent) was served. Raises
    ``RuntimeError`` if that first one is refused."""
    challenge = httpx.get(base_url + "/v1/forecast/city0")
    assert challenge.status_code == 402, challenge.status_code
    accepts = decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER], header=PAYMENT_REQUIRED_HEADER)["accepts"]
    requirement = next(entry for entry in accepts if entry["scheme"] == "aep2")

    log(f"throughput: pre-signing {count} mandates")
    started = time.perf_counter()
    presigned = presign(payer, requirement, base_url, count)
    log(f"throughput: signed in {time.perf_counter() - started:.1f} s")
    first_path, first_headers = presigned[0]
    first = httpx.get(base_url + first_path, headers=first_headers)  # first use: carries the intent
    if first.status_code != 200:
        raise RuntimeError(f"first paid request refused: {first.status_code} {first.headers}")
    return requirement, iter(presigned[1:])


async def _load(
    base_urls: Sequence[str], requests: Iterator[tuple[str, dict[str, str]]], *, duration: float, paid: bool,
    auth: httpx.Auth | None = None,
) -> tuple[float, collections.Counter[str]]:
    """Fire ``requests`` at fixed concurrency for ``duration`` s, worker ``k`` at
    ``base_urls[k % len(base_urls)]``; returns (requests/s over all, outcome counts)."""
    outcomes: collections.Counter[str] = collections.Counter()
    # One single-connection client per worker: httpx's shared pool serialises badly at high
    # concurrency (a shared 32-connection pool measured ~5x slower than 32 clients here).
    clients = [
        httpx.AsyncClient(base_url=base_urls[k % len(base_urls)], limits=httpx.Limits(max_connections=1),
                          timeout=30, auth=auth)
        for k in range(CONCURRENCY)
    ]
    try:
        started = time.perf_counter()
        stop_at = started + duration

        async def worker(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < stop_at:
                try:
                    path, headers = next(requests)
                except StopIteration:
                    outcomes["exhausted"] += 1
                    return
                response = await client.get(path, headers=headers)
                if response.status_code != 200:
                    outcomes[f"status {response.status_code}"] += 1
                elif paid and PAYMENT_RESPONSE_HEADER not in response.headers:
                    outcomes["no receipt"] += 1
                else:
                    outcomes["ok"] += 1

        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return outcomes["ok"] / elapsed, outcomes


def measure(base_urls: Sequence[str], requests: Iterator[tuple[str, dict[str, str]]], *, paid: bool, label: str,
            duration: float = DURATION, auth: httpx.Auth | None = None) -> float:
    """Requests/s of ``requests`` spread over ``base_urls`` at ``CONCURRENCY``, timed for
    ``duration`` s after a ``WARMUP``. Raises ``RuntimeError`` if any answer is not a 200 (with
    a ``PAYMENT-RESPONSE`` when ``paid``)."""
    warm_rate, warm = asyncio.run(_load(base_urls, requests, duration=WARMUP, paid=paid, auth=auth))
    rate, outcomes = asyncio.run(_load(base_urls, requests, duration=duration, paid=paid, auth=auth))
    failures = {k: v for k, v in (outcomes + warm).items() if k not in ("ok", "exhausted")}
    log(f"throughput: {label}: {rate:.0f} req/s (warm-up {warm_rate:.0f}); outcomes {dict(outcomes)}")
    if failures:
        raise RuntimeError(f"{label}: {failures} of the requests failed")
    if outcomes["exhausted"]:
        log(f"throughput: {label}: ran out of pre-signed mandates before {duration} s (rate over the elapsed time)")
    return rate


def run() -> list[dict[str, Any]]:
    from payer import AEP2Auth, PayerState

    artifacts = build_artifacts(16, INTENT_SLOTS, PAYEE_SLOTS)
    processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
    payee = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    server = None
    with tempfile.TemporaryDirectory(prefix="aep2-bench-") as tmp, Anvil() as node:
        try:
            deployment_path = Path(tmp) / "deployment.json"
            deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=deployment_path)
            budget = 10**12
            payer = fund_payer(deployment, escrow=budget, processor=processor, max_amount=budget)
            live_payer = fund_payer(deployment, escrow=budget, processor=processor, max_amount=budget)
            server, base_url = start_process(
                free_port(), deployment=deployment_path, payee=payee, store=Path(tmp) / "payments.sqlite",
                processor=processor, uvicorn_args=("--workers", "1", "--no-access-log"),
            )

            requirement, presigned = prepare_priced(payer, base_url, PRESIGNED)
            health = measure([base_url], itertools.repeat(("/health", {})), paid=False, label="GET /health")
            priced = measure([base_url], presigned, paid=True, label="GET /v1/forecast (pre-signed)")

            auth = AEP2Auth(live_payer.signed_intent, live_payer.session_key, PayerState())
            for city in range(CITIES):
                auth.prepay(requirement, url=f"/v1/forecast/city{city}")
            live_requests = ((f"/v1/forecast/city{k % CITIES}", {}) for k in itertools.count())
            live = measure([base_url], live_requests, paid=True, label="GET /v1/forecast (AEP2Auth)",
                            duration=LIVE_DURATION, auth=auth)
        finally:
            if server is not None:
                stop_process(server)
    return [
        row("priced_throughput", priced, "req/s", health, digits=1),
        row("priced_throughput_aep2auth", live, "req/s", health, digits=1),
    ]
