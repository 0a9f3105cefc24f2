"""Two gateway processes serve one payee from one PostgreSQL store: 500 simultaneous paid
requests, split over both, against an intent that covers exactly 100 of them."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from gateway_fixtures import FORECAST_PRICE, PAYEE, PROCESSOR, error_code, signer_for

from aep2.errors import ErrorCode
from aep2.stores import create_store
from examples.payee_service import start_process, stop_process
from settlement.devchain import free_port

pytestmark = pytest.mark.chain

CALLS = 100
REQUESTS = 500
REPLICAS = 2


async def test_two_replicas_on_postgres_admit_exactly_what_the_intent_covers(
    deployment, make_payer, postgresql_server, tmp_path
):
    store = postgresql_server.dsn(postgresql_server.create_database())
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    replicas = []
    try:
        for _ in range(REPLICAS):
            replicas.append(
                start_process(free_port(), deployment=deployment_file, payee=PAYEE, store=store, processor=PROCESSOR)
            )
        payer = make_payer(escrow=REQUESTS * FORECAST_PRICE * 2)
        signer = signer_for(payer, deployment, max_amount=CALLS * FORECAST_PRICE, max_per_payment=FORECAST_PRICE)
        # Pre-signed, distinct nonces, each bound to its own path; request k goes to replica k % 2.
        paths = [f"/v1/forecast/city{n}" for n in range(REQUESTS)]
        headers = [signer.header("GET", path) for path in paths]

        limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
        clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=120) for _, url in replicas]
        try:
            responses = await asyncio.gather(
                *(
                    clients[k % REPLICAS].get(path, headers={"PAYMENT-SIGNATURE": header})
                    for k, (path, header) in enumerate(zip(paths, headers))
                )
            )
        finally:
            for client in clients:
                await client.aclose()
    finally:
        for process, _ in replicas:
            stop_process(process)

    assert Counter(r.status_code for r in responses) == {200: CALLS, 402: REQUESTS - CALLS}
    assert {error_code(r) for r in responses if r.status_code == 402} == {ErrorCode.BUDGET_EXCEEDED}
    assert all("PAYMENT-RESPONSE" in r.headers for r in responses if r.status_code == 200)
    served = [k for k, r in enumerate(responses) if r.status_code == 200]
    assert {k % REPLICAS for k in served} == set(range(REPLICAS)), "one replica served every paid request"

    async with create_store(store) as shared:
        mandates = await shared.mandates()
    # None reserved twice: one row per served request, each its own nonce.
    assert sorted(m.mandate.nonce for m in mandates) == served
    assert len({m.payment_id for m in mandates}) == CALLS
    assert sum(m.mandate.amount for m in mandates) == signer.signed.intent.max_amount
    assert {m.status for m in mandates} == {"accepted"}
