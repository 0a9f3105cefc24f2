"""Replay protection survives a restart: a mandate accepted by one gateway is refused by the next
gateway on the same store file — a new app instance, then a separate uvicorn process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from gateway_fixtures import PAYEE, PROCESSOR, error_code, open_store, signer_for

from aep2.deployment import PROJECT_ROOT
from aep2.errors import ErrorCode
from examples.payee_service import create_app

pytestmark = pytest.mark.chain

PATH = "/v1/forecast/paris"


def start_process(deployment_file: str, store_path: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "AEP2_DEPLOYMENT": deployment_file,
        "AEP2_PAYEE": PAYEE,
        "AEP2_STORE": store_path,
        "AEP2_PROCESSOR": PROCESSOR,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.payee_service:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway process exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            httpx.get(url + "/health", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gateway process did not start")


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
    process, url = start_process(deployment_file, store_path)
    try:
        for path, replay in ((PATH, header), ("/v1/forecast/rome", following)):
            response = httpx.get(url + path, headers={"PAYMENT-SIGNATURE": replay})
            assert error_code(response) == ErrorCode.NONCE_USED
    finally:
        process.terminate()
        process.wait(timeout=20)

    async with open_store(store_path) as store:
        assert [m.mandate.nonce for m in await store.mandates()] == [0, 1]
