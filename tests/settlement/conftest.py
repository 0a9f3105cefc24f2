import pytest

from settlement.prover import Prover


@pytest.fixture(scope="session")
def prover(small_artifacts) -> Prover:
    """A prover of the small circuit, its key loaded once for the session."""
    return Prover(small_artifacts)
