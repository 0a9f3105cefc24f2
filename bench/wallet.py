"""``wallet_sign_ms`` and ``wallet_paid_call_ms``: what paying through the co-wallet costs.

A real Anvil deployment; the example payee service (our gateway) under uvicorn in a child
process; the co-wallet as its owner runs it, ``python -m wallet serve`` in another child
process, set up with its own commands (``init``, ``deposit``) and API (32 agents, each with an
intent the owner approves, registered on chain).

* ``wallet_sign_ms``: p50 of ``POST /v1/payments/authorize`` (authenticate, policy check
  against the history, sign the mandate, reserve in the ledger, audit) with 32 agents asking
  at once, each for its own requests. Baseline: p50 of signing the same mandate in process
  (what ``payer.AEP2Auth`` does per call: ``Mandate.sign`` on BabyJubJub, the payload, the
  header), so the ratio is the price of keeping the key out of the agent.
* ``wallet_paid_call_ms``: p50 of one paid call, 402 round trip included, by an agent with
  ``payer.WalletAuth`` (the wallet signs and is told the receipt), against the baseline of the
  same call with an in-process ``payer.AEP2Auth``, interleaved one by one on one connection.

The run fails if a paid call is not answered 200 with a receipt.

Run: ``python -m bench wallet``; ``AEP2_BENCH_WALLET_CALLS`` sets the timed calls per kind
(default 50) and the authorizations per agent (default 20).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from web3 import Web3

from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, decode_header, encode_header
from examples.payee_service import start_process
from examples.processes import stop_process
from payer import AEP2Auth, PayerState
from payer.remote import WalletAuth
from settlement.artifacts import build_artifacts
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, free_port, mint

from .common import PAYEE_INDICES, PROCESSOR_INDEX, fund_payer, log, row

AGENTS = 32
SHAPE = (4, 2, 2)  # nothing is proved here: the smallest cached circuit
OWNER_TOKEN = "bench-owner-token-" + "x" * 16
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _start_wallet(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m wallet serve`` on ``port``, once it answers."""
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wallet", "serve", "--port", str(port), "--rate-limit", "1000000/second",
             "--log-level", "warning"],
            cwd=PROJECT_ROOT, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=out,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the wallet exited during start-up: {log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError("the wallet did not answer within 60 s")


def _wallet_cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "wallet", *args], cwd=PROJECT_ROOT, env=os.environ | env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"python -m wallet {' '.join(args)}: {done.stderr}")


def _agents(wallet_url: str, count: int) -> list[str]:
    """``count`` agents with an approved intent each; their API keys."""
    owner = {"Authorization": f"Bearer {OWNER_TOKEN}"}
    keys = []
    with httpx.Client(base_url=wallet_url, timeout=120) as http:
        for n in range(count):
            agent = http.post("/v1/agents", json={"name": f"agent-{n}"}, headers=owner).json()
            draft = {"budget": 10**9, "purpose": "bench", "durationSeconds": 86400, "perPaymentCap": 5_000}
            intent = http.post("/v1/intents", json=draft, headers={"Authorization": f"Bearer {agent['apiKey']}"}).json()
            approved = http.post(f"/v1/intents/{intent['id']}/approve", headers=owner)
            if approved.status_code != 200:
                raise RuntimeError(f"approve: {approved.status_code} {approved.text}")
            keys.append(agent["apiKey"])
    return keys


async def _sign_latencies(wallet_url: str, keys: list[str], requirement: dict[str, Any], base_url: str,
                          per_agent: int) -> list[float]:
    """Every agent asks for ``per_agent`` signatures, all agents at once; milliseconds each."""
    samples: list[float] = []

    async def agent(n: int, key: str, client: httpx.AsyncClient) -> None:
        for k in range(per_agent):
            body = {"requirement": requirement, "url": f"{base_url}/v1/forecast/a{n}-{k}", "method": "GET"}
            started = time.perf_counter()
            answer = await client.post("/v1/payments/authorize", json=body, headers={"Authorization": f"Bearer {key}"})
            samples.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"authorize: {answer.status_code} {answer.text}")

    limits = httpx.Limits(max_connections=len(keys))
    async with httpx.AsyncClient(base_url=wallet_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(agent(n, key, client) for n, key in enumerate(keys)))
    return samples


def _local_sign_latencies(payer: Any, requirement: dict[str, Any], count: int) -> list[float]:
    """Milliseconds to sign one mandate in process, as ``AEP2Auth`` does per call."""
    samples = []
    for nonce in range(count):
        started = time.perf_counter()
        mandate = Mandate(intent_id=payer.signed_intent.intent.intent_id, payee=requirement["payTo"],
                          amount=int(requirement["amount"]), nonce=nonce, deadline=int(time.time()) + 3600,
                          request_hash=request_hash("GET", f"/v1/forecast/l{nonce}", b""))
        payload = build_payload(mandate, mandate.sign(payer.session_key), payer.signed_intent)
        encode_header({"x402Version": 2, "accepted": requirement, "resource": {"url": "/"}, "payload": payload})
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _timed_paid_get(client: httpx.Client, path: str, label: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or PAYMENT_RESPONSE_HEADER not in response.headers:
        raise RuntimeError(f"{label}: {path} answered {response.status_code} without a receipt: {response.text[:300]}")
    return elapsed


def run() -> list[dict[str, Any]]:
    calls = int(os.environ.get("AEP2_BENCH_WALLET_CALLS", 50))
    per_agent = max(1, calls * 2 // 5)
    artifacts = build_artifacts(*SHAPE)
    processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
    payee = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    gateway = wallet = None
    with tempfile.TemporaryDirectory(prefix="aep2-bench-wallet-") as tmp, Anvil() as node:
        try:
            work = Path(tmp)
            deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=work / "deployment.json")
            gateway, base_url = start_process(
                free_port(), deployment=work / "deployment.json", payee=payee, store=work / "payments.sqlite",
                processor=processor, uvicorn_args=("--workers", "1", "--no-access-log"),
            )
            # The wallet's owner: a funded account, its key only in the wallet's keystore.
            owner = Account.create()
            Web3(Web3.HTTPProvider(node.rpc_url)).provider.make_request("anvil_setBalance", [owner.address, hex(10**20)])
            mint(node.rpc_url, deployment.token, owner.address, 10**12)
            from wallet.keys import OwnerKeystore, Sealer

            OwnerKeystore.create(work / "owner.json", "bench", private_key=owner.key, kdf="pbkdf2", iterations=1000)
            env = {
                "AEP2_WALLET_DB": f"sqlite+aiosqlite:///{work / 'wallet.sqlite'}", "AEP2_WALLET_KEY": Sealer.generate_key(),
                "AEP2_WALLET_OWNER_PASSWORD": "bench", "AEP2_WALLET_OWNER_KEYSTORE": str(work / "owner.json"),
                "AEP2_WALLET_OWNER_TOKEN": OWNER_TOKEN, "AEP2_DEPLOYMENT": str(work / "deployment.json"),
                "AEP2_PROCESSOR": processor,
            }
            _wallet_cli(env, "init")
            _wallet_cli(env, "deposit", str(10**12))
            port = free_port()
            wallet = _start_wallet(env, port, work / "wallet.log")
            wallet_url = f"http://127.0.0.1:{port}"
            log(f"wallet: {AGENTS} agents with an intent each (registered on chain)")
            keys = _agents(wallet_url, AGENTS)

            challenge = httpx.get(base_url + "/v1/forecast/x")
            requirement = next(e for e in decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER])["accepts"]
                               if e["scheme"] == "aep2")
            local_payer = fund_payer(deployment, escrow=10**12, processor=processor, max_amount=10**12)

            asyncio.run(_sign_latencies(wallet_url, keys, requirement, base_url, 2))  # warm-up
            signs = asyncio.run(_sign_latencies(wallet_url, keys, requirement, base_url, per_agent))
            local = _local_sign_latencies(local_payer, requirement, max(calls, 20))

            remote_ms: list[float] = []
            local_ms: list[float] = []
            in_process = AEP2Auth(local_payer.signed_intent, local_payer.session_key, PayerState())
            with WalletAuth(wallet_url, keys[0]) as remote_auth, \
                    httpx.Client(base_url=base_url, auth=remote_auth, timeout=60) as remote, \
                    httpx.Client(base_url=base_url, auth=in_process, timeout=60) as direct:
                for k in range(calls + 3):
                    timed = (_timed_paid_get(remote, f"/v1/forecast/r{k}", "wallet"),
                             _timed_paid_get(direct, f"/v1/forecast/d{k}", "in-process"))
                    if k >= 3:  # warm-up rounds
                        remote_ms.append(timed[0])
                        local_ms.append(timed[1])
        finally:
            for process in (wallet, gateway):
                if process is not None:
                    stop_process(process)
    return [
        row("wallet_sign_ms", statistics.median(signs), "ms", statistics.median(local)),
        row("wallet_paid_call_ms", statistics.median(remote_ms), "ms", statistics.median(local_ms)),
    ]
