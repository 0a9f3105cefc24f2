"""``replica_throughput``: priced requests/s of two gateway replicas sharing one PostgreSQL
store, against one replica on the same store, in the same run.

Each replica is ``examples.payee_service`` under uvicorn in its own process (one worker, its
own GIL) with ``AEP2_STORE`` naming a fresh database on a throwaway PostgreSQL server
(``aep2.stores.devserver``), on a real Anvil deployment. The load is ``bench.throughput``'s
priced window (pre-signed mandates of one intent, fixed concurrency, every answer a 200 with a
``PAYMENT-RESPONSE``), its workers spread evenly over the replicas. On a 2-core machine the
replicas, the database and the load generator share the cores: the figure is reported, not
expected to double.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from eth_account import Account

from aep2.deployment import Deployment
from aep2.stores.devserver import PostgresServer
from examples.payee_service import start_process, stop_process
from settlement.artifacts import build_artifacts
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, free_port

from .common import INTENT_SLOTS, PAYEE_INDICES, PAYEE_SLOTS, PROCESSOR_INDEX, fund_payer, log, row
from .throughput import PRESIGNED, measure, prepare_priced


def _replicas_throughput(count: int, server: PostgresServer, deployment: Deployment, deployment_file: Path) -> float:
    """Priced requests/s of ``count`` replicas on a fresh database of ``server``, paid by a
    fresh payer on ``deployment`` (saved at ``deployment_file``)."""
    processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
    payee = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    store = server.dsn(server.create_database())
    budget = 10**12
    payer = fund_payer(deployment, escrow=budget, processor=processor, max_amount=budget)
    replicas: list[Any] = []
    try:
        for _ in range(count):
            replicas.append(
                start_process(
                    free_port(), deployment=deployment_file, payee=payee, store=store, processor=processor,
                    uvicorn_args=("--workers", "1", "--no-access-log"),
                )
            )
        urls = [url for _, url in replicas]
        _, presigned = prepare_priced(payer, urls[0], PRESIGNED)
        return measure(urls, presigned, paid=True, label=f"GET /v1/forecast, {count} replica(s) on PostgreSQL")
    finally:
        for process, _ in replicas:
            stop_process(process)


def run() -> list[dict[str, Any]]:
    artifacts = build_artifacts(16, INTENT_SLOTS, PAYEE_SLOTS)
    server = PostgresServer()
    with tempfile.TemporaryDirectory(prefix="aep2-bench-") as tmp, Anvil() as node:
        server.start()
        try:
            deployment_path = Path(tmp) / "deployment.json"
            deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=deployment_path)
            one = _replicas_throughput(1, server, deployment, deployment_path)
            two = _replicas_throughput(2, server, deployment, deployment_path)
        finally:
            server.stop()
    log(f"replicas: {two:.0f} req/s with 2 replicas, {one:.0f} req/s with 1")
    return [row("replica_throughput", two, "req/s", one, digits=1)]
