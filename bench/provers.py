"""``settle_throughput``: mandates proven and settled per second by the processor with 2 prover
workers, against 1 worker in the same run.

On a fresh Anvil with the ``Batch(64, 4, 2)`` verifier deployed, for each pool size in turn:

1. ``PAYERS`` fresh payers each make ``CALLS`` paid calls to ``examples.payee_service``
   (in process over ASGI, ``payer.AEP2Auth``): a backlog of ``PAYERS * CALLS / 64`` full batches
   of accepted mandates in a fresh SQLite store;
2. a ``settlement.provers.LocalProverPool`` of that size loads its keys (``ready()``, not
   timed: ``key_load_seconds_n*`` of ``bench.prover`` reports key loading);
3. ``SettlementProcessor.settle_all()`` proves and settles the whole backlog: the rate is
   settled mandates over its wall time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from aep2.stores import create_store
from examples.payee_service import create_app
from settlement.artifacts import build_artifacts
from settlement.chain import SettlementClient
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key
from settlement.processor import SettlementProcessor
from settlement.provers import LocalProverPool

from .common import INTENT_SLOTS, PAYEE_INDICES, PAYEE_SLOTS, PRICE, PROCESSOR_INDEX, fund_payer, log, row

N = 64
PAYERS = 6
CALLS = 64  # per payer: PAYERS * CALLS / N = 6 full batches of backlog
POOL_SIZES = (1, 2)


async def _backlog(deployment: Any, store: str, payee: str, processor: str) -> None:
    from payer import AEP2Auth, PayerState

    app = create_app(deployment, payee, store, processor=processor)
    for _ in range(PAYERS):
        payer = fund_payer(deployment, escrow=PRICE * CALLS, processor=processor, max_amount=PRICE * CALLS)
        auth = AEP2Auth(payer.signed_intent, payer.session_key, PayerState())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://payee.test", auth=auth) as client:
            for k in range(CALLS):
                response = await client.get(f"/v1/forecast/city{k}")
                if response.status_code != 200:
                    raise RuntimeError(f"paid call answered {response.status_code}: {response.text}")


async def _settle(deployment: Any, artifacts: Any, store_path: str, size: int) -> tuple[float, int]:
    store = create_store(store_path)
    await store.open()
    client = SettlementClient(deployment.rpc_url, deployment.settlement, anvil_key(PROCESSOR_INDEX))
    provers = LocalProverPool(artifacts, size=size)
    try:
        loads = await provers.ready()
        log(f"{size} prover(s) loaded their keys in {', '.join(f'{s:.1f}' for _, s in loads)} s")
        processor = SettlementProcessor(store, client, provers, deployment.token)
        started = time.perf_counter()
        results = await processor.settle_all()
        seconds = time.perf_counter() - started
        left = [m for m in await store.mandates() if m.status != "settled"]
        if left:
            raise RuntimeError(f"{len(left)} mandates not settled")
    finally:
        await provers.aclose()
        await client.aclose()
        await store.close()
    settled = sum(result.mandates for result in results)
    log(f"{size} prover(s): {settled} mandates in {len(results)} batches, {seconds:.1f} s")
    return settled / seconds, settled


def run() -> list[dict[str, Any]]:
    artifacts = build_artifacts(N, INTENT_SLOTS, PAYEE_SLOTS)
    processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
    payee = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="aep2-bench-") as tmp, Anvil() as node:
        deployment = deploy(node.rpc_url, anvil_key(0), artifacts)
        for size in POOL_SIZES:
            store = str(Path(tmp) / f"payments-{size}.sqlite")
            asyncio.run(_backlog(deployment, store, payee, processor))
            rates[size], _ = asyncio.run(_settle(deployment, artifacts, store, size))
    return [
        row("settle_throughput", rates[2], "mandates/s", rates[1]),
        row("settle_throughput_1_prover", rates[1], "mandates/s"),
    ]
