"""The payer's side of the Settlement contract: escrow deposits, processor consent, withdrawals,
intent registration and revocation.

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
from aep2.intent import INTENT_TYPES, SignedIntent

from .errors import PayerError

__all__ = ["Escrow", "EscrowError"]


class EscrowError(PayerError):
    """An escrow transaction reverted or failed; the message names the contract error."""


class Escrow:
    """Escrow operations of ``owner_key``'s account with ``processor`` on ``deployment`` (its
    token and Settlement).

    Escrow is held per processor (docs/PROTOCOL.md §5): deposits, the balance and withdrawals
    here are those of the account only ``processor`` settles from, the processor the agent's
    intents name. Fund another processor with another ``Escrow``.
    """

    def __init__(
        self, deployment: Deployment, owner_key: str | bytes, *, processor: str, rpc_url: str | None = None
    ) -> None:
        self.deployment = deployment
        self.processor = Web3.to_checksum_address(processor)
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
        """Approve (if needed) and deposit ``amount`` of the token into the escrow with the processor."""
        if self.token.functions.allowance(self.address, self.settlement.address).call() < amount:
            self._send(self.token.functions.approve(self.settlement.address, 2**256 - 1))
        self._send(self.settlement.functions.deposit(self.token.address, self.processor, amount))

    def authorize_processor(self, processor: str, allowed: bool = True) -> None:
        """Let ``processor`` (not) settle this payer's intents against the escrow.

        A de-authorisation (``allowed=False``) lets the processor settle for the contract's
        settlement window more (mandates already served still settle); gateways refuse new
        payments at once.
        """
        self._send(self.settlement.functions.setProcessor(processor, allowed))

    def processor_consent_until(self, processor: str) -> int:
        """``processorConsentUntil``: 0 never given, ``2^64 - 1`` standing, else when it lapses (unix s)."""
        return int(self.settlement.functions.processorConsentUntil(self.address, processor).call())

    def balance(self) -> int:
        """Escrowed balance with the processor, in base units."""
        return int(self.settlement.functions.balanceOf(self.address, self.token.address, self.processor).call())

    def token_balance(self) -> int:
        """Wallet balance of the token in base units."""
        return int(self.token.functions.balanceOf(self.address).call())

    def request_withdrawal(self, amount: int) -> None:
        """Start a withdrawal of ``amount`` (base units, at most the balance); executable after
        the contract's delay. Gateways stop accepting payments against the requested amount."""
        self._send(self.settlement.functions.requestWithdrawal(self.token.address, self.processor, amount))

    def pending_withdrawal(self) -> tuple[int, int]:
        """``(amount, ready_at)`` of the pending withdrawal (amount 0: none; ready_at unix s)."""
        withdrawal = self.settlement.functions.pendingWithdrawal(
            self.address, self.token.address, self.processor
        ).call()
        return int(withdrawal[0]), int(withdrawal[1])

    def cancel_withdrawal(self) -> None:
        """Cancel the pending withdrawal (``EscrowError`` if there is none)."""
        self._send(self.settlement.functions.cancelWithdrawal(self.token.address, self.processor))

    def execute_withdrawal(self) -> None:
        """Execute a pending withdrawal whose delay has passed."""
        self._send(self.settlement.functions.executeWithdrawal(self.token.address, self.processor))

    def register_intent(self, signed_intent: SignedIntent) -> bytes:
        """Register a signed intent on chain (anyone may; the processor does it when it first
        settles one); returns the intent id. ``EscrowError`` if it would revert (e.g. already
        registered, or ``validBefore`` passed)."""
        message = signed_intent.intent.message()
        fields = tuple(message[item["name"]] for item in INTENT_TYPES["Intent"])
        self._send(self.settlement.functions.registerIntent(fields, signed_intent.signature), gas=600_000)
        return signed_intent.intent.intent_id

    def revoke_intent(self, intent_id: bytes) -> None:
        """Revoke a registered intent of this payer: gateways refuse its mandates from then on;
        those already served settle for the contract's settlement window more."""
        self._send(self.settlement.functions.revokeIntent(intent_id))

    def intent(self, intent_id: bytes) -> dict[str, int | str]:
        """The contract's record of an intent (``getIntent``): ``payer`` (the zero address when
        unregistered), ``spent`` and ``maxAmount`` (base units), ``revokedAt`` (unix s, 0 if not
        revoked)."""
        record = self.settlement.functions.getIntent(intent_id).call()
        names = ("payer", "asset", "sessionKeyHash", "maxAmount", "maxPerPayment", "validAfter", "validBefore",
                 "payeesRoot", "processor", "spent", "revokedAt", "commitment")
        return dict(zip(names, record))

    def is_registered(self, intent_id: bytes) -> bool:
        """Whether the contract knows the intent (its record names a payer)."""
        return str(self.intent(intent_id)["payer"]).lower() != "0x" + "00" * 20

    def settled_nonces(self, intent_id: bytes, window: int) -> int:
        """The bitmap of the intent's settled nonces ``128 * window … 128 * window + 127``
        (bit ``nonce % 128``), as the contract records them (``settledNonces``)."""
        return int(self.settlement.functions.settledNonces(intent_id, window).call())
