"""Fixtures for the batch-circuit tests: one small circuit, built once per session.

``build_artifacts`` caches by content hash (``$AEP2_CACHE_DIR`` or
``~/.cache/aep2-gateway/circuits``), so only the first run compiles and sets up.
"""

from __future__ import annotations

import pytest

from settlement.artifacts import CircuitArtifacts, build_artifacts
from settlement.prover import Prover

# Small enough to build in ~20 s, large enough for two intents, two payees and a padding slot
# (the payee tree depth D is fixed: aep2.payees.PAYEE_TREE_DEPTH).
N, I, P = 4, 2, 2


@pytest.fixture(scope="session")
def batch_artifacts() -> CircuitArtifacts:
    return build_artifacts(N, I, P)


@pytest.fixture(scope="session")
def batch_prover(batch_artifacts: CircuitArtifacts) -> Prover:
    # The WASM generator even where the C++ one is built: the refusal tests read its error trace.
    return Prover(batch_artifacts, native=False)
