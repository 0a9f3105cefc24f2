"""The co-wallet end to end on a real Anvil node: an agent process holding only an API key pays
the example payee service (our gateway, on uvicorn) through the wallet (on uvicorn); our
processor proves and settles the batch; the payee is paid on chain; and the ledger, the
gateway's store and the chain agree to the base unit (a reconciliation with zero
differences, through the API and through ``python -m wallet reconcile``).

The attack: a receipt that never reaches the wallet. The chain settles the payment anyway;
reconciliation names it, and ``settle_from_chain`` books it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from aep2.sqlite_store import SQLiteStore
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_SIGNATURE_HEADER, decode_header
from examples.payee_service import create_app as create_payee_app
from settlement.chain import SettlementClient
from settlement.processor import BatchResult, SettlementProcessor
from settlement.prover import Prover
from wallet import ledger, webhooks
from wallet.app import create_app
from wallet.keys import OwnerKeystore, Sealer
from wallet.reconcile import reconcile
from wallet.service import PaymentStatus, WalletService

pytestmark = [pytest.mark.chain, pytest.mark.circuit]

ROOT = Path(__file__).resolve().parents[2]
FAST_KDF: dict[str, Any] = {"kdf": "scrypt", "iterations": 2**10}  # tests only
OWNER_TOKEN = "owner-token-" + "x" * 32
ESCROW = 1_000_000

#: The agent process: an API key, the wallet's URL and the payee's; nothing else.
AGENT = """
import json, os, httpx
from payer.remote import WalletAuth
with WalletAuth(os.environ["WALLET_URL"], os.environ["WALLET_API_KEY"]) as auth, \\
        httpx.Client(base_url=os.environ["PAYEE_URL"], auth=auth, timeout=30) as client:
    statuses = [client.get(f"/v1/forecast/city{n}").status_code for n in range(5)]
    statuses.append(client.post("/v1/sentiment", json={"text": "fast and correct"}).status_code)
print(json.dumps({"statuses": statuses, "paid": [r["paymentId"] for r in auth.receipts]}))
"""


async def settle(deployment, store_path: str, processor_key: str, artifacts) -> list[BatchResult]:
    """Run our processor over the gateway's store until nothing is left; the batches settled."""
    store = SQLiteStore(store_path)
    await store.open()
    client = SettlementClient(deployment.rpc_url, deployment.settlement, processor_key)
    try:
        results = await SettlementProcessor(store, client, Prover(artifacts), deployment.token).settle_all()
    finally:
        await client.aclose()
        await store.close()
    return results


@dataclass
class ChainWallet:
    """A wallet service whose owner is ``payer``'s key, on the deployment's chain."""

    service: WalletService
    processor: str
    keystore: Path
    sealer_key: str


def chain_wallet(wallet_db, tmp_path: Path, deployment, payer, processor_key: str) -> ChainWallet:
    processor = Account.from_key(processor_key).address
    keystore = tmp_path / "owner.json"
    owner = OwnerKeystore.create(keystore, "pw", private_key=payer.account.key, **FAST_KDF)
    sealer_key = Sealer.generate_key()
    sealer = Sealer.from_env({"AEP2_WALLET_KEY": sealer_key})
    service = WalletService(
        wallet_db, owner=owner, sealer=sealer, deployment=deployment, processor=processor,
        webhooks=webhooks.Webhooks(wallet_db, sealer=sealer), chain=payer,
    )
    return ChainWallet(service, processor, keystore, sealer_key)


async def test_an_agent_pays_through_the_wallet_and_ledger_store_and_chain_agree(
    wallet_db, tmp_path, deployment, make_payer, small_artifacts, serve, served_here, store_path, payee, processor_key
):
    payer = make_payer(escrow=ESCROW)
    wallet = chain_wallet(wallet_db, tmp_path, deployment, payer, processor_key)
    service, processor, keystore, sealer_key = wallet.service, wallet.processor, wallet.keystore, wallet.sealer_key
    try:
        await service.record_deposit(ESCROW)
        agent_id, api_key = await service.add_agent("researcher")
        intent = await service.draft_intent(agent_id, budget=100_000, purpose="forecasts", duration_seconds=3600,
                                            per_payment_cap=5_000)
        record = await service.approve_intent(intent.id)
        assert payer.intent(bytes.fromhex(record.chain_intent_id[2:]))["payer"] == payer.address  # registered

        gateway = serve(create_payee_app(deployment, payee, store_path, processor=processor))
        wallet_url = await served_here(create_app(service, owner_token=OWNER_TOKEN))
        payee_before = payer.token.functions.balanceOf(payee).call()

        # The agent: a separate process with an API key and two URLs.
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-c", AGENT, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=os.environ | {"WALLET_URL": wallet_url, "WALLET_API_KEY": api_key, "PAYEE_URL": gateway.url},
        )
        out, err = await asyncio.wait_for(agent.communicate(), timeout=120)
        assert agent.returncode == 0, err.decode()
        result = json.loads(out)
        assert result["statuses"] == [200] * 6

        # The lost receipt: paid and served, but the wallet is never told.
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            challenge = await http.get("/v1/forecast/lost")
            entry = next(e for e in decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER])["accepts"]
                         if e["scheme"] == "aep2")
            lost = await service.authorize_payment(agent_id, entry, f"{gateway.url}/v1/forecast/lost")
            served = await http.get("/v1/forecast/lost", headers={PAYMENT_SIGNATURE_HEADER: lost.header})
            assert served.status_code == 200

        assert sum(r.mandates for r in await settle(deployment, store_path, processor_key, small_artifacts)) == 7
        paid_on_chain = payer.token.functions.balanceOf(payee).call() - payee_before
        assert paid_on_chain == 8_000

        report = await reconcile(service, payer)
        assert [(d.check, d.subject) for d in report.differences] == [
            ("escrow", service.owner_ref), ("payment", lost.payment_id), ("intent_spent", intent.id)
        ]
        assert "settled_on_chain_only" in report.differences[1].detail
        assert report.differences[0].ledger - report.differences[0].chain == 1_000  # the lost call's price

        fixed = await reconcile(service, payer, settle_from_chain=True)
        assert fixed.ok and fixed.booked_from_chain == [lost.payment_id], fixed.differences
        assert fixed.ledger_escrow == fixed.chain_escrow == payer.balance() == ESCROW - paid_on_chain

        # Ledger = gateway store = chain, payment by payment.
        store = SQLiteStore(store_path)
        await store.open()
        try:
            mandates = {m.payment_id: m for m in await store.mandates()}
        finally:
            await store.close()
        payments = {p.payment_id: p for p in await service.payments(agent_id=agent_id)}
        assert set(mandates) == set(payments) and set(result["paid"]) | {lost.payment_id} == set(payments)
        assert all(p.status is PaymentStatus.SETTLED for p in payments.values())
        assert all(m.status == "settled" and m.mandate.amount == payments[pid].amount for pid, m in mandates.items())
        async with service.db.snapshot() as conn:
            assert await ledger.settled(conn, intent.id) == paid_on_chain
        assert payer.intent(bytes.fromhex(record.chain_intent_id[2:]))["spent"] == paid_on_chain

        # The owner's command says the same.
        env = {
            "AEP2_WALLET_DB": wallet_db.url, "AEP2_WALLET_KEY": sealer_key, "AEP2_WALLET_OWNER_PASSWORD": "pw",
            "AEP2_WALLET_OWNER_KEYSTORE": str(keystore), "AEP2_DEPLOYMENT": str(tmp_path / "deployment.json"),
            "AEP2_PROCESSOR": processor,
        }
        deployment.save(env["AEP2_DEPLOYMENT"])
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wallet", "reconcile", "--json", cwd=ROOT, env=os.environ | env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(command.communicate(), timeout=120)
        assert command.returncode == 0, (out.decode(), err.decode())
        assert json.loads(out)["ok"] is True and json.loads(out)["chainEscrow"] == ESCROW - paid_on_chain
    finally:
        await service.webhooks.aclose()
