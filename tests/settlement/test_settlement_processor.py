"""The settlement processor against a real Anvil node and real proofs: crash safety,
pre-submission diagnosis of batches that would revert, and RPC outages.

Each test gets its own Anvil and deployment (``chain``, with a one-minute window and withdrawal
delay), so moving chain time or draining an escrow cannot disturb other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from web3 import Web3

from examples.payee_service import create_app

from settlement_fixtures import PAYEE, PRICE, PROCESSOR, WINDOW, fund, pay, payee_balance, processor

pytestmark = [pytest.mark.chain, pytest.mark.circuit]


class Killed(BaseException):
    """Stands in for the process dying at a chosen point."""


async def test_restart_after_crash_before_proving_settles_everything_once(chain, prover, serve, store_path):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    await pay(server.url, deployment, payer, 3)
    async with processor(deployment, store_path, prover) as first:
        # The first run sealed a batch and died before proving it.
        await first.store.seal_batch([m.payment_id for m in await first.store.accepted_mandates()], int(time.time()))
    async with processor(deployment, store_path, prover) as second:
        results = await second.settle_all()
        assert sum(r.mandates for r in results) == 3
        assert {m.status for m in await second.store.mandates()} == {"settled"}
        assert [b.status for b in await second.store.batches()] == ["failed", "settled"]
    assert payer.balance() == 100_000 - 3 * PRICE
    assert payee_balance(payer) == 3 * PRICE


@pytest.mark.parametrize("crash_point", ["before_broadcast", "after_broadcast", "before_recording_receipt"])
async def test_restart_after_crash_around_submission_settles_exactly_once(chain, prover, serve, store_path, crash_point):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    await pay(server.url, deployment, payer, 4)
    async with processor(deployment, store_path, prover) as first:
        broadcast, mark_settled = first.client.broadcast, first.store.mark_batch_settled

        async def broadcast_and_die(raw: bytes) -> None:
            if not await first.store.batches():  # registering the intent: not the crash point
                await broadcast(raw)
                return
            if crash_point == "after_broadcast":
                await broadcast(raw)
            raise Killed

        async def die(*args: object, **kwargs: object) -> None:
            raise Killed

        if crash_point == "before_recording_receipt":
            first.store.mark_batch_settled = die
        else:
            first.client.broadcast = broadcast_and_die
        with pytest.raises(Killed):
            await first.settle_once()
        first.store.mark_batch_settled = mark_settled
    sent = crash_point != "before_broadcast"
    assert payee_balance(payer) == (4 * PRICE if sent else 0)
    async with processor(deployment, store_path, prover) as second:
        # The signed transaction was recorded first: the restart follows it (broadcasting it
        # if it was never sent) instead of settling its mandates in a new batch.
        assert await second.settle_all() == []
        assert {m.status for m in await second.store.mandates()} == {"settled"}
        assert [b.status for b in await second.store.batches()] == ["settled"]
    assert payee_balance(payer) == 4 * PRICE
    assert payer.balance() == 100_000 - 4 * PRICE


async def test_batch_that_would_revert_fails_only_the_offending_mandates(chain, prover, serve, store_path):
    node, deployment = chain
    honest, drained = fund(deployment, 100_000), fund(deployment, 100_000)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    await pay(server.url, deployment, honest, 2)
    await pay(server.url, deployment, drained, 2)
    # The second payer withdraws everything after being served, before settlement.
    drained.request_withdrawal(100_000)
    w3 = Web3(Web3.HTTPProvider(node.rpc_url))
    w3.provider.make_request("evm_increaseTime", [WINDOW + 1])
    w3.provider.make_request("evm_mine", [])
    drained.execute_withdrawal()
    async with processor(deployment, store_path, prover) as settler:
        results = await settler.settle_all()
        assert sum(r.mandates for r in results) == 2
        statuses = {(m.payer, m.status, m.reason) for m in await settler.store.mandates()}
    assert statuses == {(honest.address, "settled", None), (drained.address, "failed", "insufficient_escrow")}
    assert payee_balance(honest) == 2 * PRICE
    assert honest.balance() == 100_000 - 2 * PRICE


class Proxy:
    """A TCP proxy on loopback in front of Anvil that can drop every connection."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.connections:
            writer.close()
        await self.server.wait_closed()
        self.connections.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.connections += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_dropped_rpc_connection_is_retried(chain, prover, serve, store_path):
    node, deployment = chain
    payer = fund(deployment, 100_000)
    server = serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR))
    await pay(server.url, deployment, payer, 2)
    proxy = Proxy(node.port)
    await proxy.start()
    async with processor(deployment, store_path, prover, rpc_url=f"http://127.0.0.1:{proxy.port}") as settler:
        await proxy.stop()  # the RPC endpoint goes away for a while
        outage = asyncio.create_task(asyncio.sleep(1.5))

        async def come_back() -> None:
            await outage
            await proxy.start()

        revival = asyncio.create_task(come_back())
        results = await settler.settle_all()
        await revival
        assert sum(r.mandates for r in results) == 2
    assert payee_balance(payer) == 2 * PRICE
