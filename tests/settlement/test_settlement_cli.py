"""``python -m settlement``: deploy writes a deployment file; run --once settles a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from aep2.deployment import Deployment
from examples.payee_service import create_app
from payer import AEP2Auth, Escrow, PayerState, create_intent, create_session_key
from settlement.devchain import Anvil, anvil_key, mint

pytestmark = [pytest.mark.chain, pytest.mark.circuit]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "settlement", *args], capture_output=True, text=True, timeout=300, env=env
    )


async def test_deploy_then_run_once_settles(small_artifacts, serve, tmp_path):
    n, i, p = small_artifacts.n, small_artifacts.i, small_artifacts.p
    with Anvil() as node:
        path = tmp_path / "deployment.json"
        deployed = cli("deploy", "--rpc-url", node.rpc_url, "--key", anvil_key(0), "--out", str(path),
                       "--n", str(n), "--i", str(i), "--p", str(p))
        assert deployed.returncode == 0, deployed.stderr
        deployment = Deployment.load(path)
        assert json.loads(deployed.stdout)["settlement"] == deployment.settlement
        assert deployment.circuit.hash == small_artifacts.hash

        account = Account.create()
        Web3(Web3.HTTPProvider(node.rpc_url)).provider.make_request("anvil_setBalance", [account.address, hex(10**20)])
        mint(node.rpc_url, deployment.token, account.address, 50_000)
        processor = Account.from_key(anvil_key(1)).address
        payer = Escrow(deployment, account.key, processor=processor)
        payer.deposit(50_000)
        payer.authorize_processor(processor)
        payee = Account.from_key(anvil_key(2)).address
        store = str(tmp_path / "payments.sqlite")
        server = serve(create_app(deployment, payee, store, processor=processor))
        key = create_session_key()
        intent = create_intent(account.key, session_key=key, asset=deployment.token, max_amount=50_000,
                               max_per_payment=5_000, valid_for_seconds=3600, chain_id=deployment.chain_id,
                               settlement=deployment.settlement, processor=processor)
        async with httpx.AsyncClient(auth=AEP2Auth(intent, key, PayerState()), base_url=server.url) as client:
            for k in range(3):
                assert (await client.get(f"/v1/forecast/c{k}")).status_code == 200

        environment = {k: v for k, v in os.environ.items() if k != "AEP2_PROCESSOR_KEY"}
        missing_key = cli("run", "--deployment", str(path), "--store", store, "--once", env=environment)
        assert missing_key.returncode != 0 and "AEP2_PROCESSOR_KEY" in missing_key.stderr
        ran = cli("run", "--deployment", str(path), "--store", store, "--once", "--key", anvil_key(1))
        assert ran.returncode == 0, ran.stderr
        batches = [json.loads(line) for line in ran.stdout.splitlines()]
        assert sum(batch["mandates"] for batch in batches) == 3
        assert payer.token.functions.balanceOf(payee).call() == 3_000
