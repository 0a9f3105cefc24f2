"""What a resource server needs from an x402 facilitator (``specs/x402-specification-v2.md`` §7).

One interface for a facilitator reached over HTTP (``gateway.facilitator_client``) and one
running in-process (``facilitator.ExactEvmFacilitator``), so a gateway settles ``exact``
payments through either without knowing which.
"""

from __future__ import annotations

from typing import Protocol

from .models import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

__all__ = ["Facilitator"]


class Facilitator(Protocol):
    """``/verify``, ``/settle`` and ``/supported`` of an x402 facilitator.

    ``verify`` checks a payment without moving funds; ``settle`` moves them and answers only
    once the transaction is mined (``transaction`` is its hash) — or, for a deferred scheme
    such as ``aep2``, once the payment is accepted for a later batch (``transaction`` ``""``,
    ``extra.status`` ``"accepted"``) — or with ``success=False`` and an x402 ``error_reason``. Neither raises for a refused payment; both may raise ``OSError``
    or ``httpx.HTTPError`` when the facilitator cannot be reached.
    """

    async def verify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements | PaymentRequirementsV1
    ) -> VerifyResponse: ...

    async def settle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements | PaymentRequirementsV1
    ) -> SettleResponse: ...

    async def supported(self) -> SupportedResponse: ...

    async def aclose(self) -> None:
        """Release connections (RPC or HTTP)."""
