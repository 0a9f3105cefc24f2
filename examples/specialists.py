"""Specialised service agents of the demo's economy: research, copywriting and design, each a
payee service behind the x402 gateway with its own priced routes and its own payee address.

One module, three services: ``AEP2_SPECIALIST`` picks which one a process serves::

    AEP2_SPECIALIST=research AEP2_DEPLOYMENT=… AEP2_PAYEE=0x… AEP2_PROCESSOR=0x… \\
        uvicorn examples.specialists:app

The other settings are the example payee service's (``examples.payee_service``). The answers
are deterministic stand-ins for an agent's work (derived from a hash of the request), so a
run can be replayed; what the demo shows is how the work is hired and paid.

The research agent also sells ``GET /v1/trading/signals``: nothing a marketing mission needs,
so a co-wallet whose owner denies off-mission spends refuses to pay for it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aep2.deployment import Deployment
from gateway.pricing import PricedRoute

from .payee_service import gateway_app, gateway_settings, health, start_process

__all__ = ["SPECIALISTS", "Offer", "create_app", "start_specialist"]

Handler = Callable[[Request], Awaitable[JSONResponse]]


@dataclass(frozen=True)
class Offer:
    """One priced route of a specialist: ``price`` in base units (6 decimals: 10_000 = $0.01)."""

    method: str
    path: str
    price: int
    description: str
    handler: Handler


def _pick(seed: bytes, options: list[str], k: int) -> list[str]:
    return [options[seed[j] % len(options)] for j in range(k)]


async def _subject(request: Request) -> tuple[str, bytes]:
    """What the request is about (the ``topic`` query or JSON field) and a seed derived from it."""
    topic = request.query_params.get("topic", "")
    if request.method == "POST":
        try:
            body = await request.json()
            topic = str(body.get("topic", topic)) if isinstance(body, dict) else topic
        except ValueError:
            pass
    topic = topic[:200] or "product"
    return topic, hashlib.sha256(f"{request.url.path}|{topic}".encode()).digest()


async def market(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    segment = request.query_params.get("segment", "early adopters")
    return JSONResponse({"topic": topic, "segment": segment, "size_k": 50 + seed[0] * 4,
                         "growth_pct": 3 + seed[1] % 25, "channels": _pick(seed, ["search", "social", "video", "podcasts", "newsletters"], 2)})


async def competitors(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    names = [f"{w}{n}" for w, n in zip(_pick(seed, ["Acme", "Globex", "Initech", "Umbrella", "Hooli"], 3), seed[3:6])]
    return JSONResponse({"topic": topic, "competitors": [{"name": n, "share_pct": 5 + b % 30} for n, b in zip(names, seed[6:9])]})


async def deep_report(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    return JSONResponse({"topic": topic, "pages": 40 + seed[0] % 20, "findings": [
        f"finding {k + 1}: {w}" for k, w in enumerate(_pick(seed, ["price-sensitive", "mobile-first", "trust matters",
                                                                     "video converts", "bundles sell"], 4))]})


async def trading_signals(request: Request) -> JSONResponse:
    _topic, seed = await _subject(request)
    return JSONResponse({"signals": _pick(seed, ["buy", "sell", "hold"], 3)})


async def headlines(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    verbs = _pick(seed, ["Meet", "Discover", "Upgrade to", "Say hello to", "Try"], 3)
    return JSONResponse({"topic": topic, "headlines": [f"{v} {topic}" for v in verbs]})


async def ad_copy(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    hook = _pick(seed, ["faster", "simpler", "smarter", "friendlier"], 1)[0]
    return JSONResponse({"topic": topic, "copy": f"{topic}: the {hook} way to get it done. Try it today."})


async def logo(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    return JSONResponse({"topic": topic, "svg": f"<svg viewBox='0 0 64 64'><circle cx='32' cy='32' r='{16 + seed[0] % 16}' "
                                                f"fill='#{seed[1:4].hex()}'/></svg>"})


async def banner(request: Request) -> JSONResponse:
    topic, seed = await _subject(request)
    size = request.query_params.get("size", "1200x628")
    return JSONResponse({"topic": topic, "size": size, "palette": [f"#{seed[k:k + 3].hex()}" for k in (0, 3, 6)]})


#: The three specialists and their offers. Paths name their trade, so the co-wallet's
#: on-mission check can tell a marketing spend from something else.
SPECIALISTS: dict[str, list[Offer]] = {
    "research": [
        Offer("GET", "/v1/research/market", 20_000, "Market research: size, growth and channels of a segment", market),
        Offer("GET", "/v1/research/competitors", 30_000, "Research on the competitors of a product", competitors),
        Offer("GET", "/v1/research/deep-report", 300_000, "Deep market research report (premium)", deep_report),
        Offer("GET", "/v1/trading/signals", 5_000, "Trading signals", trading_signals),
    ],
    "copywriting": [
        Offer("POST", "/v1/copywriting/headlines", 10_000, "Three campaign headlines for a product", headlines),
        Offer("POST", "/v1/copywriting/ad-copy", 25_000, "Ad copy for a product", ad_copy),
    ],
    "design": [
        Offer("POST", "/v1/design/logo", 60_000, "A logo design (SVG)", logo),
        Offer("POST", "/v1/design/banner", 40_000, "A campaign banner design", banner),
    ],
}


def create_app(kind: str, deployment: Deployment, payee: str, store_path: str, **gateway: object) -> Starlette:
    """The ``kind`` specialist (a key of ``SPECIALISTS``) behind the gateway, paying ``payee``;
    ``gateway``: the keyword arguments of ``examples.payee_service.gateway_app``. Raises
    ``ValueError`` for an unknown ``kind``."""
    if kind not in SPECIALISTS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(SPECIALISTS)}")
    offers = SPECIALISTS[kind]
    routes = [Route(o.path, o.handler, methods=[o.method]) for o in offers] + [Route("/health", health)]
    priced = [PricedRoute(o.method, o.path, o.price, o.description, tags=[kind]) for o in offers]
    return gateway_app(deployment, payee, store_path, routes, priced, service=f"{kind} agent", **gateway)  # type: ignore[arg-type]


def start_specialist(kind: str, port: int, **settings: object) -> tuple[subprocess.Popen[bytes], str]:
    """Run the ``kind`` specialist under uvicorn on ``127.0.0.1:port``; ``settings``: the keyword
    arguments of ``examples.payee_service.start_process`` (deployment, payee, store, processor)."""
    return start_process(port, app="examples.specialists:app", name=f"{kind} agent",
                         env={"AEP2_SPECIALIST": kind}, **settings)  # type: ignore[arg-type]


def __getattr__(name: str) -> Starlette:
    # `uvicorn examples.specialists:app` builds the app from the environment on first access.
    if name == "app":
        return create_app(os.environ.get("AEP2_SPECIALIST", ""), **gateway_settings())  # type: ignore[arg-type]
    raise AttributeError(name)
