"""The settlement watcher (``wallet.settlements``) against our real gateway on uvicorn over
loopback: a payment the wallet booked is followed from ``accepted`` through its batch to the
chain, with the batch's transaction, block, proof seconds and gas, in the audit chain and as a
webhook event. The batch steps are the store calls the settlement processor makes (the real
processor on Anvil: ``test_wallet_dashboard.py``).

Attacks: a payee's answer that is not this payment's receipt (another payment's, another
amount, not JSON, a giant body, a redirect, a batched receipt without its batch) books nothing
and is logged with its reason; a host the owner never named is not even asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from starlette.responses import JSONResponse, RedirectResponse, Response

from wallet import audit
from wallet.db import Database, audit_log
from wallet.execute import ServiceAuth
from wallet.keys import Sealer
from wallet.policy import Rules
from wallet.service import WalletService
from wallet.settlements import SettlementStage, SettlementWatcher, settlement_rows, wallet_settlements
from wallet.webhooks import EventType, webhook_deliveries

from test_wallet_remote import funded_agent, new_service  # noqa: E402
from gateway_fixtures import OFFLINE_DEPLOYMENT, PROCESSOR, InProcessGateway, StaticChainReader  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TX = "0x" + "7a" * 32
HOST = "127.0.0.1"


class Hostile:
    """The real gateway, except that ``GET /payments/…`` answers ``self.answer`` when set."""

    def __init__(self, gateway: InProcessGateway) -> None:
        self.gateway = gateway
        self.answer: Response | None = None
        self.asked = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/payments/"):
            self.asked += 1
            if self.answer is not None:
                await self.answer(scope, receive, send)
                return
        await self.gateway.app(scope, receive, send)


@pytest.fixture
async def world(wallet_db: Database, tmp_path: Path, served_here: Any) -> AsyncIterator[dict[str, Any]]:
    service = new_service(wallet_db, tmp_path)
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    front = Hostile(gateway)
    url = await served_here(front)
    watcher = SettlementWatcher(service, interval=0)
    yield {"service": service, "gateway": gateway, "front": front, "url": url, "watcher": watcher}
    await watcher.aclose()
    await gateway.aclose()
    await service.webhooks.aclose()


async def pay(world: dict[str, Any], agent_id: str, path: str = "/v1/forecast/paris") -> str:
    """One paid call through the wallet's own flow; the payment id, booked (receipt received)."""
    auth = ServiceAuth(world["service"], agent_id)
    async with httpx.AsyncClient(base_url=world["url"], auth=auth) as client:
        assert (await client.get(path)).status_code == 200
    assert auth.payment_id is not None
    return auth.payment_id


async def recorded(db: Database) -> list[Any]:
    async with db.snapshot() as conn:
        return list((await conn.execute(select(wallet_settlements))).all())


async def actions(db: Database) -> list[tuple[str, dict[str, Any]]]:
    async with db.snapshot() as conn:
        rows = (await conn.execute(select(audit_log.c.action, audit_log.c.payload).order_by(audit_log.c.seq))).all()
    return [(row.action, json.loads(row.payload)) for row in rows if row.action.startswith("payment.")]


async def test_a_booked_payment_is_followed_through_its_batch_onto_the_chain(world):
    service: WalletService = world["service"]
    store = world["gateway"].store
    agent_id, _ = await funded_agent(service, hosts=[HOST])
    await service.webhooks.add_endpoint("https://93.184.216.34/hooks", [EventType.PAYMENT_SETTLED_ON_CHAIN])
    payment_id = await pay(world, agent_id)
    watcher: SettlementWatcher = world["watcher"]

    (accepted,) = await watcher.watch_once()
    assert (accepted.payment_id, accepted.stage, accepted.batch_id, accepted.tx_hash) == (
        payment_id, SettlementStage.ACCEPTED, None, None)
    assert await watcher.watch_once() == []  # nothing new: nothing recorded

    batch = await store.seal_batch([payment_id], time_ref=1)
    (proving,) = await watcher.watch_once()
    assert (proving.stage, proving.batch_id, proving.batch_status, proving.tx_hash) == (
        SettlementStage.IN_BATCH, batch.batch_id, "proving", None)
    await store.mark_batch_submitted(batch.batch_id, TX, b"\x02", 0, prove_seconds=2.5)
    (submitted,) = await watcher.watch_once()
    assert (submitted.batch_status, submitted.tx_hash, submitted.prove_seconds) == ("submitted", TX, 2.5)
    await store.mark_batch_settled(batch.batch_id, TX, 90, gas_used=310_000)
    (settled,) = await watcher.watch_once()
    assert settled == (await settlement_rows(service.db, [payment_id]))[payment_id]
    assert (settled.stage, settled.batch_id, settled.tx_hash, settled.block, settled.prove_seconds,
            settled.gas_used) == (SettlementStage.SETTLED_ON_CHAIN, batch.batch_id, TX, 90, 2.5, 310_000)

    asked = world["front"].asked
    assert await watcher.watch_once() == [] and world["front"].asked == asked  # final: never asked again
    trail = [(action, data["stage"], data["batch_status"]) for action, data in await actions(service.db)
             if data.get("stage")]
    assert trail == [("payment.accepted", "accepted", None), ("payment.in_batch", "in_batch", "proving"),
                     ("payment.in_batch", "in_batch", "submitted"),
                     ("payment.settled_on_chain", "settled_on_chain", "settled")]
    assert (await audit.verify(service.db)).ok
    async with service.db.snapshot() as conn:
        events = (await conn.execute(select(webhook_deliveries.c.event_type))).scalars().all()
    assert events == [EventType.PAYMENT_SETTLED_ON_CHAIN.value]


async def test_a_batch_that_lets_the_mandate_go_and_a_failed_mandate_are_recorded(world):
    service: WalletService = world["service"]
    store = world["gateway"].store
    agent_id, _ = await funded_agent(service, hosts=[HOST])
    payment_id = await pay(world, agent_id)
    watcher: SettlementWatcher = world["watcher"]
    batch = await store.seal_batch([payment_id], time_ref=1)
    assert [s.stage for s in await watcher.watch_once()] == [SettlementStage.IN_BATCH]
    await store.fail_batch(batch.batch_id, "interrupted before submission", retry=True)
    (back,) = await watcher.watch_once()
    assert (back.stage, back.batch_id) == (SettlementStage.ACCEPTED, None)
    await store.fail_mandates([payment_id], "intent_revoked")
    (failed,) = await watcher.watch_once()
    assert (failed.stage, failed.reason) == (SettlementStage.FAILED, "intent_revoked")
    assert [a for a, _ in await actions(service.db)][-1] == "payment.failed"


HOSTILE = {
    "another payment's receipt": lambda receipt: JSONResponse(receipt | {"paymentId": "0x" + "11" * 32}),
    "another amount": lambda receipt: JSONResponse(receipt | {"amount": "1"}),
    "an exact receipt": lambda receipt: JSONResponse(receipt | {"scheme": "exact"}),
    "a batched receipt without its batch": lambda receipt: JSONResponse(receipt | {"status": "batched"}),
    "a string for the batch id": lambda receipt: JSONResponse(receipt | {"status": "batched", "batch": {
        "id": "7", "status": "proving", "transaction": "", "block": None, "proveSeconds": None, "gasUsed": None}}),
    "negative gas": lambda receipt: JSONResponse(receipt | {"status": "settled", "batch": {
        "id": 7, "status": "settled", "transaction": TX, "block": 1, "proveSeconds": 1.0, "gasUsed": -5}}),
    "not JSON": lambda receipt: Response("<html>settled!</html>", media_type="text/html"),
    "a giant body": lambda receipt: Response(b"[" + b"1," * 200_000 + b"1]", media_type="application/json"),
    "a server error": lambda receipt: JSONResponse({"error": "down"}, status_code=500),
    "a redirect": lambda receipt: RedirectResponse("http://169.254.169.254/latest/meta-data", status_code=302),
}
REASONS = {
    "another payment's receipt": "a receipt of payment '0x1111", "another amount": "amount or payee",
    "an exact receipt": "not an aep2 receipt (scheme", "a batched receipt without its batch": "without its batch",
    "a string for the batch id": "not an aep2 receipt (batch.id", "negative gas": "batch.gasUsed",
    "not JSON": "not JSON", "a giant body": "answer over 65536 bytes", "a server error": "answered HTTP 500",
    "a redirect": "answered HTTP 302",
}


@pytest.mark.parametrize("answer", list(HOSTILE))
async def test_an_answer_that_is_not_this_payments_receipt_books_nothing(world, answer, caplog):
    service: WalletService = world["service"]
    agent_id, _ = await funded_agent(service, hosts=[HOST])
    payment_id = await pay(world, agent_id)
    async with httpx.AsyncClient() as client:
        receipt = (await client.get(f"{world['url']}/payments/{payment_id}")).json()
    world["front"].answer = HOSTILE[answer](receipt)
    head = (await audit.verify(service.db)).records
    caplog.set_level(logging.WARNING, logger="wallet.settlements")
    assert await world["watcher"].watch_once() == []
    assert await recorded(service.db) == [] and (await audit.verify(service.db)).records == head
    (message,) = [r.getMessage() for r in caplog.records if r.name == "wallet.settlements"]
    assert message.startswith(f"payment {payment_id}: GET {world['url']}/payments/{payment_id}: ")
    assert REASONS[answer] in message and message.endswith("nothing booked")


async def test_a_host_the_owner_never_named_is_not_asked(world, caplog):
    service: WalletService = world["service"]
    agent_id, _ = await funded_agent(service, hosts=[])  # an intent for any host: the wallet paid it
    payment_id = await pay(world, agent_id)
    caplog.set_level(logging.WARNING, logger="wallet.settlements")
    assert await world["watcher"].watch_once() == []
    assert world["front"].asked == 0 and await recorded(service.db) == []
    (message,) = [r.getMessage() for r in caplog.records if r.name == "wallet.settlements"]
    assert message == (f"payment {payment_id}: host '127.0.0.1' is not among the hosts the owner named for agent "
                       f"{agent_id}; its receipt is not asked for")
    await service.set_rules(Rules(host_allowlist=frozenset({HOST})), agent_id=agent_id)
    assert [s.stage for s in await world["watcher"].watch_once()] == [SettlementStage.ACCEPTED]


async def test_polls_that_find_nothing_new_back_off_up_to_the_longest_wait(world):
    service: WalletService = world["service"]
    agent_id, _ = await funded_agent(service, hosts=[HOST])
    await pay(world, agent_id)
    now = [1000.0]
    watcher = SettlementWatcher(service, interval=1, max_interval=4, clock=lambda: now[0])
    try:
        asked_at = []
        for second in range(16):
            now[0] = 1000.0 + second
            before = world["front"].asked
            await watcher.watch_once()
            if world["front"].asked > before:
                asked_at.append(second)
    finally:
        await watcher.aclose()
    # recorded at 0 (next in 1 s), then nothing new: waits of 2, 4, 4, 4 s
    assert asked_at == [0, 1, 3, 7, 11, 15]


async def test_the_cli_asks_once_and_prints_what_changed(world, wallet_db, tmp_path):
    service: WalletService = world["service"]
    agent_id, _ = await funded_agent(service, hosts=[HOST])
    payment_id = await pay(world, agent_id)
    OFFLINE_DEPLOYMENT.save(tmp_path / "deployment.json")
    env = os.environ | {
        "AEP2_WALLET_DB": wallet_db.url, "AEP2_WALLET_KEY": Sealer.generate_key(), "AEP2_WALLET_OWNER_PASSWORD": "pw",
        "AEP2_WALLET_OWNER_KEYSTORE": str(next(tmp_path.glob("owner-*.json"))),  # new_service's
        "AEP2_DEPLOYMENT": str(tmp_path / "deployment.json"), "AEP2_PROCESSOR": PROCESSOR,
    }

    async def watch() -> list[dict[str, Any]]:
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wallet", "watch-settlements", "--json", cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(command.communicate(), timeout=120)
        assert command.returncode == 0, err.decode()
        return [json.loads(line) for line in out.decode().splitlines()]

    (printed,) = await watch()
    assert (printed["payment_id"], printed["stage"], printed["batch_id"]) == (payment_id, "accepted", None)
    assert await watch() == []  # asked again: nothing new
    assert [s.stage for s in (await settlement_rows(service.db, [payment_id])).values()] == [SettlementStage.ACCEPTED]
