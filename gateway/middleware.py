"""``PaymentMiddleware``: x402 payments in front of any ASGI app.

A plain ASGI class in the shape of Starlette's ``cors.py``: it passes non-HTTP scopes and
unpriced routes straight through, answers an unpaid or badly paid priced request with a
402 quote, and otherwise serves the request and adds ``PAYMENT-RESPONSE`` by wrapping
``send`` (no buffering). The reservation made before serving is released when the app
answers ≥ 400 or raises, so a payer is only charged for served requests.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aep2.errors import ErrorCode, PaymentError
from aep2.store import PaymentStore
from aep2.x402 import (
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    decode_header,
    encode_header,
)

from .chain import ChainCache, ChainReader
from .config import GatewayConfig
from .discovery import discovery_json, discovery_markdown
from .pricing import PricedRoute
from .quote import AEP2_SCHEME, EXACT_SCHEME, Quote, payment_required_response
from .schemes.aep2 import AcceptedPayment, AEP2Scheme
from .schemes.exact import ExactScheme

__all__ = ["PaymentMiddleware"]

logger = logging.getLogger("gateway")

#: Largest request body the gateway reads to bind a mandate to it (bytes).
MAX_BODY_BYTES = 1 << 20


class PaymentMiddleware:
    """Charge for ``routes`` of ``app`` in ``config.asset``, paid to ``config.payee``.

    ``store``: where reservations live (opened lazily). ``chain``: a ``ChainReader`` (cached
    here, never acting on state older than ``config.max_chain_staleness``) or a ready
    ``ChainCache``, for escrow, consent, intent, nonce and token state. ``service``: name
    shown in discovery. Serves ``/skill.md``, ``/skill.json`` and ``/payments/{paymentId}``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: GatewayConfig,
        routes: Sequence[PricedRoute],
        store: PaymentStore,
        chain: ChainReader | ChainCache,
        service: str = "x402 service",
    ) -> None:
        self.app = app
        self.config = config
        self.routes = list(routes)
        self.store = store
        self.chain = (
            chain if isinstance(chain, ChainCache) else ChainCache(chain, max_staleness=config.max_chain_staleness)
        )
        self.service = service
        self.aep2 = AEP2Scheme(config, store, self.chain)
        self.exact = ExactScheme(config, store, self.chain)
        self._store_open = False
        self._skill_json = json.dumps(discovery_json(config, self.routes, service)).encode()
        self._skill_md = discovery_markdown(config, self.routes, service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and (path in ("/skill.md", "/skill.json") or path.startswith("/payments/")):
            await self._serve_own(scope, receive, send)
            return
        route = next((r for r in self.routes if r.matches(method, path)), None)
        if route is None:
            await self.app(scope, receive, send)
            return
        await self._ensure_store_open()
        responder = _PaidRequest(self, route, scope, receive)
        await responder(send)

    async def _ensure_store_open(self) -> None:
        # Opened on first use: an ASGI middleware has no start-up hook of its own.
        if not self._store_open:
            await self.store.open()
            self._store_open = True

    async def _serve_own(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        response: Response
        if path == "/skill.json":
            response = Response(self._skill_json, media_type="application/json")
        elif path == "/skill.md":
            response = PlainTextResponse(self._skill_md, media_type="text/markdown")
        else:
            await self._ensure_store_open()
            response = await self._receipt(path.removeprefix("/payments/"))
        await response(scope, receive, send)

    async def _receipt(self, payment_id: str) -> Response:
        payment_id = payment_id.lower()
        record = await self.store.get_mandate(payment_id)
        if record is not None:
            return JSONResponse(
                {
                    "paymentId": record.payment_id,
                    "scheme": AEP2_SCHEME,
                    "status": record.status,
                    "payer": record.payer,
                    "payee": record.mandate.payee_checksum,
                    "amount": str(record.mandate.amount),
                    "nonce": str(record.mandate.nonce),
                    "transaction": record.tx_hash or "",
                    "reason": record.reason,
                    "network": self.config.network,
                }
            )
        for exact in await self.store.exact_payments():
            if exact.nonce == payment_id:
                return JSONResponse(
                    {
                        "paymentId": exact.nonce,
                        "scheme": EXACT_SCHEME,
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


class _PaidRequest:
    """Per-request state of one priced request (never stored on the shared middleware)."""

    def __init__(self, gateway: PaymentMiddleware, route: PricedRoute, scope: Scope, receive: Receive) -> None:
        self.gateway = gateway
        self.route = route
        self.scope = scope
        self.receive = receive
        self.accepted: AcceptedPayment | None = None
        self.version = 2
        self.failed = False
        self.body = b""

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
            quote = Quote(gateway.config, self.route.fixed_price or 1, url, self.route.description, self.route.mime_type)
            await payment_required_response(quote, exc.wire)(self.scope, self._replay, send)
            return
        except Exception as exc:
            logger.exception("pricing %s %s failed", self.route.method, self.route.path)
            response = JSONResponse({"error": f"{ErrorCode.PRICE_UNAVAILABLE}: {exc}"}, status_code=503)
            await response(self.scope, self._replay, send)
            return
        quote = Quote(gateway.config, amount, url, self.route.description, self.route.mime_type)
        if header is None:
            await payment_required_response(quote, ErrorCode.PAYMENT_REQUIRED)(self.scope, self._replay, send)
            return
        try:
            self.accepted = await self._verify(header, header_name, amount, request)
        except PaymentError as exc:
            await payment_required_response(quote, exc.wire)(self.scope, self._replay, send)
            return
        except Exception as exc:  # chain or store unreachable: say so, never a 500
            logger.warning("payment verification failed: %r", exc)
            error = f"{ErrorCode.CHAIN_UNAVAILABLE}: {type(exc).__name__}"
            await payment_required_response(quote, error)(self.scope, self._replay, send)
            return
        try:
            await gateway.app(self.scope, self._replay, self._send_with_receipt(send))
        except BaseException:
            self.failed = True
            raise
        finally:
            if self.failed:
                await self._release()

    async def _verify(self, header: str, header_name: str, amount: int, request: Request) -> AcceptedPayment:
        config = self.gateway.config
        envelope = decode_header(header, header=header_name)
        version = envelope.get("x402Version")
        if version == 2:
            accepted = envelope.get("accepted")
            if not isinstance(accepted, dict):
                raise PaymentError(ErrorCode.INVALID_PAYLOAD, "accepted: missing")
            scheme, network = accepted.get("scheme"), accepted.get("network")
            if network == config.network:
                if str(accepted.get("asset", "")).lower() != config.asset.lower():
                    raise PaymentError(ErrorCode.ASSET_MISMATCH, f"accepted.asset: not {config.asset}")
                if str(accepted.get("payTo", "")).lower() != config.payee.lower():
                    raise PaymentError(ErrorCode.PAYEE_MISMATCH, f"accepted.payTo: not {config.payee}")
                if str(accepted.get("amount")) != str(amount):
                    raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"accepted.amount: not {amount}")
        elif version == 1:
            scheme, network = envelope.get("scheme"), envelope.get("network")
            self.version = 1
        else:
            raise PaymentError(ErrorCode.UNSUPPORTED_VERSION, f"x402Version: {version!r} (supported: 1, 2)")
        if network != config.network:
            raise PaymentError(ErrorCode.NETWORK_MISMATCH, f"network: {network!r} is not {config.network}")
        payload = envelope.get("payload")
        if scheme == AEP2_SCHEME:
            raw_path = self.scope.get("raw_path") or self.scope["path"].encode()
            query = self.scope.get("query_string", b"")
            path_and_query = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
            return await self.gateway.aep2.verify_and_reserve(
                payload, amount=amount, method=self.scope["method"], path_and_query=path_and_query, body=self.body
            )
        if scheme == EXACT_SCHEME and config.exact_enabled:
            return await self.gateway.exact.verify_and_record(payload, amount=amount)
        raise PaymentError(ErrorCode.UNSUPPORTED_SCHEME, f"scheme: {scheme!r} (accepted: {AEP2_SCHEME}, {EXACT_SCHEME})")

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
        if not getattr(self, "_body_sent", True):
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return await self.receive()

    def _send_with_receipt(self, send: Send) -> Send:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    self.failed = True
                else:
                    receipt = encode_header(self._receipt())
                    headers = list(message.get("headers", []))
                    name = PAYMENT_RESPONSE_HEADER if self.version == 2 else X_PAYMENT_RESPONSE_HEADER
                    headers.append((name.lower().encode(), receipt.encode()))
                    headers.append(
                        (b"access-control-expose-headers", b"PAYMENT-RESPONSE, X-PAYMENT-RESPONSE")
                    )
                    message = {**message, "headers": headers}
            await send(message)

        return send_wrapper

    def _receipt(self) -> dict[str, Any]:
        accepted = self.accepted
        assert accepted is not None
        return {
            "success": True,
            "transaction": "",
            "network": self.gateway.config.network,
            "payer": accepted.payer,
            "paymentId": accepted.payment_id,
            "scheme": accepted.scheme,
            "status": "accepted",
            "amount": str(accepted.amount),
        }

    async def _release(self) -> None:
        accepted = self.accepted
        if accepted is None:
            return
        store = self.gateway.store
        if accepted.scheme == AEP2_SCHEME:
            await store.release(accepted.release_key)
        else:
            await store.delete_exact_payment(accepted.release_key)
