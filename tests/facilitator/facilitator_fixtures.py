"""Helpers for the facilitator tests: EIP-3009 payments signed against the real MockUSDC, the
x402 models around them, on-chain reads, the test-only ERC-1271 wallet, and ``aep2`` mandates
under a payer's signed intent."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3

from aep2.deployment import PROJECT_ROOT, Deployment, contract_artifact
from aep2.eddsa import SessionKey
from aep2.eip3009 import TokenDomain, digest_of, transfer_with_authorization_typed_data
from aep2.intent import SignedIntent
from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload
from aep2.x402.models import (
    ExactEvmAuthorization,
    PaymentPayload,
    PaymentRequirements,
    PaymentRequirementsV1,
    ResourceInfo,
)
from aep2.x402.networks import v1_network
from payer import create_intent, create_session_key
from settlement.devchain import anvil_key

NETWORK = "eip155:31337"
TOKEN_NAME, TOKEN_VERSION = "USD Coin", "2"
PRICE = 1_234
#: The in-process facilitator's and the served facilitator's gas payers: their own Anvil
#: accounts, so neither races another test directory's transactions for a nonce.
FACILITATOR_KEY = anvil_key(7)
SERVED_FACILITATOR_KEY = anvil_key(8)
WALLET_SOURCE = Path(__file__).with_name("ERC1271Wallet.sol")
#: The settlement processor of ``tests/conftest.py`` (Anvil account 1): ``make_payer``'s
#: payers escrow with it and consent to it.
PROCESSOR_KEY = anvil_key(1)
PROCESSOR = Account.from_key(PROCESSOR_KEY).address


def sync_web3(rpc_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url))


def token_contract(w3: Web3, token: str) -> Any:
    return w3.eth.contract(address=token, abi=contract_artifact("MockUSDC")["abi"])


def balance(w3: Web3, token: str, owner: str) -> int:
    return int(token_contract(w3, token).functions.balanceOf(owner).call())


def send(w3: Web3, key: str, call: Any) -> Any:
    """Send ``call`` from ``key``'s account and return the mined receipt (status checked)."""
    sender = Account.from_key(key)
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    tx = call.build_transaction({"from": sender.address, "nonce": nonce, "chainId": w3.eth.chain_id})
    tx_hash = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, receipt
    return receipt


def domain(token: str, *, name: str = TOKEN_NAME, version: str = TOKEN_VERSION) -> TokenDomain:
    return TokenDomain(name, version, 31337, token)


def authorization(
    payer: str,
    to: str,
    value: int = PRICE,
    *,
    valid_after: int = 0,
    valid_before: int | None = None,
    nonce: bytes | None = None,
) -> ExactEvmAuthorization:
    return ExactEvmAuthorization.model_validate(
        {
            "from": payer,
            "to": to,
            "value": str(value),
            "validAfter": str(valid_after),
            "validBefore": str(int(time.time()) + 300 if valid_before is None else valid_before),
            "nonce": "0x" + (nonce or secrets.token_bytes(32)).hex(),
        }
    )


def sign(account: LocalAccount, token_domain: TokenDomain, auth: ExactEvmAuthorization) -> dict[str, Any]:
    """The ``exact`` payload: ``auth`` signed by ``account`` (EIP-712, as wallets sign it)."""
    typed = transfer_with_authorization_typed_data(token_domain, auth)
    signed = account.sign_message(encode_typed_data(full_message=typed))
    return {"signature": "0x" + bytes(signed.signature).hex(), "authorization": auth.to_wire()}


def sign_digest(account: LocalAccount, token_domain: TokenDomain, auth: ExactEvmAuthorization) -> dict[str, Any]:
    """The ``exact`` payload for an ERC-1271 wallet: its owner's raw ECDSA over the digest."""
    signed = account.unsafe_sign_hash(digest_of(transfer_with_authorization_typed_data(token_domain, auth)))
    return {"signature": "0x" + bytes(signed.signature).hex(), "authorization": auth.to_wire()}


def requirements(token: str, pay_to: str, amount: int = PRICE, **changes: Any) -> PaymentRequirements:
    fields: dict[str, Any] = {
        "scheme": "exact",
        "network": NETWORK,
        "asset": token,
        "amount": str(amount),
        "pay_to": pay_to,
        "max_timeout_seconds": 300,
        "extra": {"name": TOKEN_NAME, "version": TOKEN_VERSION},
    }
    return PaymentRequirements(**(fields | changes))


def payment(accepted: PaymentRequirements, exact_payload: dict[str, Any]) -> PaymentPayload:
    return PaymentPayload(x402_version=2, accepted=accepted, payload=exact_payload)


@lru_cache(maxsize=1)
def wallet_artifact() -> tuple[list[dict[str, Any]], str]:
    """ABI and creation bytecode of ``ERC1271Wallet.sol``, compiled with the project's solc-js
    (about 2 s; test-only, so it stays out of forge's ``contracts/``)."""
    standard_input = {
        "language": "Solidity",
        "sources": {WALLET_SOURCE.name: {"content": WALLET_SOURCE.read_text()}},
        "settings": {
            "evmVersion": "cancun",
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    solc = PROJECT_ROOT / "contracts" / "tools" / "solc"
    command = ["node", str(solc), "--standard-json"]
    result = subprocess.run(command, input=json.dumps(standard_input), capture_output=True, text=True, check=True)
    output = json.loads(result.stdout)
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    assert not errors, errors
    contract = output["contracts"][WALLET_SOURCE.name]["ERC1271Wallet"]
    return contract["abi"], "0x" + contract["evm"]["bytecode"]["object"]


def deploy_wallet(w3: Web3, deployer_key: str, owner: str) -> str:
    """A fresh ``ERC1271Wallet`` owned by ``owner``; its address."""
    abi, bytecode = wallet_artifact()
    receipt = send(w3, deployer_key, w3.eth.contract(abi=abi, bytecode=bytecode).constructor(owner))
    return str(receipt["contractAddress"])


# ---------------------------------------------------------------------------- aep2


def aep2_requirements(deployment: Deployment, pay_to: str, amount: int = PRICE, **changes: Any) -> PaymentRequirements:
    """The ``aep2`` ``accepts`` entry a gateway of ``PROCESSOR`` offers (docs/PROTOCOL.md §4)."""
    fields: dict[str, Any] = {
        "scheme": "aep2",
        "network": deployment.network,
        "asset": deployment.token,
        "amount": str(amount),
        "pay_to": pay_to,
        "max_timeout_seconds": 300,
        "extra": {"settlement": deployment.settlement, "processor": PROCESSOR, "minDeadlineSeconds": 300},
    }
    return PaymentRequirements(**(fields | changes))


def v1_requirements(requirements: PaymentRequirements) -> PaymentRequirementsV1:
    """``requirements`` as a v1 ``accepts`` entry (v1 network name of its chain)."""
    network = v1_network(int(requirements.network.split(":")[1]))
    return PaymentRequirementsV1.from_v2(requirements, ResourceInfo(url="http://payee.test/v1/thing"), network)


@dataclass
class AEP2Payer:
    """An agent paying with one signed intent and its session key; nonces count up from 0."""

    signed: SignedIntent
    key: SessionKey
    next_nonce: int = field(default=0)

    @property
    def address(self) -> str:
        return self.signed.intent.payer

    def mandate(
        self, payee: str, amount: int = PRICE, *, nonce: int | None = None, deadline: int | None = None
    ) -> Mandate:
        if nonce is None:
            nonce, self.next_nonce = self.next_nonce, self.next_nonce + 1
        return Mandate(
            intent_id=self.signed.intent.intent_id,
            payee=payee,
            amount=amount,
            nonce=nonce,
            deadline=int(time.time()) + 3600 if deadline is None else deadline,
            request_hash=request_hash("GET", "/v1/thing"),
        )

    def payload(
        self, mandate: Mandate, *, include_intent: bool = True, sign_key: SessionKey | None = None
    ) -> dict[str, Any]:
        """The ``aep2`` payload of ``mandate``, signed by the session key (or ``sign_key``)."""
        return build_payload(mandate, mandate.sign(sign_key or self.key), self.signed if include_intent else None)

    def pay(
        self,
        requirements: PaymentRequirements,
        *,
        amount: int | None = None,
        payee: str | None = None,
        nonce: int | None = None,
        deadline: int | None = None,
        include_intent: bool = True,
        sign_key: SessionKey | None = None,
    ) -> PaymentPayload:
        """A v2 payment for ``requirements``: a mandate of its amount to its ``payTo`` unless
        ``amount``/``payee`` say otherwise."""
        mandate = self.mandate(
            payee or requirements.pay_to,
            int(requirements.amount) if amount is None else amount,
            nonce=nonce,
            deadline=deadline,
        )
        payload = self.payload(mandate, include_intent=include_intent, sign_key=sign_key)
        return PaymentPayload(x402_version=2, accepted=requirements, payload=payload)


def aep2_payer(owner_key: Any, deployment: Deployment, **intent_options: Any) -> AEP2Payer:
    """An ``AEP2Payer`` for a fresh session key and an intent of ``owner_key``'s account naming
    ``PROCESSOR`` (``intent_options`` override ``payer.create_intent``'s arguments)."""
    key = create_session_key()
    options: dict[str, Any] = {
        "session_key": key,
        "asset": deployment.token,
        "max_amount": 100_000,
        "max_per_payment": 5_000,
        "valid_for_seconds": 3600,
        "chain_id": deployment.chain_id,
        "settlement": deployment.settlement,
        "processor": PROCESSOR,
    }
    return AEP2Payer(create_intent(owner_key, **(options | intent_options)), key)
