"""Discovery documents: ``GET /skill.md`` (for humans and agents) and ``GET /skill.json``.

Both list the priced routes with their prices, the schemes accepted and how to pay, so an
agent can pay in Intent Mode (mandate on the first request) without a 402 round trip, and
how to call each route (input and output schemas, examples, tags: the same fields the x402
bazaar extension publishes, ``gateway/bazaar.py``). Routes marked ``discoverable=False``
are left out.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .bazaar import QUERY_METHODS
from .config import GatewayConfig
from .pricing import PricedRoute

__all__ = ["discovery_json", "discovery_markdown"]


def discovery_json(
    config: GatewayConfig, routes: Sequence[PricedRoute], service: str, *, exact_domain: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Machine-readable discovery: ``{"service", "x402Version", "network", "asset", "payTo",
    "schemes", "aep2": {...}, "routes": [{"method", "path", "price", "description", "mimeType",
    "tags", "inputSchema", "inputExample", "bodyType", "outputSchema", "outputExample"}]}``.
    ``aep2`` is self-contained (network, asset, payTo, settlement, processor, …): with a
    route's price it is the ``accepts`` entry an Intent Mode client pays without a 402 round
    trip. ``aep2.processor`` is the address an intent must name as its ``processor``, the payer
    must authorise on the Settlement contract and must escrow funds with (``deposit(asset,
    processor, amount)``: only that account counts); ``aep2.settlementWindow`` the contract's
    grace in seconds (``null``: unknown). ``price`` is a decimal string of base units, or
    ``null`` when computed per request. ``inputSchema`` is the JSON Schema of the query
    parameters (GET, HEAD, DELETE) or of the body (other methods, encoded as ``bodyType``:
    ``json``, ``form-data`` or ``text``; ``null`` for query methods); the schemas and
    examples are ``null`` when the route declares none. Only discoverable routes are
    listed. ``exact_domain``: the token's EIP-712 ``(name, version)`` when ``exact`` is
    offered (``None``: ``aep2`` only)."""
    return {
        "service": service,
        "x402Version": 2,
        "network": config.network,
        "asset": config.asset,
        "payTo": config.payee,
        "schemes": ["exact", "aep2"] if exact_domain else ["aep2"],
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
        "exact": {"name": exact_domain[0], "version": exact_domain[1]} if exact_domain else None,
        "routes": [
            {
                "method": route.method,
                "path": route.path,
                "price": None if route.fixed_price is None else str(route.fixed_price),
                "description": route.description,
                "mimeType": route.mime_type,
                "tags": list(route.tags),
                "inputSchema": route.input_schema,
                "inputExample": route.input_example,
                "bodyType": None if route.method in QUERY_METHODS else route.body_type,
                "outputSchema": route.output_schema,
                "outputExample": route.output_example,
            }
            for route in routes
            if route.discoverable
        ],
    }


def discovery_markdown(
    config: GatewayConfig, routes: Sequence[PricedRoute], service: str, *, exact_domain: tuple[str, str] | None = None
) -> str:
    """The same as Markdown, with payment instructions and, for routes that declare them,
    their tags, input and output schemas and examples."""
    routes = [route for route in routes if route.discoverable]
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
    details = [line for route in routes for line in _route_details(route)]
    if details:
        lines += ["", "## How to call them", *details]
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
    if exact_domain:
        lines.append(
            f"- Scheme `exact` (standard x402 clients): EIP-3009 `transferWithAuthorization` on the "
            f"token (EIP-712 domain `{exact_domain[0]}` v{exact_domain[1]}), settled on chain before "
            "the answer is sent."
        )
    lines += [
        "- The answer carries `PAYMENT-RESPONSE` with a receipt; `GET /payments/<paymentId>` shows "
        "its settlement status.",
        "- Machine-readable form: `GET /skill.json`; x402 bazaar listing: `GET /discovery/resources`.",
        "",
    ]
    return "\n".join(lines)


def _route_details(route: PricedRoute) -> list[str]:
    """A ``### METHOD path`` section for a route that declares tags, schemas or examples."""
    query = route.method in QUERY_METHODS
    parts: list[tuple[str, Any]] = [
        ("Query parameters (JSON Schema)" if query else f"Body, {route.body_type} (JSON Schema)", route.input_schema),
        ("Example query parameters" if query else "Example body", route.input_example),
        (f"Response, {route.mime_type} (JSON Schema)", route.output_schema),
        ("Example response", route.output_example),
    ]
    blocks = [
        line
        for title, value in parts
        if value is not None
        for line in (f"{title}:", "", "```json", json.dumps(value, indent=2), "```", "")
    ]
    if not blocks and not route.tags:
        return []
    lines = ["", f"### {route.method} `{route.path}`", ""]
    if route.tags:
        lines += ["Tags: " + ", ".join(f"`{tag}`" for tag in route.tags), ""]
    return lines + blocks[:-1]
