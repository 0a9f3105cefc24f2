"""Fixtures of the facilitator tests: a real Anvil with the real MockUSDC (``deployment`` from
``tests/conftest.py``), funded payers, fresh payees, and our facilitator in-process or served
by uvicorn on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from facilitator_fixtures import FACILITATOR_KEY, SERVED_FACILITATOR_KEY, sync_web3
from web3 import Web3

from aep2.deployment import Deployment
from facilitator import ExactEvmFacilitator, create_app
from settlement.devchain import Anvil, mint

pytestmark = pytest.mark.chain


@pytest.fixture
def w3(anvil: Anvil) -> Web3:
    return sync_web3(anvil.rpc_url)


@pytest.fixture
def new_account(w3: Web3, deployment: Deployment) -> Callable[..., LocalAccount]:
    """``new_account(tokens=0, eth=True)``: a fresh account holding ``tokens`` MockUSDC base
    units and, unless ``eth=False``, gas money."""

    def factory(tokens: int = 0, *, eth: bool = True) -> LocalAccount:
        account = Account.create()
        if eth:
            w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
        if tokens:
            mint(deployment.rpc_url, deployment.token, account.address, tokens)
        return account

    return factory


@pytest.fixture
def payer(new_account: Callable[..., LocalAccount]) -> LocalAccount:
    """A payer holding 10 000 base units and no ETH (EIP-3009 payers need none)."""
    return new_account(10_000, eth=False)


@pytest.fixture
def payee() -> str:
    """A fresh payee per test, so its balance moves only by the test's own payments."""
    return str(Account.create().address)


@pytest.fixture
async def facilitator(deployment: Deployment) -> AsyncIterator[ExactEvmFacilitator]:
    """Our facilitator in the test's event loop."""
    instance = ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY)
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def served_facilitator(deployment: Deployment, serve: Callable[[Any], Any]) -> Any:
    """Our facilitator's HTTP app on a real uvicorn loopback port (``.url``); the app's
    lifespan closes its RPC session when the server stops."""
    return serve(create_app(ExactEvmFacilitator(deployment.rpc_url, SERVED_FACILITATOR_KEY)))
