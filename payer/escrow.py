"""The payer's side of the Settlement contract: escrow deposits, processor consent, withdrawals.

Synchronous web3.py calls from the payer's (owner's) Ethereum key; amounts in token base
units. Each method waits for the receipt and raises ``EscrowError`` naming the contract's
custom error when the transaction would revert.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from aep2.deployment import Deployment, contract_artifact

from .errors import PayerError

__all__ = ["Escrow", "EscrowError"]


class EscrowError(PayerError):
    """An escrow transaction reverted or failed; the message names the contract error."""


class Escrow:
    """Escrow operations of ``owner_key``'s account on ``deployment`` (its token and Settlement)."""

    def __init__(self, deployment: Deployment, owner_key: str | bytes, *, rpc_url: str | None = None) -> None:
        self.deployment = deployment
        self.w3 = Web3(Web3.HTTPProvider(rpc_url or deployment.rpc_url, request_kwargs={"timeout": 60}))
        self.account = Account.from_key(owner_key)
        self.settlement = self.w3.eth.contract(address=deployment.settlement, abi=contract_artifact("Settlement")["abi"])
        self.token = self.w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])

    @property
    def address(self) -> str:
        return self.account.address

    def _send(self, call: Any, gas: int = 300_000) -> dict[str, Any]:
        try:
            call.call({"from": self.account.address})
        except (ContractCustomError, ContractLogicError) as exc:
            raise EscrowError(f"{call.fn_name}: would revert ({exc})") from exc
        tx = call.build_transaction(
            {
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "gas": gas,
                "chainId": self.w3.eth.chain_id,
            }
        )
        tx_hash = self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise EscrowError(f"{call.fn_name}: transaction 0x{bytes(tx_hash).hex()} reverted")
        return dict(receipt)

    def deposit(self, amount: int) -> None:
        """Approve (if needed) and deposit ``amount`` of the token into escrow."""
        if self.token.functions.allowance(self.address, self.settlement.address).call() < amount:
            self._send(self.token.functions.approve(self.settlement.address, 2**256 - 1))
        self._send(self.settlement.functions.deposit(self.token.address, amount))

    def authorize_processor(self, processor: str, allowed: bool = True) -> None:
        """Let ``processor`` (not) debit this payer's escrow for settlements."""
        self._send(self.settlement.functions.setProcessor(processor, allowed))

    def balance(self) -> int:
        """Escrowed balance in base units."""
        return int(self.settlement.functions.balanceOf(self.address, self.token.address).call())

    def token_balance(self) -> int:
        """Wallet balance of the token in base units."""
        return int(self.token.functions.balanceOf(self.address).call())

    def request_withdrawal(self, amount: int) -> None:
        """Start a withdrawal; executable after the contract's delay."""
        self._send(self.settlement.functions.requestWithdrawal(self.token.address, amount))

    def execute_withdrawal(self) -> None:
        """Execute a pending withdrawal whose delay has passed."""
        self._send(self.settlement.functions.executeWithdrawal(self.token.address))

    def revoke_intent(self, intent_id: bytes) -> None:
        """Revoke a registered intent: no further mandate of it settles."""
        self._send(self.settlement.functions.revokeIntent(intent_id))
