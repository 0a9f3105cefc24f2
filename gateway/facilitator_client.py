"""A facilitator reached over HTTP (x402 ``specs/x402-specification-v2.md`` §7).

``HTTPFacilitatorClient(url)`` speaks ``POST /verify``, ``POST /settle`` and
``GET /supported`` to any x402 facilitator — ours (``uvicorn --factory
facilitator.app:from_env``) or a hosted one — so the gateway settles ``exact`` payments
through it instead of in-process.
"""

from __future__ import annotations

from typing import Any, Mapping

import httpx

from aep2.x402.models import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

__all__ = ["HTTPFacilitatorClient"]


class HTTPFacilitatorClient:
    """The ``Facilitator`` at base ``url`` (``https://x402.example/facilitator``).

    ``timeout``: seconds per call (``settle`` waits for the transaction to be mined, so allow
    for a block or two). ``headers``: sent with every call (an ``Authorization`` a hosted
    facilitator asks for). A facilitator answering a refusal with 4xx and a well-formed body
    counts as an answer; other failures raise ``httpx.HTTPError`` (or ``ValueError`` for a
    body that is not a facilitator's answer).
    """

    def __init__(self, url: str, *, timeout: float = 60.0, headers: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout, headers=dict(headers or {}))

    async def verify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements | PaymentRequirementsV1
    ) -> VerifyResponse:
        """``POST /verify``."""
        return VerifyResponse.model_validate(await self._post("/verify", payload, requirements))

    async def settle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements | PaymentRequirementsV1
    ) -> SettleResponse:
        """``POST /settle``."""
        return SettleResponse.model_validate(await self._post("/settle", payload, requirements))

    async def supported(self) -> SupportedResponse:
        """``GET /supported``."""
        response = await self._client.get(self.url + "/supported")
        response.raise_for_status()
        return SupportedResponse.model_validate(response.json())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _post(
        self, path: str, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements | PaymentRequirementsV1
    ) -> Any:
        body = {
            "x402Version": payload.x402_version,
            "paymentPayload": payload.to_wire(),
            "paymentRequirements": requirements.to_wire(),
        }
        response = await self._client.post(self.url + path, json=body)
        if response.status_code >= 500:
            response.raise_for_status()
        try:
            return response.json()
        except ValueError:
            response.raise_for_status()
            raise
