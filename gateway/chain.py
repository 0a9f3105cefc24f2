"""What the gateway reads from the chain, behind a ``Protocol``, and a cache that keeps those
reads off the request path.

A served payment must be a paid payment, so before serving the gateway checks everything on
chain that could stop the processor from settling the mandate (docs/PROTOCOL.md §2, §3):

- the payer's **escrow state** for the asset and our processor: the balance of the payer's
  escrow account *with our processor* (escrow is held per (payer, token, processor) and only
  the intent's processor debits its account, so funds the payer spends through another
  processor are never counted here), that account's pending withdrawal (reserved against as
  if already gone) and ``processorConsentUntil`` (only consent that was never withdrawn
  counts);
- the **intent state**: whether it is registered and when it was revoked;
- the **settled nonces**: the contract's bitmap per (intent, window of 128 nonces);
- for ``exact``, an owner's token balance.

``ChainCache`` answers from memory and refreshes every known entry in the background; only
the first sight of a key costs a chain read on the request path. Values that can never change
again (a revoked intent, a full nonce window) are not re-read. With ``max_staleness`` an entry
the background refresh could not renew in time is re-read on the request path, so the
gateway never acts on a chain view older than that, even while its RPC endpoint fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, Protocol, TypeVar

from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError

from aep2.deployment import contract_artifact
from aep2.mandate import NONCE_WINDOW, nonce_window
from aep2.verification import CONSENT_NOT_WITHDRAWN

__all__ = [
    "CONSENT_NOT_WITHDRAWN",
    "ChainCache",
    "ChainReader",
    "EscrowState",
    "IntentState",
    "Web3ChainReader",
]

logger = logging.getLogger("gateway.chain")

_FULL_WINDOW = 2**NONCE_WINDOW - 1


@dataclass(frozen=True)
class EscrowState:
    """A payer's escrow account with one processor in one asset, and its consent to that
    processor, read at ``block``.

    ``balance``: ``balanceOf(payer, asset, processor)``; ``pending_withdrawal``: the amount of
    ``pendingWithdrawal(payer, asset, processor)`` (0: none), both base units — the account
    only ``processor``'s settlements debit, so what the payer holds with other processors is
    not counted. ``consent_until``:
    ``processorConsentUntil(payer, processor)`` (0: never given; ``CONSENT_NOT_WITHDRAWN``:
    given and not withdrawn; otherwise the unix second a withdrawn consent lapses).
    """

    balance: int
    pending_withdrawal: int
    consent_until: int
    block: int

    @property
    def available(self) -> int:
        """What the gateway may reserve against: ``balance - pending_withdrawal``, at least 0."""
        return max(0, self.balance - self.pending_withdrawal)

    @property
    def consent_current(self) -> bool:
        """Whether the payer's consent to the processor stands (given, never withdrawn)."""
        return self.consent_until == CONSENT_NOT_WITHDRAWN


@dataclass(frozen=True)
class IntentState:
    """An intent as the Settlement contract knows it, read at ``block``.

    ``registered``: ``getIntent(id).payer`` is not zero (an unregistered intent is fine: the
    processor registers it when it settles). ``revoked_at``: unix second of the payer's
    revocation, 0 when not revoked.
    """

    registered: bool
    revoked_at: int
    block: int

    @property
    def revoked(self) -> bool:
        """Whether the payer revoked the intent (final: a revocation cannot be undone)."""
        return self.revoked_at != 0


class ChainReader(Protocol):
    """Chain reads. Each reads at one block and returns that block with the values."""

    async def escrow_state(self, payer: str, asset: str, processor: str) -> EscrowState:
        """``payer``'s escrow account with ``processor`` in ``asset`` and consent to ``processor``
        (addresses)."""

    async def intent_state(self, intent_id: bytes) -> IntentState:
        """Registration and revocation of the intent ``intent_id`` (32 bytes)."""

    async def settled_nonces(self, intent_id: bytes, window: int) -> tuple[int, int]:
        """``(bitmap, block)``: ``settledNonces(intent_id, window)``, bit k = nonce ``window·128 + k``."""

    async def token_domain(self, asset: str) -> tuple[str, str] | None:
        """The token's EIP-712 ``(name, version)`` (EIP-5267), ``None`` when it has none."""


class Web3ChainReader:
    """``ChainReader`` over JSON-RPC with web3.py (``rpc_url``, Settlement at ``settlement``).

    Raises what web3.py raises (connection errors, timeouts after ``timeout`` seconds).
    """

    def __init__(self, rpc_url: str, settlement: str, *, timeout: float = 10.0) -> None:
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.settlement = self.w3.eth.contract(
            address=settlement, abi=contract_artifact("Settlement")["abi"], decode_tuples=True
        )

    async def escrow_state(self, payer: str, asset: str, processor: str) -> EscrowState:
        """``balanceOf(payer, asset, processor)``, ``pendingWithdrawal(payer, asset, processor)``
        and ``processorConsentUntil(payer, processor)``, at one block."""
        block = await self.w3.eth.block_number
        functions = self.settlement.functions
        balance, withdrawal, consent = await asyncio.gather(
            functions.balanceOf(payer, asset, processor).call(block_identifier=block),
            functions.pendingWithdrawal(payer, asset, processor).call(block_identifier=block),
            functions.processorConsentUntil(payer, processor).call(block_identifier=block),
        )
        return EscrowState(int(balance), int(withdrawal.amount), int(consent), int(block))

    async def intent_state(self, intent_id: bytes) -> IntentState:
        """``getIntent(intent_id)``: registered (payer non-zero) and ``revokedAt``."""
        block = await self.w3.eth.block_number
        record = await self.settlement.functions.getIntent(intent_id).call(block_identifier=block)
        registered = int(record.payer, 16) != 0
        return IntentState(registered, int(record.revokedAt), int(block))

    async def settled_nonces(self, intent_id: bytes, window: int) -> tuple[int, int]:
        """``(settledNonces(intent_id, window), block)``."""
        block = await self.w3.eth.block_number
        bitmap = await self.settlement.functions.settledNonces(intent_id, window).call(block_identifier=block)
        return int(bitmap), int(block)

    async def token_domain(self, asset: str) -> tuple[str, str] | None:
        """The token's EIP-712 ``(name, version)`` from EIP-5267 ``eip712Domain()``, or
        ``None`` when the token does not implement it."""
        token = self.w3.eth.contract(address=asset, abi=_EIP5267_ABI)
        try:
            domain = await token.functions.eip712Domain().call()
        except (ContractLogicError, BadFunctionCallOutput, ValueError):
            return None
        return str(domain[1]), str(domain[2])

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self.w3.provider.disconnect()


#: EIP-5267 ``eip712Domain()``.
_EIP5267_ABI = [
    {
        "name": "eip712Domain",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [
            {"name": "fields", "type": "bytes1"},
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
            {"name": "salt", "type": "bytes32"},
            {"name": "extensions", "type": "uint256[]"},
        ],
    }
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Entries(Generic[K, V]):
    """One kind of cached read: ``key -> (value, monotonic time read)``."""

    def __init__(self, name: str, read: Callable[..., Awaitable[V]], final: Callable[[V], bool]) -> None:
        self.name = name
        self.read = read
        self.final = final  # a value that can never change again is not refreshed
        self.values: dict[K, tuple[V, float]] = {}
        # One chain read per key at a time: concurrent requests missing the same key (a new
        # nonce window under load) share it instead of each paying for its own.
        self._reading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, max_age: float | None) -> V:
        entry = self.values.get(key)
        if entry is None or (max_age is not None and time.monotonic() - entry[1] > max_age):
            reading = self._reading.get(key)
            if reading is None:
                reading = asyncio.ensure_future(self._load(key))
                self._reading[key] = reading
                reading.add_done_callback(lambda _: self._reading.pop(key, None))
            # shield: a caller that gives up does not cancel the read the others wait on.
            return await asyncio.shield(reading)
        return entry[0]

    async def _load(self, key: K) -> V:
        value = await self.read(*key)
        self.values[key] = (value, time.monotonic())
        return value

    async def refresh(self) -> None:
        for key, (value, _) in list(self.values.items()):
            if self.final(value):
                continue
            try:
                self.values[key] = (await self.read(*key), time.monotonic())
            except Exception as exc:  # keep the last good value (max_staleness bounds its use)
                logger.warning("%s refresh for %s failed: %r", self.name, _show(key), exc)


def _show(key: tuple[Any, ...]) -> str:
    return ", ".join("0x" + part.hex() if isinstance(part, bytes) else str(part) for part in key)


class ChainCache:
    """Cached chain reads, refreshed every ``refresh_seconds`` in a background task (default
    2 s, or half of ``max_staleness`` when that is shorter).

    Every getter returns the value with the block it was read at. The first read of an
    unknown key goes to the chain and raises what the reader raises; later reads come from
    memory. ``max_age`` (seconds, per call) forces a chain read when the entry is older;
    ``max_staleness`` (seconds, for every call) does the same, so a failing background
    refresh (which keeps the last good value and logs) never lets the gateway act on older
    state. ``None``: no bound. Raises ``ValueError`` for a non-positive ``refresh_seconds``
    or a ``max_staleness`` shorter than it.
    """

    def __init__(
        self, reader: ChainReader, *, refresh_seconds: float | None = None, max_staleness: float | None = None
    ) -> None:
        if refresh_seconds is None:
            refresh_seconds = 2.0 if max_staleness is None else min(2.0, max_staleness / 2)
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds: {refresh_seconds} must be positive")
        if max_staleness is not None and max_staleness < refresh_seconds:
            raise ValueError(f"max_staleness: {max_staleness} s is shorter than refresh_seconds {refresh_seconds} s")
        self.reader = reader
        self.refresh_seconds = refresh_seconds
        self.max_staleness = max_staleness
        self._escrow: _Entries[tuple[str, str, str], EscrowState] = _Entries(
            "escrow", reader.escrow_state, lambda state: False
        )
        self._intents: _Entries[tuple[bytes], IntentState] = _Entries(
            "intent", reader.intent_state, lambda state: state.revoked
        )
        self._settled: _Entries[tuple[bytes, int], tuple[int, int]] = _Entries(
            "settled nonces", reader.settled_nonces, lambda read: read[0] == _FULL_WINDOW
        )
        self._task: asyncio.Task[None] | None = None

    def _ensure_refreshing(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    def _bound(self, max_age: float | None) -> float | None:
        if self.max_staleness is None:
            return max_age
        return self.max_staleness if max_age is None else min(max_age, self.max_staleness)

    async def escrow(self, payer: str, asset: str, processor: str, *, max_age: float | None = None) -> EscrowState:
        """``payer``'s escrow account with ``processor`` in ``asset`` and consent to it (see
        ``EscrowState``)."""
        self._ensure_refreshing()
        return await self._escrow.get((payer, asset, processor), self._bound(max_age))

    async def intent(self, intent_id: bytes, *, max_age: float | None = None) -> IntentState:
        """Registration and revocation of ``intent_id`` (see ``IntentState``)."""
        self._ensure_refreshing()
        return await self._intents.get((intent_id,), self._bound(max_age))

    async def settled_nonces(self, intent_id: bytes, window: int, *, max_age: float | None = None) -> tuple[int, int]:
        """``(bitmap, block)`` of the intent's nonces ``window·128 …`` settled on chain."""
        self._ensure_refreshing()
        return await self._settled.get((intent_id, window), self._bound(max_age))

    async def nonce_settled(self, intent_id: bytes, nonce: int) -> bool:
        """Whether ``nonce`` of ``intent_id`` is settled on chain (as of the cached bitmap)."""
        window, bit = nonce_window(nonce)
        bitmap, _ = await self.settled_nonces(intent_id, window)
        return bool(bitmap >> bit & 1)

    async def refresh(self) -> None:
        """Re-read every known entry once (except final ones); failures keep the last value."""
        for entries in (self._escrow, self._intents, self._settled):
            await entries.refresh()

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
