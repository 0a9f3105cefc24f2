"""Discovery documents: ``GET /skill.md`` (for humans and agents) and ``GET /skill.json``.

Both list the priced routes with their prices, the schemes accepted and how to pay, so an
agent can pay in Intent Mode (mandate on the first request) without a 402 round trip.
"""

from __future__ import annotations

from typing import Any, Sequence

from .config import GatewayConfig
from .pricing import PricedRoute

__all__ = ["discovery_json", "discovery_markdown"]


def discovery_json(config: GatewayConfig, routes: Sequence[PricedRoute], service: str) -> dict[str, Any]:
    """Machine-readable discovery: ``{"service", "x402Version", "network", "asset", "payTo",
    "schemes", "aep2": {...}, "routes": [{"method", "path", "price", "description"}]}``.
    ``aep2`` is self-contained (network, asset, payTo, settlement, processor, …): with a
    route's price it is the ``accepts`` entry an Intent Mode client pays without a 402 round
    trip. ``aep2.processor`` is the address an intent must name as its ``processor``, the payer
    must authorise on the Settlement contract and must escrow funds with (``deposit(asset,
    processor, amount)``: only that account counts); ``aep2.settlementWindow`` the contract's
    grace in seconds (``null``: unknown). ``price`` is a decimal string of base units, or
    ``null`` when computed per request."""
    return {
        "service": service,
        "x402Version": 2,
        "network": config.network,
        "asset": config.asset,
        "payTo": config.payee,
        "schemes": ["aep2", "exact"] if config.exact_enabled else ["aep2"],
        "aep2": {
            "network": config.network,
            "asset": config.asset,
            "payTo": config.payee,
            "settlement": config.settlement,
            "processor": config.processor,
            "chainId": config.chain_id,
            "minDeadlineSeconds": config.min_deadline_seconds,
            "settlementWindow": config.settlement_window,
            "header": "PAYMENT-SIGNATURE",
        },
        "exact": {"name": config.token_name, "version": config.token_version} if config.exact_enabled else None,
        "routes": [
            {
                "method": route.method,
                "path": route.path,
                "price": None if route.fixed_price is None else str(route.fixed_price),
                "description": route.description,
                "mimeType": route.mime_type,
            }
            for route in routes
        ],
    }


def discovery_markdown(config: GatewayConfig, routes: Sequence[PricedRoute], service: str) -> str:
    """The same as Markdown, with payment instructions."""
    lines = [
        f"# {service}",
        "",
        "Paid API behind an x402 gateway. Prices are in base units of the asset "
        f"`{config.asset}` on `{config.network}`, paid to `{config.payee}`.",
        "",
        "## Priced routes",
        "",
        "| method | path | price (base units) | description |",
        "|---|---|---|---|",
    ]
    for route in routes:
        price = "per request" if route.fixed_price is None else str(route.fixed_price)
        lines.append(f"| {route.method} | `{route.path}` | {price} | {route.description} |")
    lines += [
        "",
        "## How to pay",
        "",
        "- An unpaid request answers **402** with the x402 v2 `PAYMENT-REQUIRED` header "
        "(base64 JSON; the v1 form is the body). Retry with `PAYMENT-SIGNATURE` "
        "(v1: `X-PAYMENT`) carrying one of the offers in `accepts`.",
        f"- Scheme `aep2` (deferred, no chain call per request): sign an AEP2 intent (EIP-712, "
        f"domain `AEP2 Settlement` v1, chain {config.chain_id}, contract `{config.settlement}`) "
        f"once, naming `processor` = `{config.processor}` (intents naming another processor are "
        "refused), then one EdDSA-Poseidon mandate per call with the session key; nonces are "
        "one-time values per intent, in any order. Mandates settle in batches with one Groth16 proof.",
        f"- Before paying: escrow funds in the Settlement contract with this processor "
        f"(`deposit({config.asset}, {config.processor}, amount)`). Escrow is held per payer, token "
        "and processor: this gateway counts only your account with this processor, and funds "
        "deposited with another processor are not counted. Then "
        f"authorise the processor (`setProcessor({config.processor}, true)`). Calls are accepted "
        "against that account's balance minus its pending withdrawal; a revoked intent or a "
        "withdrawn authorisation is refused from then on.",
    ]
    if config.exact_enabled:
        lines.append(
            f"- Scheme `exact` (standard x402 clients): EIP-3009 `transferWithAuthorization` on the "
            f"token (EIP-712 domain `{config.token_name}` v{config.token_version})."
        )
    lines += [
        "- The answer carries `PAYMENT-RESPONSE` with a receipt; `GET /payments/<paymentId>` shows "
        "its settlement status.",
        "- Machine-readable form: `GET /skill.json`.",
        "",
    ]
    return "\n".join(lines)
