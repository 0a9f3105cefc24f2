"""``card_authorize_ms``: what a card issuer authorization costs a merchant, through the API.

The co-wallet's HTTP API (``wallet.app`` with a ``wallet.cards.CardIssuer``) under uvicorn on
loopback, on a SQLite file with the default durability (``synchronous=FULL``); no chain is
needed. Single-use cards are minted in process beforehand, one per timed authorization.

* ``card_authorize_ms``: p50 of ``POST /v1/issuing/authorizations`` (acquirer key check, number
  lookup by keyed hash, unseal, constant-time checks, row lock, state change, audit, webhook
  outbox) with 32 merchants, each an ``examples.merchant.AcquirerClient`` on its own connection,
  authorizing their own cards at once. Baseline, measured in the same run: p50 of the same
  authorization by a single merchant, one at a time, so the ratio is the price of contention
  for the database's one writer.

The run fails if any timed authorization is declined.

Run: ``python -m bench cards``; ``AEP2_BENCH_CARD_CALLS`` sets the authorizations per merchant
(default 10) and of the baseline (default 32 × that).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
from eth_utils import to_checksum_address

from aep2.deployment import CircuitShape, Deployment
from examples.merchant import AcquirerClient
from wallet.app import create_app
from wallet.cards import CardIssuer
from wallet.db import Database
from wallet.keys import OwnerKeystore, Sealer
from wallet.service import WalletService
from wallet.webhooks import Webhooks

from .common import log, row

MERCHANTS = 32
OWNER_TOKEN = "bench-owner-token-" + "x" * 16
#: A deployment nothing is sent to: card authorizations never touch the chain.
_OFFLINE = Deployment(
    chain_id=31337, rpc_url="http://127.0.0.1:9", settlement=to_checksum_address("0x" + "5e" * 20),
    token=to_checksum_address("0x" + "a1" * 20), verifier=to_checksum_address("0x" + "7e" * 20),
    circuit=CircuitShape(4, 2, 2, "offline"), deployed_at=0, settlement_window=3600,
)
_PROCESSOR = to_checksum_address("0x" + "c0" * 20)


def run() -> list[dict[str, Any]]:
    calls = int(os.environ.get("AEP2_BENCH_CARD_CALLS", "10"))
    with tempfile.TemporaryDirectory(prefix="aep2-bench-cards-") as tmp:
        concurrent, sequential = asyncio.run(_measure(Path(tmp), calls))
    return [row("card_authorize_ms", statistics.median(concurrent), "ms", statistics.median(sequential))]


async def _measure(tmp: Path, calls: int) -> tuple[list[float], list[float]]:
    db = Database(f"sqlite+aiosqlite:///{tmp / 'wallet.sqlite'}")
    await db.create()
    sealer = Sealer(os.urandom(32))
    hooks = Webhooks(db, sealer=sealer)
    service = WalletService(
        db, owner=OwnerKeystore.create(tmp / "owner.json", "bench", kdf="scrypt", iterations=2**10),
        sealer=sealer, deployment=_OFFLINE, processor=_PROCESSOR, webhooks=hooks,
    )
    cards = CardIssuer(service)
    server, task, url = await _serve(create_app(service, owner_token=OWNER_TOKEN, rate_limit="1000000/second",
                                                cards=cards, webhook_interval=3600))
    try:
        total = calls * MERCHANTS * 2
        await service.record_deposit(total * 10)
        agent_id, _key = await service.add_agent("bench")
        intent = await service.draft_intent(agent_id, budget=total * 10, purpose="bench cards",
                                            duration_seconds=3600, per_payment_cap=10)
        await service.approve_intent(intent.id)
        log(f"cards: minting {total} cards")
        wallet_cards = []
        for _ in range(total):
            minted = await cards.mint(agent_id, intent_id=intent.id, amount=10)
            assert minted.card is not None and minted.secrets is not None
            wallet_cards.append((minted.card, minted.secrets))
        acquirer = await cards.add_acquirer("bench acquirer")
        merchants = [AcquirerClient(url, acquirer.api_key) for _ in range(MERCHANTS)]
        try:
            batches = [wallet_cards[i * calls:(i + 1) * calls] for i in range(MERCHANTS)]
            log(f"cards: {MERCHANTS} merchants × {calls} authorizations at once")
            per_merchant = await asyncio.gather(*(_authorize_all(m, b, n) for n, (m, b) in enumerate(zip(merchants, batches))))
            log(f"cards: one merchant, {calls * MERCHANTS} authorizations one at a time")
            sequential = await _authorize_all(merchants[0], wallet_cards[calls * MERCHANTS:], 0)
        finally:
            for merchant in merchants:
                await merchant.aclose()
    finally:
        server.should_exit = True
        await task
        await hooks.aclose()
        await db.aclose()
    return [ms for times in per_merchant for ms in times], sequential


async def _authorize_all(merchant: AcquirerClient, batch: list[Any], index: int) -> list[float]:
    """Authorize each card of ``batch`` in turn; the milliseconds of each."""
    times = []
    for card, shown in batch:
        started = time.perf_counter()
        answer = await merchant.authorize(number=shown.number, exp_month=card.exp_month, exp_year=card.exp_year,
                                          cvv=shown.cvv, amount=card.amount, merchant_id=f"merchant-{index}",
                                          mcc="5734")
        times.append((time.perf_counter() - started) * 1000)
        if not answer["approved"]:
            raise RuntimeError(f"card {card.id} declined: {answer['declineReason']}")
    return times


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """``app`` under uvicorn on a free loopback port, on this event loop."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{port}"
