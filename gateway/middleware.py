"""``PaymentMiddleware``: x402 payments in front of any ASGI app.

A plain ASGI class in the shape of Starlette's ``cors.py``. It passes non-HTTP scopes and
unpriced routes straight through and answers an unpaid, malformed or refused payment with
a 402 (400 when malformed) quoting the price. A verified payment is reserved, then the app
serves the request:

* ``exact`` (and any request carrying a ``payment-identifier``): the app's response is held
  back, the payment settled on chain through the facilitator, and only then is the
  response sent, with the transaction in ``PAYMENT-RESPONSE``; a failed settlement answers
  402 with a failure ``PAYMENT-RESPONSE`` instead of the content.
* ``aep2``: the response streams through unbuffered with its receipt; the processor
  settles the reserved mandate later (docs/PROTOCOL.md §7).

A response ≥ 400, or an app that raises, settles nothing and releases the reservation. A
``HEAD`` on a priced route is answered with the quote and never charged. Paid responses are
``Cache-Control: private`` and every answer ``Vary``-s on the payment headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Sequence

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aep2.errors import ErrorCode, PaymentError
from aep2.store import BatchRecord, CachedResponse, PaymentStore
from aep2.x402 import (
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    canonical_json,
    decode_header,
    encode_header,
)
from aep2.x402.facilitator import Facilitator
from aep2.x402.models import PaymentPayload, ResourceInfo, SettleResponse

from .bazaar import (
    BAZAAR,
    bazaar_extension,
    discovery_item,
    discovery_resources,
    parse_discovery_query,
    resource_metadata,
    route_template,
)
from .chain import ChainCache, ChainReader
from .config import GatewayConfig
from .discovery import discovery_json, discovery_markdown
from .pricing import PricedRoute
from .payment import open_schemes, parse_payment, settle
from .quote import EXPOSED_HEADERS, VARY, Quote, payment_required_response
from .schemes.aep2 import AEP2Scheme
from .schemes.base import AcceptedPayment, PaidRequest, Scheme
from .schemes.exact import ExactScheme

__all__ = ["PaymentMiddleware", "PAYMENT_IDENTIFIER"]

logger = logging.getLogger("gateway")

#: x402 discovery (bazaar) listing of this service's routes.
DISCOVERY_PATH = "/discovery/resources"
_OWN_PATHS = frozenset({"/skill.md", "/skill.json", DISCOVERY_PATH})
#: Largest request body the gateway reads to bind a mandate to it (bytes).
MAX_BODY_BYTES = 1 << 20
#: x402 ``payment-identifier`` extension key (``specs/extensions/payment_identifier.md``).
PAYMENT_IDENTIFIER = "payment-identifier"
_PAYMENT_ID_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "required": {"type": "boolean"},
        "id": {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[a-zA-Z0-9_-]+$"},
    },
    "required": ["required"],
}


class PaymentMiddleware:
    """Charge for ``routes`` of ``app`` in ``config.asset``, paid to ``config.payee``.

    ``store``: where reservations live. ``chain``: a ``ChainReader`` (cached here, never
    acting on state older than ``config.max_chain_staleness``) or a ready ``ChainCache``.
    ``facilitator``: verifies and settles ``exact`` payments (``facilitator.ExactEvmFacilitator``
    in-process, or ``gateway.facilitator_client.HTTPFacilitatorClient`` for any facilitator
    by URL); ``None`` offers ``aep2`` only. ``service``: name shown in discovery.
    ``payment_identifier_required``: refuse payments without an x402 ``payment-identifier``.

    Serves ``/skill.md``, ``/skill.json``, the x402 discovery listing ``/discovery/resources``
    and ``/payments/{paymentId}``. Start-up (the ASGI
    lifespan, or the first priced request without one) opens the store and reads the
    token's EIP-712 domain; a domain that contradicts ``config`` fails start-up.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: GatewayConfig,
        routes: Sequence[PricedRoute],
        store: PaymentStore,
        chain: ChainReader | ChainCache,
        facilitator: Facilitator | None = None,
        service: str = "x402 service",
        payment_identifier_required: bool = False,
    ) -> None:
        self.app = app
        self.config = config
        self.routes = list(routes)
        self.store = store
        self.chain = (
            chain if isinstance(chain, ChainCache) else ChainCache(chain, max_staleness=config.max_chain_staleness)
        )
        self.facilitator = facilitator
        self.service = service
        self.payment_identifier_required = payment_identifier_required
        self.aep2 = AEP2Scheme(config, store, self.chain)
        #: Schemes by name, in the order offered in ``accepts`` (``exact`` first: every x402
        #: client understands it); filled at start-up.
        self.schemes: dict[str, Scheme] = {}
        self._started = False
        self._start_lock = asyncio.Lock()
        self._started_at = int(time.time())
        # Built once: the bazaar declaration and resource metadata of each discoverable route.
        self._bazaar = {id(r): bazaar_extension(r) for r in self.routes if r.discoverable}
        self._metadata = {id(r): resource_metadata(r, service) for r in self.routes}
        self._skill_json = b""
        self._skill_md = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and (path in _OWN_PATHS or path.startswith("/payments/")):
            await self._serve_own(scope, receive, send)
            return
        route = next((r for r in self.routes if r.matches(method, path)), None)
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.startup()
        except Exception as exc:
            logger.error("payment gateway cannot start: %s", exc)
            response = JSONResponse({"error": f"{ErrorCode.CHAIN_UNAVAILABLE}: gateway not started: {exc}"}, 503)
            await response(scope, receive, send)
            return
        await _PaidRequest(self, route, scope, receive)(send)

    async def startup(self) -> None:
        """Open the store and set up the schemes (idempotent).

        Raises ``ValueError`` naming ``token_name`` / ``token_version`` when the token's EIP-712
        domain contradicts the config, or what the store or chain raise.
        """
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            self.schemes = await open_schemes(self.config, self.store, self.facilitator, self.aep2)
            exact = self.schemes.get("exact")
            domain = (exact.token_name, exact.token_version) if isinstance(exact, ExactScheme) else None
            self._skill_json = json.dumps(
                discovery_json(self.config, self.routes, self.service, exact_domain=domain)
            ).encode()
            self._skill_md = discovery_markdown(self.config, self.routes, self.service, exact_domain=domain)
            self._started = True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Start with the app, so a bad token domain stops the server before it takes traffic.
        failed: list[str] = []

        async def receive_startup() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not failed:
                try:
                    await self.startup()
                except Exception as exc:
                    failed.append(f"payment gateway: {exc}")
                    await send({"type": "lifespan.startup.failed", "message": failed[0]})
                    raise
            return message

        await self.app(scope, receive_startup, send)

    async def _serve_own(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        response: Response
        try:
            await self.startup()
        except Exception as exc:
            response = JSONResponse({"error": f"{ErrorCode.CHAIN_UNAVAILABLE}: gateway not started: {exc}"}, 503)
            await response(scope, receive, send)
            return
        if path == "/skill.json":
            response = Response(self._skill_json, media_type="application/json")
        elif path == "/skill.md":
            response = PlainTextResponse(self._skill_md, media_type="text/markdown")
        elif path == DISCOVERY_PATH:
            response = self._discovery(Request(scope))
        else:
            response = await self._receipt(path.removeprefix("/payments/"))
        await response(scope, receive, send)

    def _discovery(self, request: Request) -> Response:
        """x402 ``GET /discovery/resources`` (specification §8.1, bazaar): this service's
        discoverable routes with a fixed price, with their ``accepts``."""
        try:
            query = parse_discovery_query(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": f"{ErrorCode.INVALID_PAYLOAD}: {exc}"}, status_code=400)
        base = str(request.base_url).rstrip("/")
        items = [
            discovery_item(
                base + route_template(route),
                [scheme.requirements(route.fixed_price).to_wire() for scheme in self.schemes.values()],
                route,
                self.service,
                self._started_at,
            )
            for route in self.routes
            if route.discoverable and route.fixed_price is not None
        ]
        return JSONResponse(discovery_resources(items, **query._asdict()))

    async def _receipt(self, payment_id: str) -> Response:
        payment_id = payment_id.lower()
        record = await self.store.get_mandate(payment_id)
        if record is not None:
            batch = await self.store.get_batch(record.batch_id) if record.batch_id is not None else None
            return JSONResponse(
                {
                    "paymentId": record.payment_id,
                    "scheme": "aep2",
                    "status": record.status,
                    "payer": record.payer,
                    "payee": record.mandate.payee_checksum,
                    "amount": str(record.mandate.amount),
                    "nonce": str(record.mandate.nonce),
                    "transaction": record.tx_hash or "",
                    "reason": record.reason,
                    "network": self.config.network,
                    "batch": _batch_json(batch) if batch is not None else None,
                }
            )
        for exact in await self.store.exact_payments():
            if exact.nonce == payment_id:
                return JSONResponse(
                    {
                        "paymentId": exact.nonce,
                        "scheme": "exact",
                        "status": exact.status,
                        "payer": exact.payer,
                        "payee": exact.payee,
                        "amount": str(exact.amount),
                        "transaction": exact.tx_hash or "",
                        "reason": exact.reason,
                        "network": self.config.network,
                    }
                )
        return JSONResponse({"error": "unknown payment id"}, status_code=404)

    def quote(self, amount: int, url: str, route: PricedRoute) -> Quote:
        """The quote of ``route`` at ``amount`` base units for ``url``, declaring the
        ``payment-identifier`` and (for a discoverable route) ``bazaar`` extensions."""
        extensions: dict[str, Any] = {
            PAYMENT_IDENTIFIER: {"info": {"required": self.payment_identifier_required}, "schema": _PAYMENT_ID_SCHEMA}
        }
        if id(route) in self._bazaar:
            extensions[BAZAAR] = self._bazaar[id(route)]
        resource = ResourceInfo.model_validate(
            {"url": url, "description": route.description, "mimeType": route.mime_type, **self._metadata[id(route)]}
        )
        return Quote([scheme.requirements(amount) for scheme in self.schemes.values()], resource, self.config.chain_id, extensions)


class _PaidRequest:
    """Per-request state of one priced request (never stored on the shared middleware)."""

    def __init__(self, gateway: PaymentMiddleware, route: PricedRoute, scope: Scope, receive: Receive) -> None:
        self.gateway = gateway
        self.route = route
        self.scope = scope
        self.receive = receive
        self.body = b""
        self._body_sent = True

    async def __call__(self, send: Send) -> None:
        gateway = self.gateway
        request = Request(self.scope, self.receive)
        header_name = PAYMENT_SIGNATURE_HEADER
        header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        if header is None:
            header = request.headers.get(X_PAYMENT_HEADER)
            header_name = X_PAYMENT_HEADER
        url = str(request.url)
        try:
            self.body = await self._read_body()
            amount = await self.route.price_of(request)
        except PaymentError as exc:
            quote = gateway.quote(self.route.fixed_price or 1, url, self.route)
            await self._answer(payment_required_response(quote, exc.wire, code=exc.code), send)
            return
        except Exception as exc:
            logger.exception("pricing %s %s failed", self.route.method, self.route.path)
            await self._answer(JSONResponse({"error": f"{ErrorCode.PRICE_UNAVAILABLE}: {exc}"}, status_code=503), send)
            return
        quote = gateway.quote(amount, url, self.route)
        if self.scope["method"] == "HEAD":
            # HEAD has no content to pay for: quote it, never charge it.
            await self._answer(payment_required_response(quote, ErrorCode.PAYMENT_REQUIRED), send)
            return
        if header is None:
            await self._answer(payment_required_response(quote, ErrorCode.PAYMENT_REQUIRED), send)
            return
        try:
            paid, scheme = self._parse(header, header_name, quote)
        except PaymentError as exc:
            await self._answer(payment_required_response(quote, exc.wire, code=exc.code), send)
            return
        payment_identifier = None
        try:
            payment_identifier = self._payment_identifier(paid)
            if payment_identifier is not None:
                cached = await gateway.store.claim_payment_identifier(
                    payment_identifier,
                    hashlib.sha256(canonical_json(paid.envelope.to_wire())).hexdigest(),
                    time.time(),
                    stale_after=gateway.config.max_timeout_seconds,
                )
                if cached is not None:  # a retry of a paid request: its response, charged once
                    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in cached.headers]
                    await send({"type": "http.response.start", "status": cached.status, "headers": headers})
                    await send({"type": "http.response.body", "body": cached.body, "more_body": False})
                    return
        except PaymentError as exc:
            status = {ErrorCode.PAYMENT_IDENTIFIER_CONFLICT: 409, ErrorCode.PAYMENT_IN_PROGRESS: 409}.get(exc.code)
            if status is None:
                await self._answer(payment_required_response(quote, exc.wire, code=exc.code, version=paid.version), send)
            else:
                await self._answer(JSONResponse({"error": exc.wire}, status, headers={"Retry-After": "1"}), send)
            return
        kept = False
        try:
            kept = await self._pay(paid, scheme, amount, quote, payment_identifier, send)
        finally:
            if payment_identifier is not None and not kept:
                await gateway.store.drop_payment_identifier(payment_identifier)

    async def _pay(
        self, paid: PaidRequest, scheme: Scheme, amount: int, quote: Quote, payment_identifier: str | None, send: Send
    ) -> bool:
        """Verify, serve and settle; returns whether a paid response was sent."""
        try:
            accepted = await scheme.verify(paid, amount)
        except PaymentError as exc:
            await self._answer(payment_required_response(quote, exc.wire, code=exc.code, version=paid.version), send)
            return False
        except Exception as exc:  # chain, store or facilitator unreachable: say so, never a 500
            logger.warning("payment verification failed: %r", exc)
            code = ErrorCode.UNEXPECTED_VERIFY_ERROR if scheme.settles_before_response else ErrorCode.CHAIN_UNAVAILABLE
            await self._answer(payment_required_response(quote, f"{code}: {type(exc).__name__}", version=paid.version), send)
            return False
        if scheme.settles_before_response or payment_identifier is not None:
            return await self._serve_then_settle(paid, scheme, accepted, quote, payment_identifier, send)
        await self._serve_streaming(paid, scheme, accepted, send)
        return False

    async def _serve_streaming(self, paid: PaidRequest, scheme: Scheme, accepted: AcceptedPayment, send: Send) -> None:
        served = True

        async def send_with_receipt(message: Message) -> None:
            nonlocal served
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    served = False
                else:
                    receipt = await scheme.settle(paid, accepted)
                    message = {**message, "headers": _paid_headers(message, receipt, paid.version)}
            await send(message)

        try:
            await self.gateway.app(self.scope, self._replay, send_with_receipt)
        except BaseException:
            served = False
            raise
        finally:
            if not served:
                await scheme.release(accepted)

    async def _serve_then_settle(
        self,
        paid: PaidRequest,
        scheme: Scheme,
        accepted: AcceptedPayment,
        quote: Quote,
        payment_identifier: str | None,
        send: Send,
    ) -> bool:
        held = _HeldResponse()
        try:
            await self.gateway.app(self.scope, self._replay, held.send)
        except BaseException:
            await scheme.release(accepted)
            raise
        if held.start is None or held.start["status"] >= 400:
            await scheme.release(accepted)
            await held.replay(send)
            return False
        outcome = await settle(scheme, paid, accepted)
        if not outcome.success:
            error = f"{outcome.error_reason}: {outcome.error_message or 'settlement failed'}"
            await self._answer(
                payment_required_response(quote, error, settlement=outcome, version=paid.version), send
            )
            return False
        start = {**held.start, "headers": _paid_headers(held.start, outcome, paid.version)}
        body = b"".join(held.body)
        if payment_identifier is not None:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
            await self.gateway.store.complete_payment_identifier(
                payment_identifier, CachedResponse(start["status"], headers, body)
            )
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return True

    def _parse(self, header: str, header_name: str, quote: Quote) -> tuple[PaidRequest, Scheme]:
        """The client's payment envelope, checked against the quote: which scheme, and that it
        accepted our terms. Raises ``PaymentError`` naming the field."""
        raw = decode_header(header, header=header_name)
        raw_path = self.scope.get("raw_path") or self.scope["path"].encode()
        query = self.scope.get("query_string", b"")
        path_and_query = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        return parse_payment(
            raw, quote, self.gateway.config, self.gateway.schemes,
            method=self.scope["method"], path_and_query=path_and_query, body=self.body,
        )

    def _payment_identifier(self, paid: PaidRequest) -> str | None:
        """The client's x402 ``payment-identifier`` id, if any. Raises ``PaymentError``
        (``invalid_payload``) for a malformed one or a missing one when required."""
        extensions = paid.envelope.extensions if isinstance(paid.envelope, PaymentPayload) else None
        extension = (extensions or {}).get(PAYMENT_IDENTIFIER)
        info = extension.get("info") if isinstance(extension, dict) else None
        identifier = info.get("id") if isinstance(info, dict) else None
        if identifier is None:
            if self.gateway.payment_identifier_required:
                raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"extensions.{PAYMENT_IDENTIFIER}.info.id: required")
            return None
        if not isinstance(identifier, str) or not 16 <= len(identifier) <= 128 or not _is_identifier(identifier):
            raise PaymentError(
                ErrorCode.INVALID_PAYLOAD,
                f"extensions.{PAYMENT_IDENTIFIER}.info.id: 16-128 characters of [A-Za-z0-9_-]",
            )
        return identifier

    async def _answer(self, response: Response, send: Send) -> None:
        await response(self.scope, self._replay, send)

    async def _read_body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PaymentError(ErrorCode.PAYLOAD_TOO_LARGE, f"body: over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        self._body_sent = False
        return b"".join(chunks)

    async def _replay(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return await self.receive()


class _HeldResponse:
    """The app's response, held back until its payment has settled."""

    def __init__(self) -> None:
        self.start: Message | None = None
        self.body: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body":
            self.body.append(message.get("body", b""))

    async def replay(self, send: Send) -> None:
        """Send the held response unchanged (an unpaid error answer)."""
        if self.start is None:
            return
        await send(self.start)
        await send({"type": "http.response.body", "body": b"".join(self.body), "more_body": False})


def _paid_headers(start: Message, receipt: SettleResponse, version: int) -> list[tuple[bytes, bytes]]:
    """The app's headers plus the receipt, caching limited to the payer (``_private``) and
    ``Vary`` on the payment headers."""
    headers = MutableHeaders(raw=list(start.get("headers", [])))
    name = PAYMENT_RESPONSE_HEADER if version == 2 else X_PAYMENT_RESPONSE_HEADER
    headers[name] = encode_header(receipt.to_wire())
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    headers["Cache-Control"] = _private(headers.get("cache-control", ""))
    headers.add_vary_header(VARY)
    return headers.raw


def _private(cache_control: str) -> str:
    """The app's ``Cache-Control`` made private: its directives kept (``max-age``, …) but
    ``public``, plus ``private`` unless it already says ``private`` or ``no-store``."""
    directives = [d.strip() for d in cache_control.split(",") if d.strip() and d.strip().lower() != "public"]
    if not {d.lower() for d in directives} & {"private", "no-store"}:
        directives.append("private")
    return ", ".join(directives)


def _is_identifier(value: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def _batch_json(batch: BatchRecord) -> dict[str, Any]:
    """The settlement batch of an ``aep2`` receipt (docs/PROTOCOL.md, receipts): its id and
    status, the transaction (``""`` until submitted) and, as each becomes known, the block it
    settled in, the proof's wall seconds and the transaction's gas (``null`` before)."""
    return {
        "id": batch.batch_id,
        "status": batch.status,
        "transaction": batch.tx_hash or "",
        "block": batch.block,
        "proveSeconds": batch.prove_seconds,
        "gasUsed": batch.gas_used,
    }
