"""The budget holds under concurrency: 200 simultaneous paid requests against an intent that
covers exactly 100 of them, on a live uvicorn server and one SQLite store."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from gateway_fixtures import FORECAST_PRICE, error_code, open_store, signer_for

from aep2.errors import ErrorCode

pytestmark = pytest.mark.chain

CALLS = 100
REQUESTS = 200


async def test_budget_admits_exactly_what_it_covers(gateway_server, make_payer, deployment, store_path):
    payer = make_payer(escrow=REQUESTS * FORECAST_PRICE * 2)
    signer = signer_for(payer, deployment, max_amount=CALLS * FORECAST_PRICE, max_per_payment=FORECAST_PRICE)
    # Pre-sign every mandate (distinct nonces, each bound to its own path) before sending any.
    paths = [f"/v1/forecast/city{n}" for n in range(REQUESTS)]
    headers = [signer.header("GET", path) for path in paths]

    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=gateway_server.url, limits=limits, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.get(path, headers={"PAYMENT-SIGNATURE": header}) for path, header in zip(paths, headers))
        )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: CALLS, 402: REQUESTS - CALLS}
    assert {error_code(r) for r in responses if r.status_code == 402} == {ErrorCode.BUDGET_EXCEEDED}
    served = {r.url.path for r in responses if r.status_code == 200}
    assert all("PAYMENT-RESPONSE" in r.headers for r in responses if r.status_code == 200)

    async with open_store(store_path) as store:
        accepted = await store.mandates("accepted")
        assert len(await store.mandates()) == CALLS
    assert len(accepted) == CALLS
    assert sum(m.mandate.amount for m in accepted) == signer.signed.intent.max_amount
    # The stored mandates are exactly those of the served requests.
    served_nonces = {paths.index(path) for path in served}
    assert {m.mandate.nonce for m in accepted} == served_nonces
