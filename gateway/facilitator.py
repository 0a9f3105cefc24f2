"""The gateway as its own x402 facilitator for ``exact`` payments.

Recorded EIP-3009 authorizations are submitted as ``transferWithAuthorization`` after the
request was served, from a key that pays the gas. Each submission checks the receipt's
status; a reverted or rejected authorization is marked ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from aep2.deployment import contract_artifact
from aep2.store import ExactPaymentRecord, PaymentStore

__all__ = ["ExactFacilitator"]

logger = logging.getLogger("gateway.facilitator")


class ExactFacilitator:
    """Settles ``accepted`` ``exact`` payments from ``store`` on chain.

    ``rpc_url``: JSON-RPC endpoint; ``private_key``: the submitting account (pays gas, in wei).
    """

    def __init__(self, store: PaymentStore, rpc_url: str, private_key: str, *, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.account = Account.from_key(private_key)
        self.poll_seconds = poll_seconds
        self._abi = contract_artifact("MockUSDC")["abi"]

    async def settle_pending(self) -> int:
        """Submit every ``accepted`` payment; returns how many settled."""
        settled = 0
        for record in await self.store.exact_payments("accepted"):
            if await self._settle(record):
                settled += 1
        return settled

    async def _settle(self, record: ExactPaymentRecord) -> bool:
        auth = record.authorization
        token = self.w3.eth.contract(address=record.asset, abi=self._abi)
        signature = bytes.fromhex(record.signature[2:])
        v, r, s = signature[64], signature[:32], signature[32:64]
        if v < 27:
            v += 27
        call = token.functions.transferWithAuthorization(
            auth["from"],
            auth["to"],
            int(auth["value"]),
            int(auth["validAfter"]),
            int(auth["validBefore"]),
            bytes.fromhex(auth["nonce"][2:]),
            v,
            r,
            s,
        )
        try:
            await call.call({"from": self.account.address})
        except Exception as exc:
            await self.store.update_exact_payment(record.nonce, "failed", None, f"would revert: {exc}")
            return False
        nonce = await self.w3.eth.get_transaction_count(self.account.address, "pending")
        tx = await call.build_transaction(
            {"from": self.account.address, "nonce": nonce, "gas": 150_000, "chainId": await self.w3.eth.chain_id}
        )
        signed = self.account.sign_transaction(tx)
        tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt["status"] != 1:
            await self.store.update_exact_payment(record.nonce, "failed", "0x" + bytes(tx_hash).hex(), "reverted")
            return False
        await self.store.update_exact_payment(record.nonce, "settled", "0x" + bytes(tx_hash).hex(), None)
        return True

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self.w3.provider.disconnect()

    async def run(self, stop: asyncio.Event) -> None:
        """Settle in a loop until ``stop`` is set; RPC errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.settle_pending()
            except Exception as exc:
                logger.warning("exact settlement round failed, retrying: %r", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass
