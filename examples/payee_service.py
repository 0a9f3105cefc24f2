"""An example payee: a small text and data API, priced per call behind the x402 gateway.

Run it on a deployment (``make demo`` writes one) with one uvicorn command::

    AEP2_DEPLOYMENT=build/deployment.json AEP2_PAYEE=0x… AEP2_PROCESSOR=0x… uvicorn examples.payee_service:app

Routes: ``GET /v1/forecast/{city}`` (fixed price), ``POST /v1/sentiment`` (fixed price),
``GET /v1/primes?n=`` (price grows with ``n``), ``GET /health`` (free). Settings from the
environment: ``AEP2_DEPLOYMENT`` (deployment file), ``AEP2_PAYEE`` (address paid),
``AEP2_STORE`` (SQLite file, default ``payments.sqlite``, or the ``postgresql://`` URL of a
store shared by several replicas of this service), ``AEP2_PROCESSOR`` (the
settlement processor's address, required: payers' intents must name it), and for x402
``exact`` payments either ``AEP2_FACILITATOR_URL`` (any x402 facilitator, e.g. ours:
``uvicorn --factory facilitator.app:from_env``) or ``AEP2_FACILITATOR_KEY`` (a facilitator
in-process, sending the transfers from that key); neither: ``aep2`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import subprocess
from typing import Any, AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aep2.deployment import Deployment
from aep2.stores import create_store
from gateway.chain import ChainCache, Web3ChainReader
from gateway.config import GatewayConfig
from aep2.x402.facilitator import Facilitator
from facilitator import ExactEvmFacilitator
from gateway.facilitator_client import HTTPFacilitatorClient
from gateway.middleware import PaymentMiddleware
from gateway.pricing import PricedRoute

from .processes import start_uvicorn, stop_process

__all__ = ["create_app", "gateway_app", "gateway_settings", "start_process", "stop_process", "ROUTES"]

_POSITIVE = {"good", "great", "excellent", "love", "fast", "happy", "correct", "pleasant"}
_NEGATIVE = {"bad", "poor", "slow", "hate", "broken", "sad", "wrong", "awful"}


async def forecast(request: Request) -> JSONResponse:
    city = request.path_params["city"]
    seed = hashlib.sha256(city.lower().encode()).digest()
    days = [{"day": d, "high_c": 10 + seed[d] % 20, "rain_pct": seed[d + 7] % 100} for d in range(3)]
    return JSONResponse({"city": city, "days": days})


async def sentiment(request: Request) -> JSONResponse:
    try:
        text = (await request.json())["text"]
        if not isinstance(text, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "body must be JSON {\"text\": string}"}, status_code=400)
    words = [w.strip(".,!?").lower() for w in text.split()]
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    return JSONResponse({"score": score, "label": "positive" if score > 0 else "negative" if score < 0 else "neutral"})


def _primes_n(request: Request) -> int:
    try:
        n = int(request.query_params.get("n", "100"))
    except ValueError:
        n = 100
    return min(max(n, 2), 100_000)


async def primes(request: Request) -> JSONResponse:
    n = _primes_n(request)
    sieve = bytearray([1]) * (n + 1)
    sieve[0:2] = b"\x00\x00"
    for k in range(2, math.isqrt(n) + 1):
        if sieve[k]:
            sieve[k * k :: k] = bytearray(len(sieve[k * k :: k]))
    found = [k for k in range(n + 1) if sieve[k]]
    return JSONResponse({"n": n, "count": len(found), "largest": found[-1]})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


#: Prices in base units of the asset (MockUSDC: 6 decimals, so 1000 = 0.001 USDC).
ROUTES = [
    PricedRoute(
        "GET",
        "/v1/forecast/{city}",
        1_000,
        "3-day forecast for a city",
        output_schema={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "array", "items": {"type": "object"}}},
        },
        tags=["weather"],
    ),
    PricedRoute(
        "POST",
        "/v1/sentiment",
        2_000,
        "Sentiment of a short English text",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        input_example={"text": "great and fast"},
        output_schema={
            "type": "object",
            "properties": {"score": {"type": "integer"}, "label": {"enum": ["positive", "negative", "neutral"]}},
        },
        tags=["nlp"],
    ),
    PricedRoute(
        "GET",
        "/v1/primes",
        lambda request: 500 + _primes_n(request) // 100,
        "Primes up to n (500 + n/100)",
        input_schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": 2, "maximum": 100000}}},
        tags=["math"],
    ),
]


def create_app(deployment: Deployment, payee: str, store_path: str, *, processor: str, **options: Any) -> Starlette:
    """The example API behind ``PaymentMiddleware`` on ``deployment``, paying ``payee``,
    settled by ``processor`` (its address); ``store_path`` the SQLite payment store.

    ``options``, as ``gateway_app``: ``exact`` payments are verified and settled by the
    facilitator at ``facilitator_url``, or else by one in-process sending from
    ``facilitator_key`` (neither: ``exact`` is not offered); ``min_deadline_seconds``;
    ``chain_refresh_seconds``: how often cached chain state is re-read (default: the
    ``ChainCache`` default). Raises ``ValueError`` naming the field for a missing or zero
    ``processor`` or another bad setting.
    """
    routes = [
        Route("/v1/forecast/{city}", forecast),
        Route("/v1/sentiment", sentiment, methods=["POST"]),
        Route("/v1/primes", primes),
        Route("/health", health),
    ]
    return gateway_app(deployment, payee, store_path, routes, ROUTES, service="Example data API", processor=processor,
                       **options)


def gateway_app(
    deployment: Deployment,
    payee: str,
    store_path: str,
    routes: list[Route],
    priced: list[PricedRoute],
    *,
    service: str,
    processor: str,
    facilitator_key: str | None = None,
    facilitator_url: str | None = None,
    min_deadline_seconds: int = 300,
    chain_refresh_seconds: float | None = None,
) -> Starlette:
    """Starlette ``routes`` behind ``PaymentMiddleware`` charging ``priced`` on ``deployment``,
    paying ``payee``, settled by ``processor`` (its address); ``store_path`` the payment store's
    location, a SQLite file or a ``postgresql://`` URL (``aep2.stores.create_store``);
    ``service`` names the API in its 402s and discovery.

    ``exact`` payments are verified and settled by the facilitator at ``facilitator_url``, or
    else by one in-process sending from ``facilitator_key`` (neither: ``exact`` is not offered).
    ``chain_refresh_seconds``: how often cached chain state is re-read (default: the
    ``ChainCache`` default). Raises ``ValueError`` naming the field for a missing or zero
    ``processor`` or another bad setting.
    """
    config = GatewayConfig.from_deployment(
        deployment, payee, processor=processor, min_deadline_seconds=min_deadline_seconds
    )
    store = create_store(store_path)
    chain = ChainCache(
        Web3ChainReader(deployment.rpc_url, deployment.settlement),
        refresh_seconds=chain_refresh_seconds,
        max_staleness=config.max_chain_staleness,
    )

    facilitator: Facilitator | None = None
    if facilitator_url:
        facilitator = HTTPFacilitatorClient(facilitator_url)
    elif facilitator_key:
        facilitator = ExactEvmFacilitator(deployment.rpc_url, facilitator_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if facilitator is not None:
                await facilitator.aclose()
            await chain.aclose()
            await store.close()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                PaymentMiddleware,
                config=config,
                routes=priced,
                store=store,
                chain=chain,
                facilitator=facilitator,
                service=service,
            )
        ],
        lifespan=lifespan,
    )


def start_process(
    port: int,
    *,
    deployment: str | os.PathLike[str],
    payee: str,
    store: str | os.PathLike[str],
    processor: str,
    facilitator_key: str | None = None,
    facilitator_url: str | None = None,
    uvicorn_args: tuple[str, ...] = (),
    timeout: float = 60.0,
    app: str = "examples.payee_service:app",
    name: str = "payee service",
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run this service (or another gateway ``app`` configured the same way, with ``env`` on
    top) under ``uvicorn`` in a child process on ``127.0.0.1:port``, configured through the
    environment as in production (``store``: a SQLite file or a ``postgresql://`` URL, as
    ``AEP2_STORE``; ``processor``: the settlement processor's address, as ``AEP2_PROCESSOR``;
    ``facilitator_url`` / ``facilitator_key`` as ``AEP2_FACILITATOR_URL`` /
    ``AEP2_FACILITATOR_KEY``); returns the process and its base URL once ``GET /health``
    answers 200. Raises ``RuntimeError`` as ``start_uvicorn``.
    """
    settings = {
        "AEP2_DEPLOYMENT": str(deployment),
        "AEP2_PAYEE": payee,
        "AEP2_STORE": str(store),
        "AEP2_PROCESSOR": processor,
        "AEP2_FACILITATOR_KEY": facilitator_key or "",
        "AEP2_FACILITATOR_URL": facilitator_url or "",
        **(env or {}),
    }
    return start_uvicorn(
        app,
        port,
        env=settings,
        ready_path="/health",
        name=name,
        uvicorn_args=uvicorn_args,
        timeout=timeout,
    )


def gateway_settings() -> dict[str, Any]:
    """The gateway's settings from the environment (see the module's docstring), as keyword
    arguments of ``create_app`` / ``gateway_app``: ``deployment``, ``payee``, ``store_path``,
    ``processor``, ``facilitator_key``, ``facilitator_url``. Raises ``RuntimeError`` naming a
    missing variable."""
    payee = os.environ.get("AEP2_PAYEE")
    if not payee:
        raise RuntimeError("set AEP2_PAYEE to the address the service is paid to")
    processor = os.environ.get("AEP2_PROCESSOR")
    if not processor:
        raise RuntimeError("set AEP2_PROCESSOR to the settlement processor's address (payers' intents name it)")
    return {
        "deployment": Deployment.load(),
        "payee": payee,
        "store_path": os.environ.get("AEP2_STORE", "payments.sqlite"),
        "processor": processor,
        "facilitator_key": os.environ.get("AEP2_FACILITATOR_KEY") or None,
        "facilitator_url": os.environ.get("AEP2_FACILITATOR_URL") or None,
    }


def __getattr__(name: str) -> Starlette:
    # `uvicorn examples.payee_service:app` builds the app from the environment on first access.
    if name == "app":
        return create_app(**gateway_settings())
    raise AttributeError(name)
