"""Shared parts of the settlement tests: the processor and payee accounts, a funded payer,
and a processor over a store file (real Anvil, real contracts, real proofs)."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import httpx
from eth_account import Account
from web3 import Web3

from aep2.deployment import Deployment
from aep2.sqlite_store import SQLiteStore
from payer import AEP2Auth, Escrow, PayerState, create_intent, create_session_key
from settlement.chain import SettlementClient
from settlement.devchain import anvil_key, mint
from settlement.processor import SettlementProcessor
from settlement.prover import Prover
from settlement.provers import ProverPool

PROCESSOR_KEY = anvil_key(1)
PROCESSOR = Account.from_key(PROCESSOR_KEY).address
PAYEE = Account.from_key(anvil_key(2)).address
PRICE = 1_000  # /v1/forecast/{city} of examples.payee_service, base units
WINDOW = 60  # settlement window and withdrawal delay of the ``chain`` fixture's deployments (s)


def fund(deployment: Deployment, escrow: int) -> Escrow:
    """A fresh payer with ETH for gas, ``escrow`` deposited with ``PROCESSOR`` and consent to it."""
    account = Account.create()
    Web3(Web3.HTTPProvider(deployment.rpc_url)).provider.make_request(
        "anvil_setBalance", [account.address, hex(10**20)]
    )
    mint(deployment.rpc_url, deployment.token, account.address, escrow)
    payer = Escrow(deployment, account.key, processor=PROCESSOR)
    payer.deposit(escrow)
    payer.authorize_processor(PROCESSOR)
    return payer


async def pay(url: str, deployment: Deployment, payer: Escrow, calls: int) -> AEP2Auth:
    """``calls`` paid calls to ``examples.payee_service`` at ``url`` under a fresh intent of ``payer``."""
    key = create_session_key()
    intent = create_intent(
        payer.account.key, session_key=key, asset=deployment.token, max_amount=10**6, max_per_payment=10**4,
        valid_for_seconds=3600, chain_id=deployment.chain_id, settlement=deployment.settlement, processor=PROCESSOR,
    )
    auth = AEP2Auth(intent, key, PayerState())
    async with httpx.AsyncClient(auth=auth, base_url=url) as client:
        for k in range(calls):
            assert (await client.get(f"/v1/forecast/c{k}")).status_code == 200
    return auth


def payee_balance(payer: Escrow) -> int:
    """The token balance of ``PAYEE``."""
    return payer.token.functions.balanceOf(PAYEE).call()


@contextlib.asynccontextmanager
async def processor(
    deployment: Deployment, store_path: str, prover: Prover | ProverPool, rpc_url: str | None = None
) -> AsyncIterator[SettlementProcessor]:
    """A ``SettlementProcessor`` with ``PROCESSOR_KEY`` over the store at ``store_path``."""
    store = SQLiteStore(store_path)
    await store.open()
    client = SettlementClient(rpc_url or deployment.rpc_url, deployment.settlement, PROCESSOR_KEY, backoff=0.2)
    try:
        yield SettlementProcessor(store, client, prover, deployment.token)
    finally:
        await client.aclose()
        await store.close()
