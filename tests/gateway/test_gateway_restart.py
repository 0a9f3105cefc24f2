"""Replay protection survives a restart: a mandate accepted by one gateway is refused by the next
gateway on the same store file — a new app instance, then a separate uvicorn process."""

from __future__ import annotations

import httpx
import pytest
from gateway_fixtures import PAYEE, PROCESSOR, error_code, open_store, signer_for

from aep2.errors import ErrorCode
from examples.payee_service import create_app, start_process, stop_process
from settlement.devchain import free_port

pytestmark = pytest.mark.chain

PATH = "/v1/forecast/paris"


async def test_replay_refused_after_restart(deployment, make_payer, serve, store_path, tmp_path):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH)
    first = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    assert httpx.get(first.url + PATH, headers={"PAYMENT-SIGNATURE": header}).status_code == 200
    first.stop()

    # A new app instance on the same file (its caches start empty).
    second = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    assert error_code(httpx.get(second.url + PATH, headers={"PAYMENT-SIGNATURE": header})) == ErrorCode.NONCE_USED
    # It knows the intent from the store: the next mandate needs no embedded intent.
    following = signer.header("GET", "/v1/forecast/rome", include_intent=False)
    assert httpx.get(second.url + "/v1/forecast/rome", headers={"PAYMENT-SIGNATURE": following}).status_code == 200
    second.stop()

    # A separate gateway process, configured from the environment like production.
    deployment_file = str(tmp_path / "deployment.json")
    deployment.save(deployment_file)
    process, url = start_process(
        free_port(), deployment=deployment_file, payee=PAYEE, store=store_path, processor=PROCESSOR, timeout=30
    )
    try:
        for path, replay in ((PATH, header), ("/v1/forecast/rome", following)):
            response = httpx.get(url + path, headers={"PAYMENT-SIGNATURE": replay})
            assert error_code(response) == ErrorCode.NONCE_USED
    finally:
        stop_process(process)

    async with open_store(store_path) as store:
        assert [m.mandate.nonce for m in await store.mandates()] == [0, 1]
