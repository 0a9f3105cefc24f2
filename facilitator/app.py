"""The facilitator's HTTP API (``specs/x402-specification-v2.md`` §7) as a Starlette app.

- ``GET /supported`` → ``SupportedResponse`` (``kinds``, ``extensions``, ``signers``);
  503 ``{"error": "chain_unavailable", "message": …}`` when the node cannot be reached.
- ``POST /verify`` with ``{"x402Version", "paymentPayload", "paymentRequirements"}`` →
  200 ``VerifyResponse``, valid or not (a refused payment is an answer, not an HTTP error).
- ``POST /settle`` with the same body → 200 ``SettleResponse`` once the transaction is mined
  (``exact``), or once the mandate is reserved for the processor's next batch (``aep2``).

A body that is not such a request (not JSON, a missing or mistyped field, more than
``max_body_bytes``, nested deeper than ``MAX_JSON_DEPTH``) is answered 400 in the endpoint's
own shape: ``invalidReason`` / ``errorReason`` ``invalid_payload`` (``invalid_x402_version``
for an unknown version) and a message naming the field. Nothing is answered 500.

Run it with one command::

    FACILITATOR_RPC_URL=http://127.0.0.1:8545 FACILITATOR_PRIVATE_KEY=0x… \\
        uvicorn --factory facilitator.app:from_env --port 8402

Environment read by ``from_env``:

- ``FACILITATOR_RPC_URL``: JSON-RPC endpoint of the chain to settle on (its chain id is read
  from the node);
- ``FACILITATOR_PRIVATE_KEY``: 0x hex key of the account that sends settlement transactions
  and pays their gas in wei (it needs native currency, no tokens).

With these alone it serves ``exact``. Set all three of the following as well and it also
serves ``aep2``, next to a settlement processor whose store it shares (``facilitator.aep2``:
``/settle`` reserves a mandate in that store as ``accepted``, and ``python -m settlement run``
over the same store settles it in its next batch):

- ``FACILITATOR_DEPLOYMENT``: the deployment file (docs/PROTOCOL.md §6) of the Settlement
  contract on the chain of ``FACILITATOR_RPC_URL`` (read through that URL, not the file's);
- ``FACILITATOR_STORE``: the processor's payment store, a SQLite file or a ``postgresql://``
  URL (``--store`` of ``python -m settlement run``);
- ``FACILITATOR_PROCESSOR``: the processor's address, which intents must name and payers
  must have consented to.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aep2.errors import ErrorCode
from aep2.x402.facilitator import Facilitator
from aep2.x402.models import SettleResponse, VerifyRequest, VerifyResponse

from aep2.deployment import Deployment
from aep2.stores import create_store

from .aep2 import AEP2Facilitator
from .composite import Facilitators
from .exact_evm import ExactEvmFacilitator

__all__ = [
    "create_app",
    "from_env",
    "MAX_JSON_DEPTH",
    "RPC_URL_ENV",
    "PRIVATE_KEY_ENV",
    "DEPLOYMENT_ENV",
    "STORE_ENV",
    "PROCESSOR_ENV",
]

logger = logging.getLogger("facilitator")

RPC_URL_ENV = "FACILITATOR_RPC_URL"
PRIVATE_KEY_ENV = "FACILITATOR_PRIVATE_KEY"
DEPLOYMENT_ENV = "FACILITATOR_DEPLOYMENT"
STORE_ENV = "FACILITATOR_STORE"
PROCESSOR_ENV = "FACILITATOR_PROCESSOR"
_AEP2_ENV = (DEPLOYMENT_ENV, STORE_ENV, PROCESSOR_ENV)

#: Far more than any x402 request needs (about 5), far less than the stack holds.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

#: The union members pydantic names in error locations, by the payment's declared version.
_V1_MODELS = {"PaymentPayloadV1", "PaymentRequirementsV1"}
_V2_MODELS = {"PaymentPayload", "PaymentRequirements"}


class _Malformed(Exception):
    """A request body that is no ``VerifyRequest``: the x402 ``code`` and a message naming the field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _nesting_depth(body: bytes) -> int:
    """How deep ``[``/``{`` nest in ``body``, brackets inside JSON strings not counted.

    Checked before ``json.loads`` because importing eth_account (py_ecc) raises Python's
    recursion limit to 100 000, far past what the C stack holds: a body of a few hundred KB of
    ``[`` would crash the process inside the JSON decoder instead of raising RecursionError.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _describe(exc: ValidationError, body: Any) -> _Malformed:
    """The first few pydantic errors as ``"paymentPayload.accepted.amount: Field required"``.

    Errors inside the v1/v2 unions are kept only for the version the payment declares, so the
    message speaks of the fields the sender meant to send.
    """
    payload = body.get("paymentPayload") if isinstance(body, dict) else None
    declared = payload.get("x402Version") if isinstance(payload, dict) else None
    other = _V2_MODELS if declared == 1 else _V1_MODELS
    errors = [e for e in exc.errors() if not other.intersection(map(str, e["loc"]))] or exc.errors()
    parts = []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error["loc"] if part not in _V1_MODELS | _V2_MODELS) or "body"
        parts.append(f"{where}: {error['msg']}")
    first = errors[0]
    code = (
        ErrorCode.UNSUPPORTED_VERSION
        if first["loc"] and first["loc"][-1] == "x402Version" and first["type"] == "literal_error"
        else ErrorCode.INVALID_PAYLOAD
    )
    return _Malformed(code, "; ".join(parts))


async def _read_request(request: Request, max_body_bytes: int) -> VerifyRequest:
    """The body as a ``VerifyRequest``; raises ``_Malformed``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise _Malformed(ErrorCode.INVALID_PAYLOAD, f"body: larger than {max_body_bytes} bytes")
    if _nesting_depth(bytes(body)) > MAX_JSON_DEPTH:
        raise _Malformed(ErrorCode.INVALID_PAYLOAD, f"body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise _Malformed(ErrorCode.INVALID_PAYLOAD, f"body: not JSON ({exc})") from exc
    request.state.body = data
    try:
        parsed = VerifyRequest.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc, data) from exc
    if parsed.payment_payload.x402_version != parsed.x402_version:
        raise _Malformed(
            ErrorCode.UNSUPPORTED_VERSION,
            f"x402Version: {parsed.x402_version} differs from paymentPayload.x402Version "
            f"{parsed.payment_payload.x402_version}",
        )
    return parsed


def _network_hint(request: Request) -> str:
    """``SettleResponse.network`` is required even for a malformed request: best effort."""
    body = getattr(request.state, "body", None)
    requirements = body.get("paymentRequirements") if isinstance(body, dict) else None
    network = requirements.get("network") if isinstance(requirements, dict) else None
    return network if isinstance(network, str) else ""


def create_app(facilitator: Facilitator, *, max_body_bytes: int = 256 * 1024) -> Starlette:
    """The §7 endpoints over ``facilitator``; its ``aclose()``, if any, runs at shutdown."""

    async def supported(request: Request) -> JSONResponse:
        try:
            answer = await facilitator.supported()
        except Exception as exc:
            logger.warning("supported failed: %r", exc)
            return JSONResponse(
                {"error": ErrorCode.CHAIN_UNAVAILABLE, "message": f"{type(exc).__name__}: {exc}"}, status_code=503
            )
        return JSONResponse(answer.to_wire())

    async def verify(request: Request) -> JSONResponse:
        try:
            parsed = await _read_request(request, max_body_bytes)
        except _Malformed as malformed:
            answer = VerifyResponse(is_valid=False, invalid_reason=malformed.code, invalid_message=malformed.message)
            return JSONResponse(answer.to_wire(), status_code=400)
        try:
            answer = await facilitator.verify(parsed.payment_payload, parsed.payment_requirements)
        except Exception as exc:  # a Facilitator reached over the network may raise
            logger.exception("verify raised")
            answer = VerifyResponse(
                is_valid=False, invalid_reason=ErrorCode.UNEXPECTED_VERIFY_ERROR, invalid_message=type(exc).__name__
            )
        return JSONResponse(answer.to_wire())

    async def settle(request: Request) -> JSONResponse:
        try:
            parsed = await _read_request(request, max_body_bytes)
        except _Malformed as malformed:
            answer = SettleResponse(
                success=False,
                error_reason=malformed.code,
                error_message=malformed.message,
                network=_network_hint(request),
            )
            return JSONResponse(answer.to_wire(), status_code=400)
        try:
            answer = await facilitator.settle(parsed.payment_payload, parsed.payment_requirements)
        except Exception as exc:
            logger.exception("settle raised")
            answer = SettleResponse(
                success=False,
                error_reason=ErrorCode.UNEXPECTED_SETTLE_ERROR,
                error_message=type(exc).__name__,
                network=parsed.payment_requirements.network,
            )
        return JSONResponse(answer.to_wire())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            aclose = getattr(facilitator, "aclose", None)
            if aclose is not None:
                await aclose()

    return Starlette(
        routes=[
            Route("/supported", supported, methods=["GET"]),
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def from_env(environ: Mapping[str, str] | None = None) -> Starlette:
    """The app for ``uvicorn --factory facilitator.app:from_env``: an ``ExactEvmFacilitator``
    on ``$FACILITATOR_RPC_URL`` sending from ``$FACILITATOR_PRIVATE_KEY``, and, when
    ``$FACILITATOR_DEPLOYMENT``, ``$FACILITATOR_STORE`` and ``$FACILITATOR_PROCESSOR`` are set,
    an ``AEP2Facilitator`` over that processor's store, both behind ``Facilitators``.

    Raises ``RuntimeError`` naming a missing variable (one of the three ``aep2`` variables
    without the others is a mistake, not an ``exact``-only setup), and what
    ``Deployment.load`` raises for a bad deployment file.
    """
    env = os.environ if environ is None else environ
    missing = [name for name in (RPC_URL_ENV, PRIVATE_KEY_ENV) if not env.get(name)]
    if missing:
        raise RuntimeError(f"facilitator: set {' and '.join(missing)} (see facilitator.app's docstring)")
    exact = ExactEvmFacilitator(env[RPC_URL_ENV], env[PRIVATE_KEY_ENV])
    given = [name for name in _AEP2_ENV if env.get(name)]
    if not given:
        return create_app(exact)
    if len(given) < len(_AEP2_ENV):
        missing = [name for name in _AEP2_ENV if name not in given]
        raise RuntimeError(
            f"facilitator: {' and '.join(given)} set without {' and '.join(missing)}: set all three to serve "
            "aep2, none for exact only (see facilitator.app's docstring)"
        )
    aep2 = AEP2Facilitator(
        Deployment.load(env[DEPLOYMENT_ENV]),
        create_store(env[STORE_ENV]),
        env[PROCESSOR_ENV],
        rpc_url=env[RPC_URL_ENV],
        close_store=True,
    )
    return create_app(Facilitators([exact, aep2]))
