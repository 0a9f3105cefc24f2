"""The 402 answers: x402 ``PaymentRequired`` (v2 header) with its v1 JSON body, and failures.

x402 v2 (``specs/x402-specification-v2.md`` §5, ``transports-v2/http.md``): header
``PAYMENT-REQUIRED`` = base64 JSON ``PaymentRequired``; the body repeats the offers in v1
form (``maxAmountRequired``, ``resource`` inline, v1 network names) so v1 clients can pay
too. A malformed payment is answered 400, a refused or failed one 402 — with a failure
``PAYMENT-RESPONSE`` when settlement itself failed. Every answer is ``Cache-Control:
no-store`` and ``Vary`` on the payment headers: a cache must never answer one client's
request with another's quote.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from starlette.responses import Response

from aep2.errors import ErrorCode
from aep2.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    encode_header,
)
from aep2.x402.models import (
    PaymentRequired,
    PaymentRequiredV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    ResourceInfo,
    SettleResponse,
)
from aep2.x402.networks import v1_network

__all__ = ["Quote", "MALFORMED_CODES", "EXPOSED_HEADERS", "VARY", "payment_required_response"]

#: Codes of a payment that could not even be read: answered 400 (HTTP transport spec).
MALFORMED_CODES = frozenset({ErrorCode.INVALID_HEADER, ErrorCode.INVALID_PAYLOAD, ErrorCode.PAYLOAD_TOO_LARGE})
EXPOSED_HEADERS = f"{PAYMENT_REQUIRED_HEADER}, {PAYMENT_RESPONSE_HEADER}, {X_PAYMENT_RESPONSE_HEADER}"
VARY = f"{PAYMENT_SIGNATURE_HEADER}, {X_PAYMENT_HEADER}"


class Quote:
    """What one request costs and how it may be paid: ``accepts`` (v2, in order of
    preference), the ``resource``, the chain id (for v1 network names) and the v2
    ``extensions`` declared (bazaar, payment-identifier)."""

    __slots__ = ("accepts", "resource", "chain_id", "extensions")

    def __init__(
        self,
        accepts: Sequence[PaymentRequirements],
        resource: ResourceInfo,
        chain_id: int,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        self.accepts = list(accepts)
        self.resource = resource
        self.chain_id = chain_id
        self.extensions = extensions

    def requirement(self, scheme: str) -> PaymentRequirements | None:
        """The ``accepts`` entry of ``scheme``, if offered."""
        return next((r for r in self.accepts if r.scheme == scheme), None)

    def payment_required(self, error: str | None) -> PaymentRequired:
        """The v2 ``PaymentRequired``."""
        return PaymentRequired(error=error, resource=self.resource, accepts=self.accepts, extensions=self.extensions)

    def v1_body(self, error: str | None) -> PaymentRequiredV1:
        """The v1 402 body: the same offers, v1 field names and network names."""
        network = v1_network(self.chain_id)
        return PaymentRequiredV1(
            error=error or ErrorCode.PAYMENT_REQUIRED,
            accepts=[PaymentRequirementsV1.from_v2(r, self.resource, network) for r in self.accepts],
        )


def payment_required_response(
    quote: Quote, error: str | None, *, code: str | None = None, settlement: SettleResponse | None = None, version: int = 2
) -> Response:
    """The 402 (or, for a ``code`` in ``MALFORMED_CODES``, 400) answer quoting ``quote`` with
    ``error`` (``"code: reason"``). ``settlement``: a failed settlement, sent as
    ``PAYMENT-RESPONSE`` (``X-PAYMENT-RESPONSE`` for a v1 client)."""
    headers = {
        PAYMENT_REQUIRED_HEADER: encode_header(quote.payment_required(error).to_wire()),
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
        "Cache-Control": "no-store",
        "Vary": VARY,
    }
    if settlement is not None:
        name = PAYMENT_RESPONSE_HEADER if version == 2 else X_PAYMENT_RESPONSE_HEADER
        headers[name] = encode_header(settlement.to_wire())
    return Response(
        json.dumps(quote.v1_body(error).to_wire()),
        status_code=400 if code in MALFORMED_CODES else 402,
        media_type="application/json",
        headers=headers,
    )
