"""The co-wallet's HTTP API: a thin Starlette layer over :class:`wallet.service.WalletService`.

Everything that decides, signs or moves money is in the service; this module only
authenticates, limits, parses and maps outcomes to HTTP, so the API and the CLI behave the same.

Two credentials, never interchangeable:

- **agents** send ``Authorization: Bearer <API key>`` (``WalletService.authenticate``); they
  draft intents and ask for signed payment headers;
- **the owner** sends ``Authorization: Bearer <owner token>`` (compared in constant time); it
  adds agents, approves intents, sets rules, decides reviews and throws the kill switch.
  An agent key on an owner route is 401, and the owner token on an agent route is 401 too.
- **acquirers** (with a ``wallet.cards.CardIssuer``) send ``Authorization: Bearer <acq_ key>``
  to the issuing routes (``/v1/issuing/…``): card authorization, capture, reversal, refund.
  Neither of the other two credentials opens them, nor does an acquirer key open theirs.

Limits. Each credential has its own moving-window rate limit (PyPI ``limits``, in-memory
storage): 429 with ``Retry-After`` in whole seconds. The limit is counted after authentication,
per agent or for the owner, so nobody can use up another key's allowance by sending its key id
with a wrong secret. A request body above ``max_body`` bytes is 413 (checked on
``Content-Length`` and while reading, for a chunked body).

Brute-force brake. Failed authentications are counted per client address and, for an agent
key, per key id (``auth_failures``, a moving window). Once either count is full, every request
from that client, or with that key id, is 429 with ``Retry-After`` until the window has room
again, correct credentials included: a guesser learns nothing from the answer. The owner token
has no key id, so its failures count per client only (one client cannot lock the owner out
everywhere).

Errors are RFC 9457 problem details (``application/problem+json``) with a stable ``code``
(``PROBLEMS``) and, when one argument is at fault, the ``field``. A policy denial is 403 with
the ``rule`` that decided; a review is 202 with the ``reviewId`` to poll. A denial by the AI
review council (``wallet.council``) is 403 ``council_denied`` with every judge's ``votes``.

Secrets. No response carries key material; the only full API key ever returned is the one in
the answer to ``POST /v1/agents``. Every log handler of the process gets ``keys.RedactingFilter``
and the ``aiosqlite`` logger is kept at INFO or above (it logs SQL parameters at DEBUG).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from limits import parse as parse_rate_limit
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from payer.errors import (
    CouncilDenied,
    MalformedChallenge,
    NoAcceptableRequirement,
    PolicyDenied,
    ReviewPending,
    WalletRequestError,
)

from . import audit, webhooks
from .dashboard import dashboard_mount
from .cards import Card, CardAuthorization, CardIssuer, CardReview, MintResult
from .execute import Executor, HostNotAllowed, ResponseTooLarge, paid_call_json
from .keys import RedactingFilter, parse_api_key
from .ledger import InsufficientFunds, LedgerError
from .policy import Rules
from .settlements import SettlementWatcher
from .service import (
    Authorization,
    ChainFailure,
    IdempotencyConflict,
    IntentRecord,
    InvalidRequest,
    InvalidState,
    NoMatchingIntent,
    NotFound,
    Payment,
    Review,
    ReviewExpired,
    ReviewStatus,
    Unauthenticated,
    WalletError,
    WalletService,
)

__all__ = ["create_app", "PROBLEMS", "DEFAULT_MAX_BODY", "install_log_redaction"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

#: Largest request body accepted (bytes); a larger one is 413.
DEFAULT_MAX_BODY = 64 * 1024
#: Where problem ``type`` URIs live (``<base><code>``).
PROBLEM_BASE = "urn:aep2:wallet:problem:"
_OWNER_ACTOR = "owner:api"

#: code -> (status, title): every problem this API answers with.
PROBLEMS: dict[str, tuple[int, str]] = {
    "unauthenticated": (401, "Missing or invalid credential"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "invalid_state": (409, "Not allowed in the current state"),
    "review_expired": (410, "The review expired undecided"),
    "no_matching_intent": (409, "No intent can pay this requirement"),
    "insufficient_funds": (409, "The owner's escrow cannot cover this"),
    "idempotency_conflict": (422, "Idempotency key reused for another request"),
    "invalid_request": (422, "Invalid request"),
    "invalid_body": (422, "Invalid request body"),
    "policy_denied": (403, "Denied by the owner's policy"),
    "council_denied": (403, "Denied by the AI review council"),
    "payload_too_large": (413, "Request body too large"),
    "rate_limited": (429, "Too many requests"),
    "host_not_allowed": (403, "The owner named no such host for this agent"),
    "payee_unreachable": (502, "The payee could not be reached"),
    "payee_bad_challenge": (502, "The payee's 402 challenge is malformed"),
    "response_too_large": (502, "The payee's answer is too large to relay"),
    "chain_error": (502, "The chain refused or failed the call"),
    "internal_error": (500, "Internal error"),
}

_WALLET_ERRORS: list[tuple[type[WalletError], str]] = [
    (HostNotAllowed, "host_not_allowed"),
    (ResponseTooLarge, "response_too_large"),
    (Unauthenticated, "unauthenticated"),
    (NotFound, "not_found"),
    (ReviewExpired, "review_expired"),
    (InvalidState, "invalid_state"),
    (NoMatchingIntent, "no_matching_intent"),
    (IdempotencyConflict, "idempotency_conflict"),
    (ChainFailure, "chain_error"),
    (InvalidRequest, "invalid_request"),
]


# ---------------------------------------------------------------------------------------------
# Problem details
# ---------------------------------------------------------------------------------------------


class Problem(Exception):
    """An error answer: ``code`` picks status and title from ``PROBLEMS``."""

    def __init__(
        self, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = {k: v for k, v in extra.items() if v is not None}


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def _problem_response(problem: Problem) -> Response:
    status, title = PROBLEMS[problem.code]
    body = {
        "type": PROBLEM_BASE + problem.code,
        "title": title,
        "status": status,
        "detail": problem.detail,
        "code": problem.code,
        **problem.extra,
    }
    return ProblemResponse(body, status_code=status, headers=problem.headers)


def _wallet_problem(exc: WalletError) -> Problem:
    code = next((c for kind, c in _WALLET_ERRORS if isinstance(exc, kind)), "invalid_request")
    headers = {"WWW-Authenticate": "Bearer"} if code == "unauthenticated" else None
    return Problem(code, exc.reason, headers=headers, field=exc.field)


def _validation_problem(exc: ValidationError) -> Problem:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "json_invalid":
        return Problem("invalid_body", f"the body is not valid JSON: {error['msg']}", field="body")
    return Problem("invalid_body", f"{where}: {error['msg']}", field=where)


async def _handle_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return _problem_response(exc)


async def _handle_wallet_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WalletError)
    return _problem_response(_wallet_problem(exc))


async def _handle_ledger_error(_request: Request, exc: Exception) -> Response:
    code = "insufficient_funds" if isinstance(exc, InsufficientFunds) else "invalid_state"
    return _problem_response(Problem(code, str(exc)))


async def _handle_http(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    response = _problem_response(Problem(code, str(exc.detail)))
    response.headers.update(exc.headers or {})
    return response


async def _handle_unexpected(_request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return _problem_response(Problem("internal_error", "the wallet could not answer; see its log"))


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------


class _Body(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class AddAgent(_Body):
    name: str = Field(min_length=1, max_length=200)


class RotateKey(_Body):
    grace_seconds: int = Field(default=0, ge=0, le=604_800)


class DraftIntent(_Body):
    budget: int = Field(gt=0)
    purpose: str = Field(max_length=2000)
    duration_seconds: int = Field(gt=0)
    per_payment_cap: int = Field(gt=0)
    payees: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)


class _WithBody(_Body):
    """A request to pay for, with its body in base64."""

    body: str | None = Field(default=None, description="the paid request's body, base64")

    @field_validator("body")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64") from None
        return value

    def body_bytes(self) -> bytes:
        return b"" if self.body is None else base64.b64decode(self.body, validate=True)


class SpendContextBody(_Body):
    """``council.SpendContext`` on the wire: the agent's own words on a spend, for the council."""

    justification: str | None = Field(default=None, max_length=2000)
    expected_roi: str | None = Field(default=None, max_length=2000)
    urgency: Literal["low", "normal", "high", "critical"] | None = None


class AuthorizePayment(_WithBody):
    requirement: dict[str, Any]
    url: str = Field(min_length=1, max_length=8192)
    method: str = "GET"
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    context: SpendContextBody | None = None


class ExecutePayment(_WithBody):
    url: str = Field(min_length=1, max_length=8192, description="the payee's absolute http(s) URL")
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict, description="sent to the payee (no payment headers)")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    review_timeout_seconds: float = Field(default=0.0, ge=0, le=30)


class Receipt(BaseModel):
    """The gateway's decoded ``PAYMENT-RESPONSE`` (x402 ``SettleResponse``); extra fields kept."""

    model_config = ConfigDict(extra="allow")
    success: bool | None = None


class Reason(_Body):
    reason: str = Field(default="", max_length=2000)


class AddWebhook(_Body):
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[str] = Field(min_length=1)


class KillSwitchBody(_Body):
    agent_id: str | None = None
    reason: str = Field(default="", max_length=2000)
    revoke: bool = True


class AutoApproveBody(_Body):
    """``policy.AutoApprove`` on the wire."""

    max_budget: int
    max_duration_seconds: int
    max_per_payment_cap: int | None = None
    payees: list[str] | None = None
    hosts: list[str] | None = None


class RulesBody(_Body):
    """``policy.Rules`` on the wire; ``agentId`` (absent: the owner's default) picks the scope."""

    agent_id: str | None = None
    per_transaction_cap: int | None = None
    rolling_24h_cap: int | None = Field(default=None, alias="rolling24hCap")
    daily_cap: int | None = None
    per_payee_daily_caps: dict[str, int] = Field(default_factory=dict)
    payee_allowlist: list[str] | None = None
    payee_denylist: list[str] | None = None
    host_allowlist: list[str] | None = None
    host_denylist: list[str] | None = None
    max_calls_per_minute: int | None = None
    active_hours: tuple[str, str] | None = None
    timezone: str = "UTC"
    review_above: int | None = None
    review_new_payee: bool = False
    scope: Literal["agent", "owner"] = "agent"
    auto_approve: AutoApproveBody | None = None
    off_mission: Literal["deny", "review"] | None = None

    def rules(self) -> Rules:
        """The ``Rules``; a value ``Rules`` refuses becomes a 422 naming its field."""
        values = self.model_dump(exclude={"agent_id"})
        try:
            return Rules(**values)
        except ValueError as exc:
            name = str(exc).split(":", 1)[0].split("[", 1)[0]
            where = to_camel(name) if name in values else "body"
            raise Problem("invalid_body", str(exc), field=where) from None


class MintCard(_Body):
    """A single-use card: ``amount`` in base units, funded by ``intentId``."""

    intent_id: str = Field(min_length=1, max_length=40)
    amount: int = Field(gt=0)
    merchant_id: str | None = Field(default=None, min_length=1, max_length=200)
    mcc: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
    ttl_seconds: int = Field(default=86_400, gt=0)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class IssuingAuthorization(_Body):
    """An acquirer's authorization request (card data as presented, amount in base units)."""

    number: str = Field(max_length=32)
    exp_month: int
    exp_year: int
    cvv: str = Field(max_length=8)
    amount: int = Field(gt=0)
    merchant_id: str = Field(min_length=1, max_length=200)
    mcc: str = Field(pattern=r"^[0-9]{4}$")


class Amount(_Body):
    """A capture or refund: ``amount`` in base units (absent: all)."""

    amount: int | None = Field(default=None, gt=0)


_BODY_MODELS: tuple[type[BaseModel], ...] = (
    AddAgent, RotateKey, AddWebhook, DraftIntent, AuthorizePayment, ExecutePayment, Receipt, Reason, KillSwitchBody,
    RulesBody, MintCard, IssuingAuthorization, Amount,
)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def _intent(record: IntentRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "agentId": record.agent_id,
        "status": record.status.value,
        "purpose": record.purpose,
        "budget": record.budget,
        "perPaymentCap": record.per_payment_cap,
        "durationSeconds": record.duration_seconds,
        "payees": list(record.payees),
        "hosts": list(record.hosts),
        "createdAt": record.created_at,
        "chainIntentId": record.chain_intent_id,
        "validAfter": record.valid_after,
        "validBefore": record.valid_before,
        "remaining": record.remaining,
        "registeredAt": record.registered_at,
        "revokedAt": record.revoked_at,
    }


def _payment(payment: Payment) -> dict[str, Any]:
    return {
        "paymentId": payment.payment_id,
        "agentId": payment.agent_id,
        "intentId": payment.intent_id,
        "payee": payment.payee,
        "amount": payment.amount,
        "nonce": payment.nonce,
        "status": payment.status.value,
        "createdAt": payment.created_at,
    }


def _review(review: Review) -> dict[str, Any]:
    return {
        "id": review.id,
        "agentId": review.agent_id,
        "intentId": review.intent_id,
        "status": review.status.value,
        "rule": review.rule,
        "url": review.url,
        "method": review.method,
        "amount": review.amount,
        "payee": review.payee,
        "createdAt": review.created_at,
        "paymentId": review.payment_id,
        "decidedBy": review.decided_by,
        "expiresAt": review.expires_at,
    }


def _webhook(endpoint: webhooks.Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "eventTypes": sorted(endpoint.event_types),
        "active": endpoint.active,
        "createdAt": endpoint.created_at,
    }


def _authorization(auth: Authorization, *, with_header: bool = True) -> Response:
    """allow → 200 (with the header for the agent), review → 202, deny → 403 problem."""
    common = {"decisionId": auth.decision_id, "intentId": auth.intent_id, "rule": auth.rule,
              "reviewId": auth.review_id, "replayed": auth.replayed}
    if auth.outcome == "deny" and auth.council is not None and not auth.council.approved:
        raise Problem("council_denied", auth.reason, votes=[b.to_json() for b in auth.council.ballots], **common)
    if auth.outcome == "deny":
        raise Problem("policy_denied", auth.reason, **common)
    if auth.outcome == "review":
        return JSONResponse({"outcome": "review", "reason": auth.reason, "amount": auth.amount, **common}, status_code=202)
    body: dict[str, Any] = {"outcome": "allow", "paymentId": auth.payment_id, "amount": auth.amount, **common}
    if with_header:
        body["header"] = auth.header
    return JSONResponse(body)


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Caller:
    kind: Literal["agent", "owner", "acquirer"]
    id: str  # the agent id, or "owner"


class _Api:
    """The route handlers, sharing the service, the credentials' check and the limiter."""

    def __init__(
        self,
        service: WalletService,
        owner_token: str,
        rate_limit: str,
        max_body: int,
        auth_failures: str,
        executor: Executor,
        cards: CardIssuer | None = None,
    ) -> None:
        if len(owner_token) < 16:
            raise ValueError("owner_token: use at least 16 random characters")
        if max_body <= 0:
            raise ValueError(f"max_body: {max_body} must be positive")
        self.service = service
        self.executor = executor
        self._owner_token = owner_token.encode()
        self._limit = parse_rate_limit(rate_limit)
        self._brake = parse_rate_limit(auth_failures)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.max_body = max_body
        self.cards = cards

    # -- authentication and limits --------------------------------------------------------------

    @staticmethod
    def _bearer(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem("unauthenticated", "send Authorization: Bearer <credential>",
                          headers={"WWW-Authenticate": "Bearer"})
        return token.strip()

    async def agent(self, request: Request) -> str:
        """The calling agent's id (401 otherwise), after the brake and its rate limit."""
        token = self._bearer(request)
        parsed = parse_api_key(token)
        scopes = _brake_scopes(request, None if parsed is None else parsed[1])
        await self._check_brake(scopes)
        try:
            agent_id = await self.service.authenticate(token)
        except Unauthenticated:
            await self._failed(scopes)
            raise
        await self._throttle(_Caller("agent", agent_id))
        return agent_id

    async def owner(self, request: Request) -> None:
        """Pass for the owner token only (401 otherwise), after the brake and the owner's rate limit."""
        if not await self.is_owner_token(request, self._bearer(request)):
            raise Problem("unauthenticated", "owner credential required", headers={"WWW-Authenticate": "Bearer"})

    async def is_owner_token(self, request: Request, token: str) -> bool:
        """Whether ``token`` is the owner's, counted by the brake and the owner's rate limit
        (429 while either is full): the bearer header and the dashboard's login form share it."""
        scopes = _brake_scopes(request, None)
        await self._check_brake(scopes)
        if not hmac.compare_digest(token.encode(), self._owner_token):
            await self._failed(scopes)
            return False
        await self._throttle(_Caller("owner", "owner"))
        return True

    async def acquirer(self, request: Request, cards: CardIssuer) -> str:
        """The calling acquirer's id (401 otherwise), after its rate limit."""
        acquirer_id = await cards.authenticate_acquirer(self._bearer(request))
        await self._throttle(_Caller("acquirer", acquirer_id))
        return acquirer_id

    async def _throttle(self, caller: _Caller) -> None:
        if not await self._limiter.hit(self._limit, caller.kind, caller.id):
            raise Problem("rate_limited", f"at most {self._limit} per credential",
                          headers=await self._retry_after(self._limit, caller.kind, caller.id))

    async def _check_brake(self, scopes: list[str]) -> None:
        for scope in scopes:
            if not await self._limiter.test(self._brake, "auth-failures", scope):
                raise Problem("rate_limited", f"too many failed authentications (at most {self._brake})",
                              headers=await self._retry_after(self._brake, "auth-failures", scope))

    async def _failed(self, scopes: list[str]) -> None:
        for scope in scopes:
            await self._limiter.hit(self._brake, "auth-failures", scope)

    async def _retry_after(self, limit: Any, *identifiers: str) -> dict[str, str]:
        """``Retry-After`` in whole seconds (at least 1) until ``limit`` has room again."""
        stats = await self._limiter.get_window_stats(limit, *identifiers)
        return {"Retry-After": str(max(1, math.ceil(stats.reset_time - time.time())))}

    # -- bodies ---------------------------------------------------------------------------------

    async def _raw(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise Problem("payload_too_large", f"at most {self.max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise Problem("payload_too_large", f"at most {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def body(self, request: Request, model: type[_M], *, optional: bool = False) -> _M:
        """Parse the JSON body into ``model``; 422 naming the field, 413 if too large."""
        raw = await self._raw(request)
        if optional and not raw.strip():
            raw = b"{}"
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise _validation_problem(exc) from None

    # -- agent routes ---------------------------------------------------------------------------

    async def draft_intent(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        body = await self.body(request, DraftIntent)
        record = await self.service.draft_intent(agent_id, **body.model_dump())
        return JSONResponse(_intent(record), status_code=201)

    async def list_intents(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        return JSONResponse({"intents": [_intent(r) for r in await self.service.intents(agent_id=agent_id)]})

    async def list_own_payments(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        return JSONResponse({"payments": [_payment(p) for p in await self.service.payments(agent_id=agent_id)]})

    async def authorize(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        body = await self.body(request, AuthorizePayment)
        auth = await self.service.authorize_payment(
            agent_id, body.requirement, body.url, body.method, body.body_bytes(),
            idempotency_key=_idempotency_key(request, body.idempotency_key),
            context=None if body.context is None else body.context.model_dump(exclude_none=True),
        )
        return _authorization(auth)

    async def execute(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        body = await self.body(request, ExecutePayment)
        key = _idempotency_key(request, body.idempotency_key)
        try:
            call = await self.executor.execute(
                agent_id, body.url, body.method, headers=body.headers, body=body.body_bytes(),
                idempotency_key=key, review_timeout=body.review_timeout_seconds,
            )
        except CouncilDenied as exc:
            raise Problem("council_denied", exc.reason, rule=exc.rule, decisionId=exc.decision_id,
                          votes=list(exc.votes)) from None
        except PolicyDenied as exc:
            raise Problem("policy_denied", exc.reason, rule=exc.rule, decisionId=exc.decision_id) from None
        except ReviewPending as exc:
            return JSONResponse({"outcome": "review", "reviewId": exc.review_id, "rule": exc.rule,
                                 "reason": exc.reason}, status_code=202)
        except NoAcceptableRequirement as exc:
            raise Problem("no_matching_intent", str(exc)) from None
        except MalformedChallenge as exc:
            raise Problem("payee_bad_challenge", str(exc)) from None
        except WalletRequestError as exc:
            raise Problem("invalid_state", exc.detail) from None
        except httpx.HTTPError as exc:
            raise Problem("payee_unreachable", f"{type(exc).__name__}: {exc}") from None
        return JSONResponse(paid_call_json(call))

    async def _own_payment(self, agent_id: str, payment_id: str) -> None:
        if (await self.service.payment(payment_id)).agent_id != agent_id:
            raise NotFound("payment_id", f"no payment {payment_id!r} for this agent")

    async def confirm(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        payment_id = request.path_params["payment_id"]
        receipt = await self.body(request, Receipt, optional=True)
        await self._own_payment(agent_id, payment_id)
        payment = await self.service.confirm(
            payment_id, receipt.model_dump(exclude_none=True), actor=f"agent:{agent_id}"
        )
        return JSONResponse(_payment(payment))

    async def release(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        payment_id = request.path_params["payment_id"]
        body = await self.body(request, Reason, optional=True)
        await self._own_payment(agent_id, payment_id)
        payment = await self.service.release_payment(payment_id, actor=f"agent:{agent_id}", reason=body.reason)
        return JSONResponse(_payment(payment))

    async def poll_review(self, request: Request) -> Response:
        agent_id = await self.agent(request)
        return _authorization(await self.service.review_authorization(agent_id, request.path_params["review_id"]))

    # -- owner routes ---------------------------------------------------------------------------

    async def add_agent(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, AddAgent)
        new = await self.service.add_agent(body.name, actor=_OWNER_ACTOR)
        return JSONResponse(
            {"agentId": new.agent_id, "name": new.name, "keyId": new.key_id, "apiKey": new.api_key},
            status_code=201, headers={"Cache-Control": "no-store"},
        )

    async def rotate_key(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, RotateKey, optional=True)
        new = await self.service.rotate_api_key(
            request.path_params["agent_id"], grace_seconds=body.grace_seconds, actor=_OWNER_ACTOR
        )
        return JSONResponse(
            {"agentId": new.agent_id, "keyId": new.key_id, "apiKey": new.api_key, "graceSeconds": body.grace_seconds},
            headers={"Cache-Control": "no-store"},
        )

    async def approve_intent(self, request: Request) -> Response:
        await self.owner(request)
        await self.body(request, _Body, optional=True)
        return JSONResponse(_intent(await self.service.approve_intent(request.path_params["intent_id"], actor=_OWNER_ACTOR)))

    async def register_intent(self, request: Request) -> Response:
        await self.owner(request)
        await self.body(request, _Body, optional=True)
        record = await self.service.retry_registration(request.path_params["intent_id"], actor=_OWNER_ACTOR)
        return JSONResponse(_intent(record))

    async def deny_intent(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, Reason, optional=True)
        record = await self.service.deny_intent(request.path_params["intent_id"], actor=_OWNER_ACTOR, reason=body.reason)
        return JSONResponse(_intent(record))

    async def revoke_intent(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, Reason, optional=True)
        record = await self.service.revoke_intent(request.path_params["intent_id"], actor=_OWNER_ACTOR, reason=body.reason)
        return JSONResponse(_intent(record))

    async def kill_switch(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, KillSwitchBody, optional=True)
        agent_id = body.agent_id or request.query_params.get("agentId")
        if request.method == "POST":
            revoked = await self.service.engage_kill_switch(
                agent_id=agent_id, actor=_OWNER_ACTOR, reason=body.reason, revoke=body.revoke
            )
            return JSONResponse({"engaged": True, "agentId": agent_id, "revokedIntents": revoked})
        await self.service.disengage_kill_switch(agent_id=agent_id, actor=_OWNER_ACTOR)
        return JSONResponse({"engaged": False, "agentId": agent_id})

    async def set_rules(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, RulesBody)
        rules = body.rules()
        await self.service.set_rules(rules, agent_id=body.agent_id, actor=_OWNER_ACTOR)
        stored = RulesBody.model_validate(rules.to_json() | {"agent_id": body.agent_id})
        return JSONResponse(stored.model_dump(mode="json", by_alias=True))

    async def approve_review(self, request: Request) -> Response:
        """The owner's answer carries the outcome, never the header: that is for the agent."""
        await self.owner(request)
        await self.body(request, _Body, optional=True)
        auth = await self.service.approve_review(request.path_params["review_id"], actor=_OWNER_ACTOR)
        return _authorization(auth, with_header=False)

    async def deny_review(self, request: Request) -> Response:
        await self.owner(request)
        body = await self.body(request, Reason, optional=True)
        review = await self.service.deny_review(request.path_params["review_id"], actor=_OWNER_ACTOR, reason=body.reason)
        return JSONResponse(_review(review))

    # -- owner reads and webhook endpoints -------------------------------------------------------

    async def get_rules(self, request: Request) -> Response:
        """The rules in force for ``?agentId=`` (its own, else the default), or the default."""
        await self.owner(request)
        agent_id = request.query_params.get("agentId")
        rules = await self.service.rules(agent_id)
        stored = RulesBody.model_validate(rules.to_json() | {"agent_id": agent_id})
        return JSONResponse(stored.model_dump(mode="json", by_alias=True))

    async def list_reviews(self, request: Request) -> Response:
        """Reviews with ``?status=`` (default ``pending``; ``all`` for every one)."""
        await self.owner(request)
        wanted = request.query_params.get("status", ReviewStatus.PENDING.value)
        try:
            status = None if wanted == "all" else ReviewStatus(wanted)
        except ValueError:
            choices = ", ".join([s.value for s in ReviewStatus] + ["all"])
            raise InvalidRequest("status", f"{wanted!r}: expected one of {choices}") from None
        return JSONResponse({"reviews": [_review(r) for r in await self.service.reviews(status=status)]})

    async def list_payments(self, request: Request) -> Response:
        await self.owner(request)
        payments = await self.service.payments(agent_id=request.query_params.get("agentId"))
        return JSONResponse({"payments": [_payment(p) for p in payments]})

    async def list_decisions(self, request: Request) -> Response:
        await self.owner(request)
        return JSONResponse({"decisions": await self.service.decisions(agent_id=request.query_params.get("agentId"))})

    async def add_webhook(self, request: Request) -> Response:
        """The endpoint with its signing secret: the only time the secret is shown."""
        await self.owner(request)
        body = await self.body(request, AddWebhook)
        try:
            endpoint = await self.service.webhooks.add_endpoint(body.url, body.event_types, actor=_OWNER_ACTOR)
        except ValueError as exc:  # TargetRefused included; messages start with the field's name
            name = str(exc).split(":", 1)[0]
            raise InvalidRequest(to_camel(name), str(exc).split(": ", 1)[-1]) from None
        return JSONResponse(_webhook(endpoint) | {"secret": endpoint.secret}, status_code=201,
                            headers={"Cache-Control": "no-store"})

    async def list_webhooks(self, request: Request) -> Response:
        await self.owner(request)
        async with self.service.db.snapshot() as conn:
            listed = await webhooks.endpoints(conn)
        return JSONResponse({"endpoints": [_webhook(e) for e in listed]})

    async def remove_webhook(self, request: Request) -> Response:
        await self.owner(request)
        endpoint_id = request.path_params["endpoint_id"]
        try:
            await self.service.webhooks.remove_endpoint(endpoint_id, actor=_OWNER_ACTOR)
        except KeyError:
            raise NotFound("endpoint_id", f"no endpoint {endpoint_id!r}") from None
        return Response(status_code=204)

    async def verify_audit(self, request: Request) -> Response:
        await self.owner(request)
        report = await audit.verify(self.service.db)
        return JSONResponse({
            "ok": report.ok, "records": report.records, "headSeq": report.head_seq, "headHash": report.head_hash,
            "seq": report.seq, "fault": None if report.fault is None else report.fault.value, "detail": report.detail,
        })

    # -- routes and document ---------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Callable[[Request], Awaitable[Response]], str, type[BaseModel] | None, str]]:
        """``(method, path, handler, security, body model, summary)`` of every operation."""
        return [
            ("POST", "/v1/intents", self.draft_intent, "agent", DraftIntent, "Draft an intent (pending approval)"),
            ("GET", "/v1/intents", self.list_intents, "agent", None, "The calling agent's intents"),
            ("GET", "/v1/payments/mine", self.list_own_payments, "agent", None, "The calling agent's payments"),
            ("POST", "/v1/payments/authorize", self.authorize, "agent", AuthorizePayment,
             "Decide a spend; on allow, the signed PAYMENT-SIGNATURE header (202 review, 403 deny)"),
            ("POST", "/v1/payments/execute", self.execute, "agent", ExecutePayment,
             "The wallet calls the payee and pays its 402: the payee's status, headers and base64 body"),
            ("POST", "/v1/payments/{payment_id}/confirm", self.confirm, "agent", Receipt,
             "The payment was served: the gateway's decoded PAYMENT-RESPONSE"),
            ("POST", "/v1/payments/{payment_id}/release", self.release, "agent", Reason,
             "The payment was never served: release its reservation"),
            ("GET", "/v1/reviews/{review_id}", self.poll_review, "agent", None,
             "Poll a review: 202 pending, 200 with the header once approved, 403 denied"),
            ("POST", "/v1/agents", self.add_agent, "owner", AddAgent, "Add an agent; its API key is returned once"),
            ("POST", "/v1/agents/{agent_id}/rotate-key", self.rotate_key, "owner", RotateKey,
             "Issue an agent a new API key (returned once); the old one stops now or after graceSeconds"),
            ("POST", "/v1/intents/{intent_id}/approve", self.approve_intent, "owner", None,
             "Approve a pending intent: sign it, allocate its budget, register it"),
            ("POST", "/v1/intents/{intent_id}/deny", self.deny_intent, "owner", Reason, "Deny a pending intent"),
            ("POST", "/v1/intents/{intent_id}/register", self.register_intent, "owner", None,
             "Retry a failed on-chain registration (idempotent)"),
            ("POST", "/v1/intents/{intent_id}/revoke", self.revoke_intent, "owner", Reason,
             "Revoke an active intent (here, then on chain)"),
            ("POST", "/v1/kill-switch", self.kill_switch, "owner", KillSwitchBody,
             "Engage the kill switch (global, or agentId)"),
            ("DELETE", "/v1/kill-switch", self.kill_switch, "owner", KillSwitchBody,
             "Disengage the kill switch (global, or agentId)"),
            ("PUT", "/v1/rules", self.set_rules, "owner", RulesBody, "Set the owner's default rules or an agent's"),
            ("POST", "/v1/reviews/{review_id}/approve", self.approve_review, "owner", None,
             "Allow a spend in review (re-evaluated without the review rules)"),
            ("POST", "/v1/reviews/{review_id}/deny", self.deny_review, "owner", Reason, "Deny a spend in review"),
            ("GET", "/v1/audit/verify", self.verify_audit, "owner", None, "Verify the audit trail's hash chain"),
            ("GET", "/v1/rules", self.get_rules, "owner", None, "The rules in force (the default, or ?agentId='s)"),
            ("GET", "/v1/reviews", self.list_reviews, "owner", None,
             "Reviews by ?status= (pending by default; approved, denied, expired, all)"),
            ("GET", "/v1/payments", self.list_payments, "owner", None, "Signed payments (?agentId= filters)"),
            ("GET", "/v1/decisions", self.list_decisions, "owner", None,
             "Every policy decision with its inputs (?agentId= filters)"),
            ("POST", "/v1/webhooks", self.add_webhook, "owner", AddWebhook,
             "Add a webhook endpoint; its signing secret is returned once"),
            ("GET", "/v1/webhooks", self.list_webhooks, "owner", None, "Webhook endpoints (no secrets)"),
            ("DELETE", "/v1/webhooks/{endpoint_id}", self.remove_webhook, "owner", None, "Remove a webhook endpoint"),
        ] + ([] if self.cards is None else _CardApi(self, self.cards).routes())

    def openapi(self) -> dict[str, Any]:
        """An OpenAPI 3.1 document built from the route table and the body models' schemas."""
        refs, defs = models_json_schema(
            [(m, "validation") for m in _BODY_MODELS], by_alias=True, ref_template="#/components/schemas/{model}"
        )
        schemas = dict(defs.get("$defs", {}))
        schemas["Problem"] = {
            "type": "object",
            "required": ["type", "title", "status", "code"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                           "detail": {"type": "string"}, "code": {"type": "string", "enum": sorted(PROBLEMS)},
                           "field": {"type": "string"}, "rule": {"type": "string"},
                           "votes": {"type": "array", "items": {"type": "object"},
                                     "description": "council_denied: every judge's ballot"}},
        }
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        paths: dict[str, dict[str, Any]] = {}
        for method, path, _handler, security, model, summary in self.routes():
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(path)
            ]
            operation: dict[str, Any] = {
                "summary": summary,
                "security": [{_SECURITY[security]: []}],
                "responses": {"200": {"description": "OK"}, "default": {"description": "Problem", "content": problem}},
            }
            if parameters:
                operation["parameters"] = parameters
            if model is not None:
                operation["requestBody"] = {
                    "required": model in (DraftIntent, AuthorizePayment, ExecutePayment, AddAgent, RulesBody, AddWebhook,
                                          MintCard, IssuingAuthorization),
                    "content": {"application/json": {"schema": refs[(model, "validation")]}},
                }
            paths.setdefault(path, {})[method.lower()] = operation
        return {
            "openapi": "3.1.0",
            "info": {"title": "AEP2 co-wallet", "version": "1"},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "agentKey": {"type": "http", "scheme": "bearer", "description": "an agent's API key"},
                    "ownerToken": {"type": "http", "scheme": "bearer", "description": "the owner token"},
                    "acquirerKey": {"type": "http", "scheme": "bearer", "description": "an acquirer's API key"},
                },
            },
        }


_SECURITY = {"agent": "agentKey", "owner": "ownerToken", "acquirer": "acquirerKey"}


def _card(card: Card) -> dict[str, Any]:
    return {
        "id": card.id, "agentId": card.agent_id, "intentId": card.intent_id, "status": card.status.value,
        "amount": card.amount, "captured": card.captured, "last4": card.last4, "expMonth": card.exp_month,
        "expYear": card.exp_year, "expiresAt": card.expires_at, "merchantId": card.merchant_id, "mcc": card.mcc,
        "createdAt": card.created_at,
    }


def _card_review(review: CardReview) -> dict[str, Any]:
    return {
        "id": review.id, "agentId": review.agent_id, "intentId": review.intent_id, "status": review.status,
        "rule": review.rule, "amount": review.amount, "merchantId": review.merchant_id, "mcc": review.mcc,
        "cardId": review.card_id, "createdAt": review.created_at, "decidedBy": review.decided_by,
    }


def _card_authorization(auth: CardAuthorization) -> dict[str, Any]:
    return {
        "id": auth.id, "approved": auth.approved,
        "declineReason": None if auth.decline_reason is None else auth.decline_reason.value,
        "status": auth.status.value, "amount": auth.amount, "merchantId": auth.merchant_id, "mcc": auth.mcc,
        "captured": auth.captured, "refunded": auth.refunded, "cardId": auth.card_id, "createdAt": auth.created_at,
    }


def _mint(result: MintResult) -> Response:
    """allow → 201 with the card (number and CVV only in the one answer that shows them),
    review → 202, deny → 403 problem."""
    common = {"decisionId": result.decision_id, "intentId": result.intent_id, "rule": result.rule,
              "reviewId": result.review_id, "replayed": result.replayed}
    if result.outcome == "deny":
        raise Problem("policy_denied", result.reason, **common)
    if result.outcome == "review":
        return JSONResponse({"outcome": "review", "reason": result.reason, "amount": result.amount, **common},
                            status_code=202)
    assert result.card is not None
    body: dict[str, Any] = {"outcome": "allow", "card": _card(result.card), **common}
    if result.secrets is not None:
        body["number"], body["cvv"] = result.secrets.number, result.secrets.cvv
    return JSONResponse(body, status_code=200 if result.replayed else 201, headers={"Cache-Control": "no-store"})


class _CardApi:
    """The routes of single-use cards: the agent's, the owner's and the acquirers'."""

    def __init__(self, api: _Api, cards: CardIssuer) -> None:
        self.api = api
        self.cards = cards

    async def mint(self, request: Request) -> Response:
        agent_id = await self.api.agent(request)
        body = await self.api.body(request, MintCard)
        result = await self.cards.mint(
            agent_id, intent_id=body.intent_id, amount=body.amount, merchant_id=body.merchant_id, mcc=body.mcc,
            ttl_seconds=body.ttl_seconds, idempotency_key=_idempotency_key(request, body.idempotency_key),
        )
        return _mint(result)

    async def list(self, request: Request) -> Response:
        agent_id = await self.api.agent(request)
        return JSONResponse({"cards": [_card(c) for c in await self.cards.cards(agent_id=agent_id)]})

    async def cancel(self, request: Request) -> Response:
        agent_id = await self.api.agent(request)
        body = await self.api.body(request, Reason, optional=True)
        card = await self.cards.cancel(request.path_params["card_id"], agent_id=agent_id, actor=f"agent:{agent_id}",
                                       reason=body.reason)
        return JSONResponse(_card(card))

    async def poll_review(self, request: Request) -> Response:
        agent_id = await self.api.agent(request)
        return _mint(await self.cards.review_result(agent_id, request.path_params["review_id"]))

    async def approve_review(self, request: Request) -> Response:
        """The owner's answer carries the outcome, never the card's secrets: those are the agent's."""
        await self.api.owner(request)
        result = await self.cards.approve_review(request.path_params["review_id"], actor=_OWNER_ACTOR)
        return _mint(dataclasses.replace(result, secrets=None))

    async def deny_review(self, request: Request) -> Response:
        await self.api.owner(request)
        body = await self.api.body(request, Reason, optional=True)
        review = await self.cards.deny_review(request.path_params["review_id"], actor=_OWNER_ACTOR, reason=body.reason)
        return JSONResponse(_card_review(review))

    async def add_acquirer(self, request: Request) -> Response:
        await self.api.owner(request)
        body = await self.api.body(request, AddAgent)
        new = await self.cards.add_acquirer(body.name, actor=_OWNER_ACTOR)
        return JSONResponse({"acquirerId": new.acquirer_id, "name": new.name, "keyId": new.key_id,
                             "apiKey": new.api_key}, status_code=201, headers={"Cache-Control": "no-store"})

    async def authorize(self, request: Request) -> Response:
        acquirer_id = await self.api.acquirer(request, self.cards)
        body = await self.api.body(request, IssuingAuthorization)
        auth = await self.cards.authorize(acquirer_id, **body.model_dump())
        return JSONResponse(_card_authorization(auth))

    async def capture(self, request: Request) -> Response:
        acquirer_id = await self.api.acquirer(request, self.cards)
        body = await self.api.body(request, Amount, optional=True)
        auth = await self.cards.capture(acquirer_id, request.path_params["authorization_id"], body.amount)
        return JSONResponse(_card_authorization(auth))

    async def reverse(self, request: Request) -> Response:
        acquirer_id = await self.api.acquirer(request, self.cards)
        await self.api.body(request, _Body, optional=True)
        auth = await self.cards.reverse(acquirer_id, request.path_params["authorization_id"])
        return JSONResponse(_card_authorization(auth))

    async def refund(self, request: Request) -> Response:
        acquirer_id = await self.api.acquirer(request, self.cards)
        body = await self.api.body(request, Amount, optional=True)
        auth = await self.cards.refund(acquirer_id, request.path_params["authorization_id"], body.amount)
        return JSONResponse(_card_authorization(auth))

    def routes(self) -> list[tuple[str, str, Callable[[Request], Awaitable[Response]], str, type[BaseModel] | None, str]]:
        """The rows ``_Api.routes`` adds when the app has a card issuer."""
        issuing = "/v1/issuing/authorizations"
        return [
            ("POST", "/v1/cards", self.mint, "agent", MintCard,
             "Mint a single-use card (201 with number and CVV, shown once; 202 review; 403 deny)"),
            ("GET", "/v1/cards", self.list, "agent", None, "The calling agent's cards (last 4 digits only)"),
            ("POST", "/v1/cards/{card_id}/cancel", self.cancel, "agent", Reason,
             "Cancel an active or authorized card: its hold returns to the intent"),
            ("GET", "/v1/cards/reviews/{review_id}", self.poll_review, "agent", None,
             "Poll a card review: 202 pending, 200/201 with the card once approved (secrets once), 403 denied"),
            ("POST", "/v1/cards/reviews/{review_id}/approve", self.approve_review, "owner", None,
             "Allow a card request in review (re-evaluated without the review rules)"),
            ("POST", "/v1/cards/reviews/{review_id}/deny", self.deny_review, "owner", Reason,
             "Deny a card request in review"),
            ("POST", "/v1/acquirers", self.add_acquirer, "owner", AddAgent,
             "Add an acquirer; its API key is returned once"),
            ("POST", issuing, self.authorize, "acquirer", IssuingAuthorization,
             "Authorize a card purchase in real time: approved, or declined with its declineReason"),
            ("POST", issuing + "/{authorization_id}/capture", self.capture, "acquirer", Amount,
             "Capture all or part of an authorization (the rest returns to the intent)"),
            ("POST", issuing + "/{authorization_id}/reverse", self.reverse, "acquirer", None,
             "Reverse an uncaptured authorization: the card is cancelled"),
            ("POST", issuing + "/{authorization_id}/refund", self.refund, "acquirer", Amount,
             "Refund all or part of a capture to the card's intent"),
        ]


def _idempotency_key(request: Request, in_body: str | None) -> str | None:
    """The ``Idempotency-Key`` header or the body's ``idempotencyKey``; both must agree."""
    header = request.headers.get("idempotency-key")
    if header is not None and in_body is not None and header != in_body:
        raise InvalidRequest("idempotencyKey", "the Idempotency-Key header and the body's idempotencyKey differ")
    return in_body or header


def _brake_scopes(request: Request, key_id: str | None) -> list[str]:
    """What a failed authentication counts against: the client's address, and the key id."""
    scopes = [f"client:{request.client.host if request.client else '?'}"]
    if key_id is not None:
        scopes.append(f"key:{key_id}")
    return scopes


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


def install_log_redaction() -> None:
    """Put ``keys.RedactingFilter`` on every handler of the process (once each; it keeps the
    args uvicorn's access formatter unpacks) and keep the ``aiosqlite`` logger at INFO or
    above: it logs SQL parameters at DEBUG."""
    sql = logging.getLogger("aiosqlite")
    if sql.level < logging.INFO:
        sql.setLevel(logging.INFO)
    loggers = [logging.getLogger()] + [
        item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)
    ]
    for item in loggers:
        for handler in item.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(
    service: WalletService,
    *,
    owner_token: str,
    rate_limit: str = "60/second",
    auth_failures: str = "10/minute",
    max_body: int = DEFAULT_MAX_BODY,
    webhook_interval: float = 1.0,
    executor: Executor | None = None,
    cards: CardIssuer | None = None,
    settlements: SettlementWatcher | None = None,
) -> Starlette:
    """The wallet's HTTP API over ``service``.

    ``owner_token``: the owner's bearer credential (16+ characters). ``rate_limit``: per
    credential, in ``limits`` notation (``"60/second"``, ``"1000/hour"``). ``auth_failures``:
    failed authentications allowed per client and per key id before the brake answers 429
    (same notation). ``max_body``: bytes.
    The lifespan runs the webhook delivery loop every ``webhook_interval`` seconds and stops it
    on shutdown; the service (database, webhook client) stays the caller's to close.
    ``executor``: makes the paid calls of ``POST /v1/payments/execute`` (default: an
    ``Executor`` on ``service``, closed with the lifespan). ``cards``: the card issuer of
    ``wallet.cards``; with it the card, card-review, acquirer and issuing routes are served.
    ``settlements``: a ``SettlementWatcher`` the lifespan runs every ``settlements.interval``
    seconds, following booked payments to the chain (None: none runs; it stays the caller's
    to close).
    The owner's live dashboard (``wallet.dashboard``) is served under ``/dashboard``.
    """
    api = _Api(service, owner_token, rate_limit, max_body, auth_failures, executor or Executor(service), cards)
    install_log_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        install_log_redaction()  # uvicorn configures its handlers before the app starts
        stop = asyncio.Event()
        tasks = [asyncio.create_task(service.webhooks.run(stop, interval=webhook_interval))]
        if settlements is not None:
            tasks.append(asyncio.create_task(settlements.run(stop, interval=settlements.interval)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            if executor is None:
                await api.executor.aclose()

    document = api.openapi()

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    routes = [Route(path, handler, methods=[method]) for method, path, handler, *_ in api.routes()]
    routes.append(Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False))
    routes.append(dashboard_mount(service, owner_token=owner_token, is_owner_token=api.is_owner_token, cards=cards))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            Problem: _handle_problem,
            WalletError: _handle_wallet_error,
            LedgerError: _handle_ledger_error,
            HTTPException: _handle_http,
            Exception: _handle_unexpected,
        },
    )
