"""An x402 facilitator (``specs/x402-specification-v2.md`` §7) for the ``exact`` EVM scheme and
the ``aep2`` deferred-mandate scheme.

``ExactEvmFacilitator`` verifies and settles EIP-3009 ``transferWithAuthorization`` payments on
one chain, in-process. ``AEP2Facilitator`` verifies ``aep2`` mandates and reserves them in a
settlement processor's store, for its next batch. ``Facilitators`` serves several of them by
scheme; ``create_app`` serves any of these as ``GET /supported``, ``POST /verify`` and
``POST /settle``. One command runs it (see ``facilitator.app``)::

    uvicorn --factory facilitator.app:from_env --port 8402
"""

from .aep2 import AEP2Facilitator
from .app import create_app, from_env
from .composite import Facilitators, SchemeFacilitator
from .exact_evm import ExactEvmFacilitator

__all__ = ["AEP2Facilitator", "ExactEvmFacilitator", "Facilitators", "SchemeFacilitator", "create_app", "from_env"]
