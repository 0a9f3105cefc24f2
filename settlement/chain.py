"""The settlement processor's view of the chain: web3.py behind one small class.

Every write re-checks with ``eth_call`` first (a revert is decoded into the contract's
custom error name, e.g. ``Settlement__InsufficientBalance``), is sent with explicit gas
(``eth_estimateGas`` under-prices the pairing precompile) and checks the receipt's status.
Connection errors are retried with exponential backoff, so a restarted Anvil or a dropped
RPC connection delays settlement instead of failing it.

A transaction without a receipt is not a lost one: ``lookup`` tells one the node still
holds (or forgot, and can take again) from one that can never be mined because another
transaction used its account nonce.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Awaitable, Callable, TypeVar

from eth_account import Account
from eth_utils import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, TransactionNotFound

from aep2.deployment import contract_artifact
from aep2.intent import SignedIntent

__all__ = [
    "SettlementClient",
    "IntentRecord",
    "SignedTx",
    "TxStatus",
    "TxLookup",
    "ChainRevert",
    "TransactionPending",
    "decode_revert",
]

logger = logging.getLogger("settlement.chain")
T = TypeVar("T")

#: Gas for ``settleBatch``: the Groth16 pairing alone needs ~200k + ~7k per public input.
SETTLE_GAS = 3_000_000


class ChainRevert(Exception):
    """A call or transaction reverted; ``error`` is the custom error's name when known."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(f"{error}{': ' + detail if detail else ''}")
        self.error = error


class TransactionPending(Exception):
    """A broadcast transaction has no receipt yet: it may still be mined (hash in ``args[0]``)."""


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction: its ``hash`` (0x hex), the ``raw`` bytes to broadcast, and the
    sending account's ``nonce`` it uses (of all transactions with that nonce, at most one
    is ever mined)."""

    hash: str
    raw: bytes
    nonce: int


class TxStatus(StrEnum):
    """Where a signed transaction stands on the node (``SettlementClient.lookup``)."""

    MINED = "mined"  # it has a receipt: read its status
    PENDING = "pending"  # the node holds it and its nonce is unused: it may still be mined
    DROPPED = "dropped"  # the node does not know it and its nonce is unused: broadcast it again
    REPLACED = "replaced"  # a mined transaction used its nonce: it can never be mined


@dataclass(frozen=True)
class TxLookup:
    """``status`` of a transaction, with its ``receipt`` when ``MINED``."""

    status: TxStatus
    receipt: dict[str, Any] | None = None


@dataclass(frozen=True)
class IntentRecord:
    """``ISettlement.IntentRecord`` as stored on chain (amounts in base units, times in unix
    seconds; ``revoked_at`` 0 when not revoked)."""

    payer: str
    asset: str
    valid_after: int
    valid_before: int
    processor: str
    max_amount: int
    spent: int
    max_per_payment: int
    revoked_at: int
    commitment: int

    @property
    def registered(self) -> bool:
        return int(self.payer, 16) != 0

    def settleable_until(self, settlement_window: int) -> int | None:
        """When a revocation stops settlement (``revoked_at + window``), or ``None``."""
        return self.revoked_at + settlement_window if self.revoked_at else None


def _error_selectors(abi: list[dict[str, Any]]) -> dict[str, str]:
    selectors = {}
    for item in abi:
        if item.get("type") == "error":
            signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            selectors["0x" + keccak(text=signature)[:4].hex()] = item["name"]
    return selectors


_SELECTORS: dict[str, str] = {}


def decode_revert(exc: Exception) -> ChainRevert:
    """Map a web3 revert exception to ``ChainRevert`` with the custom error's name."""
    if not _SELECTORS:
        for name in ("Settlement", "MockUSDC"):
            _SELECTORS.update(_error_selectors(contract_artifact(name)["abi"]))
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return ChainRevert(_SELECTORS.get(data[:10], data[:10]))
    message = str(exc)
    for selector, name in _SELECTORS.items():
        if selector in message:
            return ChainRevert(name)
    return ChainRevert("Reverted", message)


def _is_connection_error(exc: Exception) -> bool:
    import aiohttp

    return isinstance(exc, (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError))


def _struct_names(abi: list[dict[str, Any]], function: str) -> list[str]:
    """Member names of the struct a view function returns, in ABI order."""
    item = next(i for i in abi if i.get("type") == "function" and i["name"] == function)
    return [component["name"] for component in item["outputs"][0]["components"]]


class SettlementClient:
    """Reads and writes of the Settlement contract at ``settlement`` from ``private_key``'s account."""

    def __init__(
        self, rpc_url: str, settlement: str, private_key: str, *, retries: int = 8, backoff: float = 0.5
    ) -> None:
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
        self.account = Account.from_key(private_key)
        self.contract = self.w3.eth.contract(address=settlement, abi=contract_artifact("Settlement")["abi"])
        self.retries = retries
        self.backoff = backoff
        self._chain_id: int | None = None
        self._lock = asyncio.Lock()  # held while signing and broadcasting: nonces stay in order

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self.w3.provider.disconnect()

    @property
    def address(self) -> str:
        """The processor's address."""
        return self.account.address

    async def _retry(self, operation: Callable[[], Awaitable[T]]) -> T:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await operation()
            except Exception as exc:
                if not _is_connection_error(exc) or attempt == self.retries:
                    raise
                logger.warning("RPC unavailable (%r); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = await self._retry(lambda: self.w3.eth.chain_id)
        return self._chain_id

    async def latest_timestamp(self) -> int:
        """Timestamp of the latest block (unix seconds)."""
        block = await self._retry(lambda: self.w3.eth.get_block("latest"))
        return int(block["timestamp"])

    async def intent(self, intent_id: bytes) -> IntentRecord:
        """The on-chain record of an intent (``registered`` is false when unknown)."""
        raw = await self._retry(lambda: self.contract.functions.getIntent(intent_id).call())
        fields = dict(zip(_struct_names(self.contract.abi, "getIntent"), raw))
        return IntentRecord(
            payer=fields["payer"],
            asset=fields["asset"],
            valid_after=fields["validAfter"],
            valid_before=fields["validBefore"],
            processor=fields["processor"],
            max_amount=fields["maxAmount"],
            spent=fields["spent"],
            max_per_payment=fields["maxPerPayment"],
            revoked_at=fields["revokedAt"],
            commitment=fields["commitment"],
        )

    async def settled_nonces(self, intent_id: bytes, window: int) -> int:
        """Bitmap of the intent's settled nonces ``window·128 … window·128 + 127``."""
        return int(await self._retry(lambda: self.contract.functions.settledNonces(intent_id, window).call()))

    async def settlement_window(self) -> int:
        """The contract's settlement window (seconds)."""
        return int(await self._retry(lambda: self.contract.functions.settlementWindow().call()))

    async def balance_of(self, payer: str, token: str) -> int:
        """Payer's escrowed balance with this processor (base units): what its batches may debit."""
        return int(
            await self._retry(lambda: self.contract.functions.balanceOf(payer, token, self.account.address).call())
        )

    async def consent_until(self, payer: str) -> int:
        """When ``payer``'s consent to this processor lapses (unix seconds; 0: never given,
        ``2^64 - 1``: not withdrawn)."""
        return int(
            await self._retry(
                lambda: self.contract.functions.processorConsentUntil(payer, self.account.address).call()
            )
        )

    async def dry_run_settle(self, batch: tuple) -> str | None:
        """Simulate ``settleBatch`` of ``batch`` with an all-zero proof; returns the revert's
        custom error name (``Settlement__InvalidProof`` once every other check passed)."""
        call = self.contract.functions.settleBatch([0] * 8, batch)
        try:
            await self._retry(
                lambda: call.call({"from": self.account.address, "gas": SETTLE_GAS}, block_identifier="pending")
            )
        except (ContractCustomError, ContractLogicError) as exc:
            return decode_revert(exc).error
        return None

    async def register_intent(self, signed_intent: SignedIntent) -> str:
        """Register an intent from its payer's signature; returns the transaction hash."""
        message = signed_intent.intent.message()
        intent_tuple = (
            message["payer"],
            message["asset"],
            message["sessionKeyHash"],
            message["maxAmount"],
            message["maxPerPayment"],
            message["validAfter"],
            message["validBefore"],
            message["payeesRoot"],
            message["processor"],
            message["salt"],
        )
        call = self.contract.functions.registerIntent(intent_tuple, signed_intent.signature)
        receipt = await self.transact(call, gas=600_000)  # PoseidonT5 of the commitment: ~55k
        return "0x" + bytes(receipt["transactionHash"]).hex()

    async def settle_batch(
        self,
        proof_words: tuple[int, ...],
        batch: tuple,
        *,
        on_signed: Callable[[SignedTx], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Submit ``settleBatch(proof, batch)`` through ``transact`` (same errors); returns the receipt."""
        call = self.contract.functions.settleBatch(list(proof_words), batch)
        return await self.transact(call, gas=SETTLE_GAS, on_signed=on_signed)

    async def public_inputs(self, batch: tuple) -> list[int]:
        """The contract's own public-input vector for ``batch`` (a cross-check)."""
        return list(await self._retry(lambda: self.contract.functions.publicInputs(batch).call()))

    async def sign(self, call: Any, *, gas: int) -> SignedTx:
        """Sign ``call`` as the account's next transaction (after those still pending).

        Callers record the result before broadcasting, so a crash in between leaves a
        transaction the chain either has (found by hash) or never saw (broadcast it again).
        """
        nonce = await self._retry(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending"))
        tx = await call.build_transaction(
            {"from": self.account.address, "nonce": nonce, "gas": gas, "chainId": await self.chain_id()}
        )
        signed = self.account.sign_transaction(tx)
        return SignedTx("0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction), nonce)

    async def broadcast(self, raw: bytes) -> None:
        """Send a signed transaction (retried while the RPC endpoint is unreachable)."""
        await self._retry(lambda: self.w3.eth.send_raw_transaction(raw))

    async def wait(self, tx_hash: str, *, timeout: float = 120) -> dict[str, Any] | None:
        """The receipt of ``tx_hash``, or ``None`` if none arrived within ``timeout`` seconds
        (the transaction may still be mined: ``lookup`` says whether it can)."""
        try:
            return dict(
                await self._retry(lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout))
            )
        except TimeExhausted:
            return None

    async def lookup(self, tx: SignedTx) -> TxLookup:
        """Where ``tx``, signed by this client's account, stands now (no waiting).

        The account's mined nonce count is read before the receipt, so a transaction mined
        between the two reads shows as ``MINED``, never as ``REPLACED``. As with receipts,
        the latest block is taken as final.
        """
        mined_count = await self._retry(lambda: self.w3.eth.get_transaction_count(self.account.address, "latest"))
        try:
            receipt = dict(await self._retry(lambda: self.w3.eth.get_transaction_receipt(tx.hash)))
        except TransactionNotFound:
            receipt = None
        if receipt is not None:
            return TxLookup(TxStatus.MINED, receipt)
        if mined_count > tx.nonce:
            return TxLookup(TxStatus.REPLACED)
        try:
            await self._retry(lambda: self.w3.eth.get_transaction(tx.hash))
        except TransactionNotFound:
            return TxLookup(TxStatus.DROPPED)
        return TxLookup(TxStatus.PENDING)

    async def transact(
        self, call: Any, *, gas: int, on_signed: Callable[[SignedTx], Awaitable[None]] | None = None
    ) -> dict[str, Any]:
        """Simulate, sign, broadcast and wait for ``call``; returns the successful receipt.

        The simulation runs against the pending block (the transaction executes in a new
        block stamped about now). ``on_signed(tx)`` runs after signing and before
        broadcasting, so a caller can record the transaction first. Raises ``ChainRevert``
        when the simulation or the mined transaction reverts (nothing took effect), and
        ``TransactionPending`` when no receipt arrived within 120 s (the outcome is
        unknown: ``lookup`` follows it).
        """
        try:
            await self._retry(
                lambda: call.call({"from": self.account.address, "gas": gas}, block_identifier="pending")
            )
        except (ContractCustomError, ContractLogicError) as exc:
            raise decode_revert(exc) from exc
        async with self._lock:
            tx = await self.sign(call, gas=gas)
            if on_signed is not None:
                await on_signed(tx)
            await self.broadcast(tx.raw)
        receipt = await self.wait(tx.hash)
        if receipt is None:
            raise TransactionPending(tx.hash)
        if receipt["status"] != 1:
            raise ChainRevert("Reverted", tx.hash)
        return receipt
