"""``ChainCache``: the first read of a key is a chain read, later ones come from memory, the
background refresh renews every entry except final ones, and ``max_staleness`` bounds how old
a value the gateway acts on, even while refreshes fail."""

from __future__ import annotations

import asyncio

import pytest
from gateway_fixtures import StaticChainReader

from aep2.mandate import nonce_window
from gateway.chain import CONSENT_NOT_WITHDRAWN, ChainCache, EscrowState, IntentState

PAYER = "0x" + "11" * 20
ASSET = "0x" + "22" * 20
PROCESSOR = "0x" + "33" * 20
INTENT = b"\x01" * 32


def test_nonce_window():
    assert [nonce_window(n) for n in (0, 127, 128, 131, 2**40 - 1)] == [
        (0, 0), (0, 127), (1, 0), (1, 3), (2**33 - 1, 127),
    ]


def test_escrow_state_derived_values():
    assert EscrowState(100, 30, CONSENT_NOT_WITHDRAWN, 1).available == 70
    assert EscrowState(100, 130, CONSENT_NOT_WITHDRAWN, 1).available == 0  # floor 0
    assert EscrowState(100, 0, CONSENT_NOT_WITHDRAWN, 1).consent_current
    assert not EscrowState(100, 0, 0, 1).consent_current  # never given
    assert not EscrowState(100, 0, 1_800_000_000, 1).consent_current  # withdrawn, lapsing
    assert IntentState(True, 5, 1).revoked and not IntentState(True, 0, 1).revoked


class SlowReader(StaticChainReader):
    """Holds every settled-nonce read until ``release`` is set, so callers pile up on a miss."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def settled_nonces(self, intent_id: bytes, window: int) -> tuple[int, int]:
        await self.release.wait()
        return await super().settled_nonces(intent_id, window)


async def test_concurrent_misses_of_one_key_share_one_chain_read():
    reader = SlowReader()
    cache = ChainCache(reader, refresh_seconds=3600)
    try:
        waiting = [asyncio.ensure_future(cache.settled_nonces(INTENT, 7)) for _ in range(32)]
        await asyncio.sleep(0)
        giving_up = asyncio.ensure_future(cache.settled_nonces(INTENT, 7))
        await asyncio.sleep(0)
        giving_up.cancel()  # a caller that gives up does not cancel the read the others share
        reader.release.set()
        assert await asyncio.gather(*waiting) == [(0, 1)] * 32
        assert reader.reads["settled_nonces"] == 1
    finally:
        await cache.aclose()


async def test_first_read_is_a_chain_read_then_memory():
    reader = StaticChainReader(balance=500)
    cache = ChainCache(reader, refresh_seconds=3600)
    try:
        for _ in range(3):
            assert (await cache.escrow(PAYER, ASSET, PROCESSOR)).balance == 500
            assert not (await cache.intent(INTENT)).registered
            assert await cache.settled_nonces(INTENT, 0) == (0, 1)
        assert reader.reads == {"escrow_state": 1, "intent_state": 1, "settled_nonces": 1}
        # Another processor, window or intent is another key.
        await cache.escrow(PAYER, ASSET, "0x" + "44" * 20)
        await cache.settled_nonces(INTENT, 1)
        assert reader.reads["escrow_state"] == 2 and reader.reads["settled_nonces"] == 2
        # max_age forces a chain read when the entry is older.
        await asyncio.sleep(0.02)
        await cache.escrow(PAYER, ASSET, PROCESSOR, max_age=0.01)
        assert reader.reads["escrow_state"] == 3
    finally:
        await cache.aclose()


async def test_refresh_renews_entries_but_not_final_ones():
    reader = StaticChainReader()
    cache = ChainCache(reader, refresh_seconds=3600)
    try:
        await cache.escrow(PAYER, ASSET, PROCESSOR)
        await cache.intent(INTENT)
        await cache.settled_nonces(INTENT, 0)
        reader.block = 2
        reader.set_escrow(PAYER, ASSET, PROCESSOR, pending_withdrawal=7, consent_until=99)
        reader.intents[INTENT] = IntentState(True, 1234, 2)
        reader.settled[(INTENT, 0)] = 2**128 - 1
        await cache.refresh()
        escrow = await cache.escrow(PAYER, ASSET, PROCESSOR)
        assert (escrow.pending_withdrawal, escrow.consent_until, escrow.block) == (7, 99, 2)
        assert (await cache.intent(INTENT)).revoked_at == 1234
        assert await cache.settled_nonces(INTENT, 0) == (2**128 - 1, 2)
        assert await cache.nonce_settled(INTENT, 0) and await cache.nonce_settled(INTENT, 127)
        reads = dict(reader.reads)
        await cache.refresh()
        # A revoked intent and a full window never change again: not re-read. The escrow is.
        assert reader.reads["intent_state"] == reads["intent_state"]
        assert reader.reads["settled_nonces"] == reads["settled_nonces"]
        assert reader.reads["escrow_state"] == reads["escrow_state"] + 1
        assert not await cache.nonce_settled(INTENT, 128)  # window 1: another key
    finally:
        await cache.aclose()


async def test_background_refresh_runs():
    reader = StaticChainReader()
    cache = ChainCache(reader, refresh_seconds=0.05)
    try:
        await cache.intent(INTENT)
        reader.intents[INTENT] = IntentState(True, 77, 2)
        for _ in range(100):
            if (await cache.intent(INTENT)).revoked:
                break
            await asyncio.sleep(0.02)
        assert (await cache.intent(INTENT)).revoked_at == 77
    finally:
        await cache.aclose()


async def test_failing_refresh_keeps_the_value_until_max_staleness():
    reader = StaticChainReader(balance=500)
    cache = ChainCache(reader, refresh_seconds=0.1, max_staleness=0.2)
    try:
        await cache.escrow(PAYER, ASSET, PROCESSOR)
        reader.fail = True
        await cache.refresh()  # logged, keeps the last good value (as the background refresh does)
        assert (await cache.escrow(PAYER, ASSET, PROCESSOR)).balance == 500
        await asyncio.sleep(0.25)
        # Too old to act on: the request path reads the chain, and that fails.
        with pytest.raises(ConnectionError):
            await cache.escrow(PAYER, ASSET, PROCESSOR)
        reader.fail = False
        assert (await cache.escrow(PAYER, ASSET, PROCESSOR)).balance == 500
    finally:
        await cache.aclose()


@pytest.mark.parametrize(
    "options, field",
    [({"refresh_seconds": 0}, "refresh_seconds"), ({"refresh_seconds": 5, "max_staleness": 1}, "max_staleness")],
)
def test_bad_settings(options, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        ChainCache(StaticChainReader(), **options)


def test_refresh_defaults_to_half_the_staleness_bound():
    assert ChainCache(StaticChainReader()).refresh_seconds == 2.0
    assert ChainCache(StaticChainReader(), max_staleness=1.0).refresh_seconds == 0.5
    assert ChainCache(StaticChainReader(), max_staleness=60.0).refresh_seconds == 2.0
