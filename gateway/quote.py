"""The 402 quote: x402 ``PaymentRequired`` (v2 header) and its v1 JSON body.

x402 v2 (``specs/x402-specification-v2.md``): header ``PAYMENT-REQUIRED`` = base64 JSON
``{"x402Version": 2, "error", "resource": {"url", "description", "mimeType"},
"accepts": [PaymentRequirements…]}``; requirements ``{"scheme", "network", "asset",
"amount", "payTo", "maxTimeoutSeconds", "extra"}``. v1 body: ``{"x402Version": 1,
"error", "accepts": [{"scheme", "network", "maxAmountRequired", "resource",
"description", "mimeType", "payTo", "maxTimeoutSeconds", "asset", "extra"}]}``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from aep2.x402 import PAYMENT_REQUIRED_HEADER, encode_header

from .config import GatewayConfig

__all__ = ["Quote", "payment_required_response"]

AEP2_SCHEME = "aep2"
EXACT_SCHEME = "exact"


class Quote:
    """What one request costs and how it may be paid."""

    __slots__ = ("config", "amount", "url", "description", "mime_type")

    def __init__(self, config: GatewayConfig, amount: int, url: str, description: str, mime_type: str) -> None:
        self.config = config
        self.amount = amount
        self.url = url
        self.description = description
        self.mime_type = mime_type

    def requirements(self) -> list[dict[str, Any]]:
        """The v2 ``accepts`` list: ``aep2`` first, then ``exact`` when enabled."""
        config = self.config
        accepts = [
            {
                "scheme": AEP2_SCHEME,
                "network": config.network,
                "asset": config.asset,
                "amount": str(self.amount),
                "payTo": config.payee,
                "maxTimeoutSeconds": config.max_timeout_seconds,
                "extra": {
                    "settlement": config.settlement,
                    "processor": config.processor,
                    "minDeadlineSeconds": config.min_deadline_seconds,
                },
            }
        ]
        if config.exact_enabled:
            accepts.append(
                {
                    "scheme": EXACT_SCHEME,
                    "network": config.network,
                    "asset": config.asset,
                    "amount": str(self.amount),
                    "payTo": config.payee,
                    "maxTimeoutSeconds": config.max_timeout_seconds,
                    "extra": {"name": config.token_name, "version": config.token_version},
                }
            )
        return accepts

    def resource(self) -> dict[str, Any]:
        """x402 ``ResourceInfo``."""
        return {"url": self.url, "description": self.description, "mimeType": self.mime_type}

    def payment_required(self, error: str | None) -> dict[str, Any]:
        """The v2 ``PaymentRequired`` object."""
        return {"x402Version": 2, "error": error, "resource": self.resource(), "accepts": self.requirements()}

    def v1_body(self, error: str | None) -> dict[str, Any]:
        """The v1 402 body: same offers, v1 field names."""
        accepts = []
        for requirement in self.requirements():
            accepts.append(
                {
                    "scheme": requirement["scheme"],
                    "network": requirement["network"],
                    "maxAmountRequired": requirement["amount"],
                    "resource": self.url,
                    "description": self.description,
                    "mimeType": self.mime_type,
                    "payTo": requirement["payTo"],
                    "maxTimeoutSeconds": requirement["maxTimeoutSeconds"],
                    "asset": requirement["asset"],
                    "extra": requirement["extra"],
                }
            )
        return {"x402Version": 1, "error": error or "payment_required", "accepts": accepts}


def payment_required_response(quote: Quote, error: str | None) -> Response:
    """HTTP 402 with the v2 header and the v1 body."""
    return Response(
        json.dumps(quote.v1_body(error)),
        status_code=402,
        media_type="application/json",
        headers={
            PAYMENT_REQUIRED_HEADER: encode_header(quote.payment_required(error)),
            "Access-Control-Expose-Headers": "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE",
        },
    )
