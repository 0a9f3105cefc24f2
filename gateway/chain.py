"""What the gateway reads from the chain, behind a ``Protocol``, and a cache that keeps those
reads off the request path.

Reads: a payer's escrowed balance in the Settlement contract, an intent's revocation, an
owner's token balance (for ``exact``). ``ChainCache`` answers from memory and refreshes
every known entry in the background; only the first sight of a payer costs a chain read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol

from web3 import AsyncHTTPProvider, AsyncWeb3

from aep2.deployment import contract_artifact

__all__ = ["ChainReader", "Web3ChainReader", "ChainCache"]

logger = logging.getLogger("gateway.chain")


class ChainReader(Protocol):
    """Chain reads, each returning ``(value, block_number)`` read at one block."""

    async def escrow_balance(self, payer: str, asset: str) -> tuple[int, int]:
        """Payer's escrowed balance (base units) in the Settlement contract."""

    async def token_balance(self, owner: str, asset: str) -> tuple[int, int]:
        """``asset.balanceOf(owner)`` (base units)."""

    async def intent_revoked(self, intent_id: bytes) -> bool:
        """Whether the intent is registered on chain and revoked."""


class Web3ChainReader:
    """``ChainReader`` over JSON-RPC with web3.py (``rpc_url``, Settlement at ``settlement``)."""

    def __init__(self, rpc_url: str, settlement: str, *, timeout: float = 10.0) -> None:
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.settlement = self.w3.eth.contract(address=settlement, abi=contract_artifact("Settlement")["abi"])
        self._erc20_abi = contract_artifact("MockUSDC")["abi"]
        get_intent = next(i for i in self.settlement.abi if i.get("type") == "function" and i["name"] == "getIntent")
        names = [c["name"] for c in get_intent["outputs"][0]["components"]]
        self._revoked_index = names.index("revoked")

    async def escrow_balance(self, payer: str, asset: str) -> tuple[int, int]:
        block = await self.w3.eth.block_number
        value = await self.settlement.functions.balanceOf(payer, asset).call(block_identifier=block)
        return int(value), int(block)

    async def token_balance(self, owner: str, asset: str) -> tuple[int, int]:
        block = await self.w3.eth.block_number
        token = self.w3.eth.contract(address=asset, abi=self._erc20_abi)
        value = await token.functions.balanceOf(owner).call(block_identifier=block)
        return int(value), int(block)

    async def intent_revoked(self, intent_id: bytes) -> bool:
        record = await self.settlement.functions.getIntent(intent_id).call()
        return bool(record[self._revoked_index])

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self.w3.provider.disconnect()


class ChainCache:
    """Cached chain reads, refreshed every ``refresh_seconds`` in a background task.

    ``escrow()``/``token()`` return ``(value, block)``. A failing refresh keeps the last
    good value (logged); the first read of an unknown key goes to the chain and raises
    what the reader raises.
    """

    def __init__(self, reader: ChainReader, *, refresh_seconds: float = 2.0) -> None:
        self.reader = reader
        self.refresh_seconds = refresh_seconds
        self._escrow: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._token: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._revoked: dict[bytes, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def _ensure_refreshing(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def escrow(self, payer: str, asset: str, *, max_age: float | None = None) -> tuple[int, int]:
        """Escrowed balance of ``payer`` and the block it was read at."""
        return await self._read(self._escrow, (payer, asset), self.reader.escrow_balance, max_age)

    async def token(self, owner: str, asset: str, *, max_age: float | None = None) -> tuple[int, int]:
        """Token balance of ``owner`` and the block it was read at."""
        return await self._read(self._token, (owner, asset), self.reader.token_balance, max_age)

    async def _read(
        self,
        cache: dict[tuple[str, str], tuple[int, int, float]],
        key: tuple[str, str],
        read: Callable[[str, str], Awaitable[tuple[int, int]]],
        max_age: float | None,
    ) -> tuple[int, int]:
        self._ensure_refreshing()
        entry = cache.get(key)
        if entry is None or (max_age is not None and time.monotonic() - entry[2] > max_age):
            value, block = await read(*key)
            entry = (value, block, time.monotonic())
            cache[key] = entry
        return entry[0], entry[1]

    def revoked(self, intent_id: bytes) -> bool:
        """Last known revocation state (``False`` until the background refresh saw it)."""
        self._ensure_refreshing()
        self._revoked.setdefault(intent_id, False)
        return self._revoked[intent_id]

    async def refresh(self) -> None:
        """Re-read every known entry once."""
        for cache, read in ((self._escrow, self.reader.escrow_balance), (self._token, self.reader.token_balance)):
            for key in list(cache):
                try:
                    value, block = await read(*key)
                    cache[key] = (value, block, time.monotonic())
                except Exception as exc:  # keep serving the last good value
                    logger.warning("balance refresh for %s failed: %s", key[0], exc)
        for intent_id in list(self._revoked):
            try:
                self._revoked[intent_id] = await self.reader.intent_revoked(intent_id)
            except Exception as exc:
                logger.warning("intent refresh for 0x%s failed: %s", intent_id.hex(), exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()

    async def aclose(self) -> None:
        """Stop the background refresh and close the reader's connection."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        close = getattr(self.reader, "aclose", None)
        if close is not None:
            await close()
