"""The facilitator's HTTP app: the §7 shapes, a 400 naming the field for every malformed body
(never a 500), 503 when the node is down, and the one command that runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from eth_account import Account
from facilitator_fixtures import NETWORK, SERVED_FACILITATOR_KEY, authorization, domain, payment, requirements, sign

from aep2.deployment import PROJECT_ROOT
from aep2.errors import ErrorCode
from facilitator import ExactEvmFacilitator, create_app, from_env
from settlement.devchain import free_port

pytestmark = pytest.mark.chain


def valid_body(deployment: Any, payer: Any, payee: str) -> dict[str, Any]:
    required = requirements(deployment.token, payee)
    paid = payment(required, sign(payer, domain(deployment.token), authorization(payer.address, payee)))
    return {"x402Version": 2, "paymentPayload": paid.to_wire(), "paymentRequirements": required.to_wire()}


def test_supported(served_facilitator):
    response = httpx.get(served_facilitator.url + "/supported")
    assert response.status_code == 200
    body = response.json()
    assert {"x402Version": 2, "scheme": "exact", "network": NETWORK} in body["kinds"]
    assert body["extensions"] == []
    assert body["signers"] == {"eip155:*": [Account.from_key(SERVED_FACILITATOR_KEY).address]}


def test_refused_payment_is_a_200_answer(served_facilitator, deployment, payer):
    body = valid_body(deployment, payer, Account.create().address)
    body["paymentRequirements"]["amount"] = "1"
    response = httpx.post(served_facilitator.url + "/verify", json=body)
    assert response.status_code == 200
    assert response.json() == {
        "isValid": False,
        "invalidReason": ErrorCode.EXACT_VALUE_MISMATCH,
        "invalidMessage": response.json()["invalidMessage"],
        "payer": payer.address,
    }
    assert "payload.authorization.value" in response.json()["invalidMessage"]


def _without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return body


@pytest.mark.parametrize(
    ("make_body", "reason", "names"),
    [
        (lambda b: b"{not json", ErrorCode.INVALID_PAYLOAD, "body"),
        (lambda b: b"[]", ErrorCode.INVALID_PAYLOAD, "body"),
        (lambda b: b"", ErrorCode.INVALID_PAYLOAD, "body"),
        (lambda b: {}, ErrorCode.INVALID_PAYLOAD, "x402Version"),
        (lambda b: _without(b, "paymentRequirements", "payTo"), ErrorCode.INVALID_PAYLOAD, "paymentRequirements.payTo"),
        (lambda b: _without(b, "paymentPayload", "accepted"), ErrorCode.INVALID_PAYLOAD, "paymentPayload.accepted"),
        (
            lambda b: b | {"paymentRequirements": b["paymentRequirements"] | {"amount": 5}},
            ErrorCode.INVALID_PAYLOAD,
            "paymentRequirements.amount",
        ),
        (lambda b: b | {"x402Version": 3}, ErrorCode.UNSUPPORTED_VERSION, "x402Version"),
        (lambda b: b | {"x402Version": 1}, ErrorCode.UNSUPPORTED_VERSION, "x402Version"),
        (lambda b: b | {"padding": "x" * 300_000}, ErrorCode.INVALID_PAYLOAD, "body"),
        # eth_account lifts Python's recursion limit: unchecked, this would crash the decoder.
        (lambda b: b"[" * 100_000 + b"]" * 100_000, ErrorCode.INVALID_PAYLOAD, "body"),
    ],
    ids=[
        "not-json", "array", "empty", "empty-object", "no-payTo", "no-accepted", "amount-number", "v3", "v-mismatch",
        "huge", "deep",
    ],
)
@pytest.mark.parametrize("endpoint", ["/verify", "/settle"])
def test_malformed_body_is_a_400_naming_the_field(
    served_facilitator, deployment, payer, endpoint, make_body, reason, names
):
    body = make_body(valid_body(deployment, payer, Account.create().address))
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(served_facilitator.url + endpoint, headers={"content-type": "application/json"}, **kwargs)
    assert response.status_code == 400, response.text
    answer = response.json()
    if endpoint == "/verify":
        assert (answer["isValid"], answer["invalidReason"]) == (False, reason)
        message = answer["invalidMessage"]
    else:
        assert (answer["success"], answer["errorReason"], answer["transaction"]) == (False, reason, "")
        assert isinstance(answer["network"], str)
        message = answer["errorMessage"]
    assert names in message, message


def test_wrong_method_is_not_a_500(served_facilitator):
    assert httpx.get(served_facilitator.url + "/verify").status_code == 405


def test_supported_with_the_node_down_is_a_503(serve):
    offline = ExactEvmFacilitator(f"http://127.0.0.1:{free_port()}", SERVED_FACILITATOR_KEY, rpc_timeout=1)
    server = serve(create_app(offline))
    response = httpx.get(server.url + "/supported", timeout=30)
    assert response.status_code == 503
    assert response.json()["error"] == ErrorCode.CHAIN_UNAVAILABLE


def test_from_env_names_what_is_missing():
    with pytest.raises(RuntimeError, match="FACILITATOR_RPC_URL and FACILITATOR_PRIVATE_KEY"):
        from_env({})
    with pytest.raises(RuntimeError, match="FACILITATOR_PRIVATE_KEY"):
        from_env({"FACILITATOR_RPC_URL": "http://127.0.0.1:8545"})


def test_one_command_runs_it(anvil, deployment):
    """``uvicorn --factory facilitator.app:from_env`` with the two variables serves ``/supported``."""
    port = free_port()
    env = os.environ | {"FACILITATOR_RPC_URL": anvil.rpc_url, "FACILITATOR_PRIVATE_KEY": SERVED_FACILITATOR_KEY}
    command = [sys.executable, "-m", "uvicorn", "--factory", "facilitator.app:from_env", "--port", str(port)]
    popen = {"cwd": PROJECT_ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, **popen) as process:
        try:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/supported")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "uvicorn did not answer"
                    time.sleep(0.1)
            assert response.status_code == 200
            assert response.json()["signers"] == {"eip155:*": [Account.from_key(SERVED_FACILITATOR_KEY).address]}
        finally:
            process.terminate()
