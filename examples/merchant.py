"""An example card-accepting merchant: a small checkout API and its acquirer client.

The merchant takes card details at checkout and asks the card's issuer, the co-wallet's issuing
API (``wallet.cards``), to authorize the purchase, then captures, reverses or refunds it, as a
shop behind a card acquirer does. It keeps no card number: an order remembers the last 4 digits.

Run it next to a wallet served with a card issuer (``python -m wallet serve``)::

    AEP2_WALLET_URL=http://127.0.0.1:8080 AEP2_ACQUIRER_KEY=acq_… AEP2_MERCHANT_ID=shop-1 \\
        AEP2_MCC=5734 uvicorn examples.merchant:app --port 8090

Routes (JSON, amounts in token base units):

- ``POST /v1/checkout`` ``{"amount", "card": {"number", "expMonth", "expYear", "cvv"},
  "captureAmount"?, "capture"?}``: authorize ``amount``; unless ``capture`` is false, capture
  ``captureAmount`` (default: all; less is a partial capture, the rest returns to the card's
  intent). 201 with the order, 402 ``{"error": "card_declined", "declineReason"}``.
- ``POST /v1/orders/{id}/capture`` ``{"amount"?}``, ``POST /v1/orders/{id}/cancel`` (reverses
  an uncaptured authorization), ``POST /v1/orders/{id}/refund`` ``{"amount"?}``.
- ``GET /v1/orders/{id}``, ``GET /health``.

A wallet that cannot be reached, or refuses a call, is a 502 naming its problem code.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["AcquirerClient", "AcquirerError", "Order", "create_app"]

_ISSUING = "/v1/issuing/authorizations"


class AcquirerError(Exception):
    """The wallet refused an issuing call (``status`` and its problem ``code``), or could not
    be reached (``status`` 0, ``code`` ``unreachable``)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class AcquirerClient:
    """Calls the issuer's authorization API with an acquirer key (``acq_…``).

    Every method returns the wallet's authorization object (``id``, ``approved``,
    ``declineReason``, ``status``, ``amount``, ``captured``, ``refunded``…) and raises
    ``AcquirerError`` for any answer but 200. ``transport``: an httpx transport (tests).
    """

    def __init__(self, wallet_url: str, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=wallet_url, transport=transport, timeout=timeout,
                                       headers={"Authorization": f"Bearer {api_key}"})

    async def authorize(self, *, number: str, exp_month: int, exp_year: int, cvv: str, amount: int,
                        merchant_id: str, mcc: str) -> dict[str, Any]:
        """Ask for an approval of ``amount``; a decline is an answer (``approved`` false)."""
        return await self._post(_ISSUING, {"number": number, "expMonth": exp_month, "expYear": exp_year,
                                           "cvv": cvv, "amount": amount, "merchantId": merchant_id, "mcc": mcc})

    async def capture(self, authorization_id: str, amount: int | None = None) -> dict[str, Any]:
        return await self._post(f"{_ISSUING}/{authorization_id}/capture", _amount(amount))

    async def reverse(self, authorization_id: str) -> dict[str, Any]:
        return await self._post(f"{_ISSUING}/{authorization_id}/reverse", {})

    async def refund(self, authorization_id: str, amount: int | None = None) -> dict[str, Any]:
        return await self._post(f"{_ISSUING}/{authorization_id}/refund", _amount(amount))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise AcquirerError(0, "unreachable", type(exc).__name__) from None
        if response.status_code != 200:
            problem = response.json() if response.headers.get("content-type", "").endswith("json") else {}
            raise AcquirerError(response.status_code, problem.get("code", "error"), problem.get("detail", ""))
        answer: dict[str, Any] = response.json()
        return answer


def _amount(amount: int | None) -> dict[str, Any]:
    return {} if amount is None else {"amount": amount}


@dataclass
class Order:
    """One checkout: the card's last 4 digits only, never its number."""

    id: str
    amount: int
    last4: str
    status: str  # declined, authorized, captured, cancelled
    authorization_id: str
    decline_reason: str | None = None
    captured: int = 0
    refunded: int = 0


def create_app(client: AcquirerClient, *, merchant_id: str, mcc: str) -> Starlette:
    """The checkout API of merchant ``merchant_id`` (category ``mcc``), paid through ``client``.

    Orders live in memory; the client is closed with the app's lifespan."""
    orders: dict[str, Order] = {}

    def answer(order: Order, status_code: int = 200) -> JSONResponse:
        body = {"id": order.id, "amount": order.amount, "last4": order.last4, "status": order.status,
                "authorizationId": order.authorization_id, "declineReason": order.decline_reason,
                "captured": order.captured, "refunded": order.refunded}
        return JSONResponse(body, status_code=status_code)

    def find(request: Request) -> Order:
        order = orders.get(request.path_params["order_id"])
        if order is None:
            raise _Refused(404, "no_such_order")
        return order

    async def checkout(request: Request) -> JSONResponse:
        body = await _json(request)
        card = body.get("card")
        amount = body.get("amount")
        if not isinstance(card, dict) or not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise _Refused(422, "expected {amount: positive integer, card: {number, expMonth, expYear, cvv}}")
        auth = await client.authorize(
            number=str(card.get("number", "")), exp_month=card.get("expMonth"), exp_year=card.get("expYear"),
            cvv=str(card.get("cvv", "")), amount=amount, merchant_id=merchant_id, mcc=mcc,
        )
        order = Order(f"ord_{secrets.token_hex(8)}", amount, str(card.get("number", ""))[-4:], "authorized", auth["id"])
        orders[order.id] = order
        if not auth["approved"]:
            order.status, order.decline_reason = "declined", auth["declineReason"]
            return JSONResponse({"error": "card_declined", "declineReason": order.decline_reason, "order": order.id},
                                status_code=402)
        if body.get("capture", True):
            captured = await client.capture(auth["id"], body.get("captureAmount"))
            order.status, order.captured = "captured", captured["captured"]
        return answer(order, 201)

    async def capture(request: Request) -> JSONResponse:
        order = find(request)
        auth = await client.capture(order.authorization_id, (await _json(request)).get("amount"))
        order.status, order.captured = "captured", auth["captured"]
        return answer(order)

    async def cancel(request: Request) -> JSONResponse:
        order = find(request)
        await client.reverse(order.authorization_id)
        order.status = "cancelled"
        return answer(order)

    async def refund(request: Request) -> JSONResponse:
        order = find(request)
        auth = await client.refund(order.authorization_id, (await _json(request)).get("amount"))
        order.refunded = auth["refunded"]
        return answer(order)

    async def show(request: Request) -> JSONResponse:
        return answer(find(request))

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "merchantId": merchant_id})

    async def refused(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, _Refused)
        return JSONResponse({"error": exc.code}, status_code=exc.status)

    async def wallet_failed(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AcquirerError)
        return JSONResponse({"error": "issuer_error", "code": exc.code, "detail": exc.detail}, status_code=502)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(
        routes=[
            Route("/v1/checkout", checkout, methods=["POST"]),
            Route("/v1/orders/{order_id}", show, methods=["GET"]),
            Route("/v1/orders/{order_id}/capture", capture, methods=["POST"]),
            Route("/v1/orders/{order_id}/cancel", cancel, methods=["POST"]),
            Route("/v1/orders/{order_id}/refund", refund, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={_Refused: refused, AcquirerError: wallet_failed},
    )


class _Refused(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _Refused(422, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Refused(422, "expected a JSON object")
    return body


def _from_environment() -> Starlette:
    missing = [name for name in ("AEP2_WALLET_URL", "AEP2_ACQUIRER_KEY", "AEP2_MERCHANT_ID") if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"set {', '.join(missing)} (the wallet's URL, this acquirer's key, the merchant id)")
    client = AcquirerClient(os.environ["AEP2_WALLET_URL"], os.environ["AEP2_ACQUIRER_KEY"])
    return create_app(client, merchant_id=os.environ["AEP2_MERCHANT_ID"], mcc=os.environ.get("AEP2_MCC", "5734"))


def __getattr__(name: str) -> Starlette:
    # `uvicorn examples.merchant:app` builds the app from the environment on first access.
    if name == "app":
        return _from_environment()
    raise AttributeError(name)
