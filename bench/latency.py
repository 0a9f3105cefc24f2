"""``exact_latency_ms`` and ``aep2_latency_ms``: what one paid call costs a client in wall time,
next to an unpriced call on the same server.

``examples.payee_service`` runs under uvicorn in a subprocess (one worker) on a real Anvil
deployment, with an in-process ``facilitator.ExactEvmFacilitator`` (``AEP2_FACILITATOR_KEY``)
so that it offers ``exact``. One ``httpx.Client`` (one keep-alive loopback connection) sends
one request at a time; each round sends, in this order:

* baseline: ``GET /health`` (unpriced, passes straight through the middleware);
* ``exact``: ``GET /v1/forecast/<city>`` with a fresh EIP-3009 authorization. The gateway
  verifies it at the facilitator (signature, balance, authorization state, ``eth_call``
  simulation), runs the handler, and answers only once ``transferWithAuthorization`` is mined
  (Anvil automines), so the time includes one mined transaction;
* ``aep2``: the same route with a fresh mandate of one intent in Intent Mode (paid up front,
  no 402 round trip); settlement happens later in batches, so no transaction is in the path.

Interleaving the three spreads any drift (store growth, chain state) over all of them. Every
payload is signed before the timed calls (``ExactEvmScheme.create_payment_payload`` as the
official x402 SDK's client signs, and ``bench.throughput``'s mandates as ``payer.AEP2Auth``
signs), so the numbers are the server's and the settlement's, not the client's signing. A few
untimed warm-up rounds go first.

Rows: ``exact_latency_ms`` and ``aep2_latency_ms`` (p50, ms) and their p95s, each with
``baseline`` = p50 (or p95) of ``GET /health``. The run fails if a paid call is not answered
200 with a ``PAYMENT-RESPONSE`` or if the payee's token balance did not rise by exactly
(exact calls) × price: a benchmark of broken payments is worthless.

Run: ``python -m bench latency``; ``AEP2_BENCH_LATENCY_CALLS`` sets the timed calls per kind
(default 50).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from aep2.deployment import Deployment, contract_artifact
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER, decode_header, encode_header
from examples.payee_service import start_process, stop_process
from settlement.artifacts import build_artifacts
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, free_port, mint

from .common import FACILITATOR_INDEX, PAYEE_INDICES, PROCESSOR_INDEX, fund_payer, log, row
from .throughput import presign as presign_mandates

DEFAULT_CALLS = 50
WARMUP = 5  # untimed rounds before the timed ones
SHAPE = (4, 2, 2)  # circuit of the deployment (nothing is proved here; the smallest cached one)
ROUTE = "/v1/forecast/city{k}"


def _presign_exact(account: Any, requirement: PaymentRequirements, count: int) -> list[dict[str, str]]:
    """``count`` headers, each a fresh authorization (random nonce) of ``requirement``."""
    scheme = ExactEvmScheme(EthAccountSigner(account))
    headers = []
    for _ in range(count):
        envelope = PaymentPayload(accepted=requirement, payload=scheme.create_payment_payload(requirement))
        headers.append({PAYMENT_SIGNATURE_HEADER: encode_header(envelope.model_dump(by_alias=True, exclude_none=True))})
    return headers


def _token_balance(deployment: Deployment, owner: str) -> int:
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    token = w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])
    return int(token.functions.balanceOf(owner).call())


def _timed_get(client: httpx.Client, path: str, headers: dict[str, str], *, paid: bool, label: str) -> float:
    """Milliseconds for one GET (through the body); raises unless 200 (with a receipt if ``paid``)."""
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{label}: {path} answered {response.status_code}: {response.text[:500]}")
    if paid and PAYMENT_RESPONSE_HEADER not in response.headers:
        raise RuntimeError(f"{label}: {path} answered 200 without {PAYMENT_RESPONSE_HEADER}")
    return elapsed


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def run() -> list[dict[str, Any]]:
    calls = int(os.environ.get("AEP2_BENCH_LATENCY_CALLS", DEFAULT_CALLS))
    if calls < 2:
        raise ValueError(f"AEP2_BENCH_LATENCY_CALLS must be at least 2, got {calls}")
    rounds = WARMUP + calls
    artifacts = build_artifacts(*SHAPE)
    processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
    payee = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    server = None
    with tempfile.TemporaryDirectory(prefix="aep2-bench-") as tmp, Anvil() as node:
        try:
            deployment_path = Path(tmp) / "deployment.json"
            deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=deployment_path)
            budget = 10**12
            aep2_payer = fund_payer(deployment, escrow=budget, processor=processor, max_amount=budget)
            exact_payer = Account.create()  # EIP-3009 is gasless for the payer: tokens only
            mint(deployment.rpc_url, deployment.token, exact_payer.address, budget)
            server, base_url = start_process(
                free_port(), deployment=deployment_path, payee=payee, store=Path(tmp) / "payments.sqlite",
                processor=processor, facilitator_key=anvil_key(FACILITATOR_INDEX),
                uvicorn_args=("--workers", "1", "--no-access-log"),
            )

            challenge = httpx.get(base_url + ROUTE.format(k=0))
            if challenge.status_code != 402:
                raise RuntimeError(f"expected a 402 challenge, got {challenge.status_code}")
            required = decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER], header=PAYMENT_REQUIRED_HEADER)
            exact = next(e for e in PaymentRequired.model_validate(required).accepts if e.scheme == "exact")
            aep2_requirement = next(entry for entry in required["accepts"] if entry["scheme"] == "aep2")
            price = int(exact.amount)

            log(f"latency: pre-signing {rounds} exact authorizations and {rounds + 1} mandates")
            exact_headers = _presign_exact(exact_payer, exact, rounds)
            mandates = presign_mandates(aep2_payer, aep2_requirement, base_url, rounds + 1)
            payee_before = _token_balance(deployment, payee)

            health: list[float] = []
            exact_ms: list[float] = []
            aep2_ms: list[float] = []
            with httpx.Client(base_url=base_url, timeout=60) as client:
                # Round 0 carries the signed intent (first use registers it): untimed, like warm-up.
                _timed_get(client, *mandates[0], paid=True, label="aep2 (intent)")
                for k in range(rounds):
                    path = ROUTE.format(k=k)
                    timed = [
                        _timed_get(client, "/health", {}, paid=False, label="health"),
                        _timed_get(client, path, exact_headers[k], paid=True, label="exact"),
                        _timed_get(client, *mandates[k + 1], paid=True, label="aep2"),
                    ]
                    if k >= WARMUP:
                        for samples, ms in zip((health, exact_ms, aep2_ms), timed):
                            samples.append(ms)

            paid = _token_balance(deployment, payee) - payee_before
            if paid != rounds * price:
                raise RuntimeError(f"exact: payee received {paid}, expected {rounds} x {price} = {rounds * price}")
        finally:
            if server is not None:
                stop_process(server)

    health_p50, health_p95 = statistics.median(health), _p95(health)
    log(f"latency: {calls} calls each; p50 health {health_p50:.2f} ms, exact {statistics.median(exact_ms):.2f} ms, "
        f"aep2 {statistics.median(aep2_ms):.2f} ms; payee received {paid} on chain")
    return [
        row("exact_latency_ms", statistics.median(exact_ms), "ms", health_p50, digits=2),
        row("aep2_latency_ms", statistics.median(aep2_ms), "ms", health_p50, digits=2),
        row("exact_latency_p95_ms", _p95(exact_ms), "ms", health_p95, digits=2),
        row("aep2_latency_p95_ms", _p95(aep2_ms), "ms", health_p95, digits=2),
    ]
