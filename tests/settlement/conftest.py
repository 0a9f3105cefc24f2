import pytest

from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key
from settlement.prover import Prover

from settlement_fixtures import WINDOW


@pytest.fixture(scope="session")
def prover(small_artifacts) -> Prover:
    """A prover of the small circuit, its key loaded once for the session."""
    return Prover(small_artifacts)


@pytest.fixture
def chain(small_artifacts):
    """A fresh Anvil with its own deployment of the small circuit (window and withdrawal
    delay ``WINDOW``): ``(node, deployment)``. Moving its time disturbs no other test."""
    with Anvil() as node:
        deployment = deploy(node.rpc_url, anvil_key(0), small_artifacts, withdrawal_delay=WINDOW, settlement_window=WINDOW)
        yield node, deployment
