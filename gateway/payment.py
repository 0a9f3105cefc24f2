"""What every transport of the gateway shares: the schemes it offers, and reading a client's
payment envelope against a quote.

The HTTP middleware (``gateway.middleware``) and the MCP tool gate (``gateway.mcp``) take a
payment from different places (a ``PAYMENT-SIGNATURE`` header, ``_meta["x402/payment"]``)
but check it the same way, through these two functions and the same ``Scheme`` objects.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pydantic import ValidationError

from aep2.errors import ErrorCode, PaymentError
from aep2.store import PaymentStore
from aep2.x402.facilitator import Facilitator
from aep2.x402.models import PaymentPayload, PaymentPayloadV1, SettleResponse
from aep2.x402.networks import caip2, v1_network

from .chain import ChainCache
from .config import GatewayConfig
from .quote import Quote
from .schemes.aep2 import AEP2Scheme
from .schemes.base import AcceptedPayment, PaidRequest, Scheme
from .schemes.exact import ExactScheme

__all__ = ["open_schemes", "parse_payment", "settle", "token_domain"]

logger = logging.getLogger("gateway")


async def token_domain(config: GatewayConfig, chain: ChainCache) -> tuple[str, str]:
    """``(name, version)`` of the asset's EIP-712 domain: the token's EIP-5267
    ``eip712Domain()`` when the reader can read it, else the config's.

    Raises ``ValueError`` naming ``token_name`` / ``token_version`` when the token's domain
    contradicts the config, or when neither gives one.
    """
    read = getattr(chain.reader, "token_domain", None)
    domain = await read(config.asset) if read is not None else None
    if domain is None:
        if config.token_name is None or config.token_version is None:
            raise ValueError(
                f"token_name/token_version: {config.asset} has no EIP-5267 eip712Domain(); give its EIP-712 domain"
            )
        return config.token_name, config.token_version
    name, version = domain
    for field, expected, actual in (("token_name", config.token_name, name), ("token_version", config.token_version, version)):
        if expected is not None and expected != actual:
            raise ValueError(f"{field}: {expected!r} configured, but the token {config.asset} signs with {actual!r}")
    return name, version


async def open_schemes(
    config: GatewayConfig, store: PaymentStore, facilitator: Facilitator | None, aep2: AEP2Scheme
) -> dict[str, Scheme]:
    """The schemes offered, by name, in the order of ``accepts``: ``exact`` first (every x402
    client understands it) when there is a facilitator and ``config.exact_enabled``, then
    ``aep2``. Raises what ``token_domain`` raises."""
    schemes: dict[str, Scheme] = {}
    if facilitator is not None and config.exact_enabled:
        name, version = await token_domain(config, aep2.chain)
        schemes["exact"] = ExactScheme(config, store, facilitator, token_name=name, token_version=version)
    schemes["aep2"] = aep2
    return schemes


def parse_payment(
    raw: Mapping[str, Any],
    quote: Quote,
    config: GatewayConfig,
    schemes: Mapping[str, Scheme],
    *,
    method: str,
    path_and_query: str,
    body: bytes,
) -> tuple[PaidRequest, Scheme]:
    """The client's payment envelope ``raw`` (decoded JSON, x402 v2 ``PaymentPayload`` or v1),
    checked against ``quote``: which scheme, and that it accepted our terms (network, asset,
    payee, amount). ``method``, ``path_and_query`` and ``body`` are what an ``aep2`` mandate
    must be bound to.

    Raises ``PaymentError`` naming the field: ``unsupported_version``, ``invalid_payload``,
    ``network_mismatch``, ``unsupported_scheme``, ``asset_mismatch``, ``payee_mismatch``,
    ``amount_mismatch``.
    """
    version = raw.get("x402Version")
    if version not in (1, 2) or isinstance(version, bool):
        raise PaymentError(ErrorCode.UNSUPPORTED_VERSION, f"x402Version: {version!r} (supported: 1, 2)")
    envelope: PaymentPayload | PaymentPayloadV1
    try:
        envelope = PaymentPayload.model_validate(raw) if version == 2 else PaymentPayloadV1.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"{where}: {error['msg']}") from None
    if isinstance(envelope, PaymentPayload):
        name, network = envelope.accepted.scheme, envelope.accepted.network
        networks = {config.network}
    else:
        name, network = envelope.scheme, envelope.network
        networks = {v1_network(config.chain_id), caip2(config.chain_id)}
    if network not in networks:
        raise PaymentError(ErrorCode.NETWORK_MISMATCH, f"network: {network!r} is not {sorted(networks)[0]}")
    scheme = schemes.get(name)
    requirements = quote.requirement(name) if scheme is not None else None
    if scheme is None or requirements is None:
        offered = ", ".join(schemes)
        raise PaymentError(ErrorCode.UNSUPPORTED_SCHEME, f"scheme: {name!r} (accepted: {offered})")
    if isinstance(envelope, PaymentPayload):
        accepted = envelope.accepted
        if accepted.asset.lower() != requirements.asset.lower():
            raise PaymentError(ErrorCode.ASSET_MISMATCH, f"accepted.asset: not {requirements.asset}")
        if accepted.pay_to.lower() != requirements.pay_to.lower():
            raise PaymentError(ErrorCode.PAYEE_MISMATCH, f"accepted.payTo: not {requirements.pay_to}")
        if accepted.amount != requirements.amount:
            raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"accepted.amount: not {requirements.amount}")
    paid = PaidRequest(
        envelope=envelope,
        requirements=requirements,
        resource=quote.resource,
        chain_id=config.chain_id,
        method=method,
        path_and_query=path_and_query,
        body=body,
    )
    return paid, scheme


async def settle(scheme: Scheme, paid: PaidRequest, accepted: AcceptedPayment) -> SettleResponse:
    """``scheme.settle`` of a served payment; when a dependency raises, the outcome is unknown
    (the facilitator may yet mine it) and the answer is a failed ``SettleResponse`` with
    ``unexpected_settle_error`` naming the exception, so no transport sends unpaid content."""
    try:
        return await scheme.settle(paid, accepted)
    except Exception as exc:
        logger.warning("settlement of %s failed: %r", accepted.payment_id, exc)
        return SettleResponse(
            success=False,
            error_reason=ErrorCode.UNEXPECTED_SETTLE_ERROR,
            error_message=type(exc).__name__,
            payer=accepted.payer,
            network=paid.network,
        )
