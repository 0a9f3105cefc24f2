"""``WalletAuth``: pay x402 ``402`` challenges through a co-wallet; the agent holds an API key only.

Remote mode of the payer SDK. The agent never sees a private key or a session key: on a 402
it sends the challenge's ``aep2`` entry and the request it pays for to the co-wallet
(``POST /v1/payments/authorize``). The wallet's policy engine decides and, on ``allow``,
the wallet signs the mandate and returns the ``PAYMENT-SIGNATURE`` (v2) or ``X-PAYMENT`` (v1)
value; the request is sent once more with it. The gateway's receipt is then reported back
(``POST /v1/payments/{id}/confirm``), or the reservation released when the gateway refused
(``…/release``).

* ``deny`` raises ``PolicyDenied`` before anything is sent to the payee; a denial by the
  wallet's AI review council raises its subclass ``CouncilDenied``, with every judge's vote.
* The agent may say why it spends (justification, expected ROI, urgency) for the council: per
  request in ``request.extensions["aep2_spend"]``, or for every request with ``spend_context``.
* ``review`` waits up to ``review_timeout`` seconds, polling, for a reviewer; undecided, it
  raises ``ReviewPending``.
* An ambiguous wallet call (a timeout, a dropped connection, a 5xx, a 429) is retried with
  the same idempotency key (one per paid request), so the wallet answers the retry with the
  first call's mandate and never signs a second one.

The flow is written once, as a generator that yields either the payee request to send or a
wallet step (``Authorize``, ``PollReview``, ``Confirm``, ``Release``, ``Wait``);
``WalletPaymentFlow`` drives it for ``httpx.Client`` and ``httpx.AsyncClient`` and leaves
running a step to its subclass. ``WalletAuth`` runs steps over the wallet's HTTP API; the
wallet itself runs them in process when it makes a paid call for an agent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import httpx

from aep2.x402 import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER

from .challenge import check_entry, is_refusal, parse_challenge, read_receipt, refusal
from .errors import (
    CouncilDenied,
    NoAcceptableRequirement,
    PayerError,
    PaymentRefused,
    PolicyDenied,
    ReviewPending,
    WalletRequestError,
    WalletUnavailable,
)

__all__ = [
    "Authorize",
    "Confirm",
    "PollReview",
    "Release",
    "SPEND_EXTENSION",
    "Wait",
    "WalletAuth",
    "WalletDecision",
    "WalletPaymentFlow",
    "WalletStep",
]

SCHEME = "aep2"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
#: ``httpx`` request extension carrying the agent's spend context (``justification``,
#: ``expected_roi``, ``urgency``) for the wallet's review council.
SPEND_EXTENSION = "aep2_spend"
logger = logging.getLogger("payer.remote")


# ---------------------------------------------------------------------------------------------
# Steps: what the flow asks of the wallet
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authorize:
    """Decide and sign: ``requirement`` an ``aep2`` accepts entry (v2 or v1 form) for the
    request ``method url`` with ``body``; ``context`` the agent's spend context, if any.
    Answers a ``WalletDecision``."""

    requirement: dict[str, Any]
    url: str
    method: str
    body: bytes
    idempotency_key: str
    context: dict[str, str] | None = None


@dataclass(frozen=True)
class PollReview:
    """The review's current decision. Answers a ``WalletDecision``."""

    review_id: str


@dataclass(frozen=True)
class Confirm:
    """The payee served the paid request: ``receipt`` is its decoded ``PAYMENT-RESPONSE``."""

    payment_id: str
    receipt: dict[str, Any]


@dataclass(frozen=True)
class Release:
    """The payee refused or failed the paid request: release the reservation."""

    payment_id: str
    reason: str


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` between two polls of a review."""

    seconds: float


WalletStep = Authorize | PollReview | Confirm | Release | Wait


@dataclass(frozen=True)
class WalletDecision:
    """The wallet's answer to ``Authorize`` or ``PollReview``: ``allow`` with the payment
    ``header`` to send, or ``review`` (nothing signed yet). A denial is raised, never returned."""

    outcome: Literal["allow", "review"]
    rule: str = ""
    reason: str = ""
    payment_id: str | None = None
    amount: int = 0
    header: str | None = field(default=None, repr=False)
    review_id: str | None = None
    intent_id: str | None = None


# ---------------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------------


class WalletPaymentFlow(httpx.Auth):
    """The remote-signing flow for ``httpx.Client`` and ``httpx.AsyncClient``; a subclass runs
    the wallet steps (``_run`` for sync clients, ``_arun`` for async ones).

    ``review_timeout``: seconds to wait for a review (0: raise ``ReviewPending`` at once);
    ``poll_interval``: seconds between polls. ``raise_on_refusal``: a gateway refusal raises
    ``PaymentRefused`` (else the refusing response is returned). ``receipts``: the gateway
    receipts of the payments made, oldest first. ``spend_context``: the spend context sent
    with every authorization (``justification``, ``expected_roi``, ``urgency``) unless the
    request carries its own in ``extensions["aep2_spend"]``.
    """

    requires_request_body = True

    def __init__(
        self,
        *,
        review_timeout: float = 0.0,
        poll_interval: float = 1.0,
        raise_on_refusal: bool = True,
        clock: Callable[[], float] = time.monotonic,
        spend_context: typing.Mapping[str, str] | None = None,
    ) -> None:
        if review_timeout < 0 or poll_interval <= 0:
            raise ValueError("review_timeout must be >= 0 and poll_interval > 0 (seconds)")
        self.spend_context = None if spend_context is None else dict(spend_context)
        self.review_timeout = review_timeout
        self.poll_interval = poll_interval
        self.raise_on_refusal = raise_on_refusal
        self.receipts: list[dict[str, Any]] = []
        self._clock = clock

    def _key(self) -> str:
        """The idempotency key of one paid request's wallet calls."""
        return uuid.uuid4().hex

    def _run(self, step: WalletStep) -> WalletDecision | None:
        raise NotImplementedError(f"{type(self).__name__} does not support sync clients")

    async def _arun(self, step: WalletStep) -> WalletDecision | None:
        raise NotImplementedError(f"{type(self).__name__} does not support async clients")

    def sync_auth_flow(self, request: httpx.Request) -> typing.Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = self._flow(request)
        answer: Any = None
        error: PayerError | None = None
        while True:
            try:
                item = flow.send(answer) if error is None else flow.throw(error)
            except StopIteration:
                return
            answer, error = None, None
            if isinstance(item, httpx.Request):
                answer = yield item
                if answer.status_code == 402:
                    answer.read()
            elif isinstance(item, Wait):
                time.sleep(item.seconds)
            else:
                try:
                    answer = self._run(item)
                except PayerError as exc:  # the flow decides: another entry, a logged report, or raise
                    error = exc

    async def async_auth_flow(self, request: httpx.Request) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self._flow(request)
        answer: Any = None
        error: PayerError | None = None
        while True:
            try:
                item = flow.send(answer) if error is None else flow.throw(error)
            except StopIteration:
                return
            answer, error = None, None
            if isinstance(item, httpx.Request):
                answer = yield item
                if answer.status_code == 402:
                    await answer.aread()
            elif isinstance(item, Wait):
                await asyncio.sleep(item.seconds)
            else:
                try:
                    answer = await self._arun(item)
                except PayerError as exc:
                    error = exc

    def _flow(self, request: httpx.Request) -> typing.Generator[httpx.Request | WalletStep, Any, None]:
        if PAYMENT_SIGNATURE_HEADER in request.headers or X_PAYMENT_HEADER in request.headers:
            yield request  # already carries a payment (e.g. a re-sent request): never pay twice
            return
        response = yield request
        if response.status_code != 402:
            return
        challenge = parse_challenge(response, request)
        key = self._key()
        offers = [(i, entry) for i, entry in enumerate(challenge.accepts) if entry.get("scheme") == SCHEME]
        if not offers:
            schemes = ", ".join(str(entry.get("scheme")) for entry in challenge.accepts) or "nothing"
            raise NoAcceptableRequirement(f"accepts: no {SCHEME} entry (offered: {schemes})")
        decision: WalletDecision | None = None
        unpayable: list[str] = []
        spend = request.extensions.get(SPEND_EXTENSION, self.spend_context)
        for index, entry in offers:
            check_entry(index, entry, challenge.source)
            step = Authorize(entry, str(request.url), request.method, request.content, key,
                             None if spend is None else dict(spend))
            try:
                decision = yield step
            except NoAcceptableRequirement as exc:
                unpayable.append(f"accepts[{index}]: {exc}")  # another entry may suit another intent
                continue
            break
        if decision is None:
            raise NoAcceptableRequirement("; ".join(unpayable))
        deadline = self._clock() + self.review_timeout
        while decision.outcome == "review":
            assert decision.review_id is not None
            if self._clock() >= deadline:
                raise ReviewPending(decision.review_id, decision.rule, decision.reason)
            yield Wait(self.poll_interval)
            decision = yield PollReview(decision.review_id)
        assert decision.payment_id is not None and decision.header is not None
        name = PAYMENT_SIGNATURE_HEADER if challenge.version == 2 else X_PAYMENT_HEADER
        request.headers[name] = decision.header
        response = yield request
        receipt = read_receipt(response, payment_id=decision.payment_id, amount=decision.amount)
        if receipt is not None and receipt.get("success") is not False:
            self.receipts.append(receipt)
            yield from self._report(Confirm(decision.payment_id, receipt))
            return
        if receipt is not None:
            code, reason = str(receipt.get("errorReason") or "payment_failed"), "PAYMENT-RESPONSE: success is false"
        elif is_refusal(response):
            code, reason = refusal(response)
        elif response.status_code >= 400:
            # The gateway commits a payment only for responses < 400.
            yield from self._report(Release(decision.payment_id, f"the payee answered {response.status_code}"))
            return
        else:
            return  # < 400 without a receipt: outcome unknown, the wallet keeps it reserved
        yield from self._report(Release(decision.payment_id, f"refused: {code}"))
        if self.raise_on_refusal:
            raise PaymentRefused(code, reason, response=response)

    def _report(self, step: Confirm | Release) -> typing.Generator[WalletStep, Any, None]:
        """Tell the wallet the outcome. The payee's answer is already here: a wallet that
        does not take the report must not lose it, so the failure is logged (the wallet keeps
        the payment reserved until it learns the outcome from the chain)."""
        try:
            yield step
        except PayerError as exc:
            logger.warning("could not report %s of payment %s to the wallet: %s", type(step).__name__.lower(), step.payment_id, exc)


# ---------------------------------------------------------------------------------------------
# Over HTTP
# ---------------------------------------------------------------------------------------------


class WalletAuth(WalletPaymentFlow):
    """Pay 402 challenges through the co-wallet at ``wallet_url`` with the agent's ``api_key``.

    ``timeout``: seconds per wallet call; ``retries``: further attempts of a wallet call that
    got no definite answer (network error, 5xx, 429), ``backoff`` seconds apart, doubling.
    ``transport``/``async_transport``: httpx transports for the wallet calls (tests).
    ``spend_context``: see ``WalletPaymentFlow``; the wallet's council must answer within
    ``timeout`` (its judges' budget), or the retried call finds the review pending.
    Close with ``close()``/``aclose()`` (or use as a context manager). Raises the errors of
    ``payer.errors``: ``PolicyDenied``, ``ReviewPending``, ``NoAcceptableRequirement``,
    ``MalformedChallenge``, ``PaymentRefused``, ``WalletRequestError``, ``WalletUnavailable``.
    """

    def __init__(
        self,
        wallet_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        review_timeout: float = 0.0,
        poll_interval: float = 1.0,
        raise_on_refusal: bool = True,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        spend_context: typing.Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(review_timeout=review_timeout, poll_interval=poll_interval, raise_on_refusal=raise_on_refusal,
                         spend_context=spend_context)
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.wallet_url = wallet_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._options: dict[str, Any] = {
            "base_url": self.wallet_url,
            "headers": {"Authorization": f"Bearer {api_key}"},
            "timeout": timeout,
        }
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._aclient: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def __repr__(self) -> str:
        return f"WalletAuth({self.wallet_url!r})"  # never the API key

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient[1].aclose()
            self._aclient = None

    def __enter__(self) -> WalletAuth:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def __aenter__(self) -> WalletAuth:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # -- steps ---------------------------------------------------------------------------------

    def _run(self, step: WalletStep) -> WalletDecision | None:
        if self._client is None:
            self._client = httpx.Client(transport=self._transport, **self._options)
        method, path, body, headers = _http(step)
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                failure: str = f"{type(exc).__name__}: {exc}"
            else:
                if not _retryable(response):
                    return _answer(step, response)
                failure = f"HTTP {response.status_code}"
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise WalletUnavailable(503, "wallet_unavailable", f"{path}: {failure} after {self.retries + 1} attempts")

    async def _arun(self, step: WalletStep) -> WalletDecision | None:
        client = self._async_client()
        method, path, body, headers = _http(step)
        for attempt in range(self.retries + 1):
            try:
                response = await client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                failure: str = f"{type(exc).__name__}: {exc}"
            else:
                if not _retryable(response):
                    return _answer(step, response)
                failure = f"HTTP {response.status_code}"
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        raise WalletUnavailable(503, "wallet_unavailable", f"{path}: {failure} after {self.retries + 1} attempts")

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient belongs to the event loop it first ran on: one per loop.
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            self._aclient = (loop, httpx.AsyncClient(transport=self._async_transport, **self._options))
        return self._aclient[1]


def _http(step: WalletStep) -> tuple[str, str, dict[str, Any] | None, dict[str, str]]:
    """``(method, path, JSON body, headers)`` of ``step`` on the wallet's API."""
    if isinstance(step, Authorize):
        body = {
            "requirement": step.requirement,
            "url": step.url,
            "method": step.method,
            "body": base64.b64encode(step.body).decode("ascii"),
            "idempotencyKey": step.idempotency_key,
        }
        if step.context is not None:
            body["context"] = {_CAMEL.get(k, k): v for k, v in step.context.items()}
        return "POST", "/v1/payments/authorize", body, {IDEMPOTENCY_KEY_HEADER: step.idempotency_key}
    if isinstance(step, PollReview):
        return "GET", f"/v1/reviews/{step.review_id}", None, {}
    if isinstance(step, Confirm):
        return "POST", f"/v1/payments/{step.payment_id}/confirm", step.receipt, {}
    if isinstance(step, Release):
        return "POST", f"/v1/payments/{step.payment_id}/release", {"reason": step.reason[:2000]}, {}
    raise TypeError(f"not a wallet call: {step!r}")


#: The spend context's wire names (the wallet's API is camelCase).
_CAMEL = {"expected_roi": "expectedRoi"}


def _retryable(response: httpx.Response) -> bool:
    """No definite answer: the wallet may or may not have acted, so ask again (same key)."""
    return response.status_code == 429 or response.status_code >= 500


def _answer(step: WalletStep, response: httpx.Response) -> WalletDecision | None:
    """The wallet's answer to ``step``, or the ``payer.errors`` error it means."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    if response.status_code >= 400:
        code = str(data.get("code") or "wallet_error")
        detail = str(data.get("detail") or response.reason_phrase)
        decision_id = data.get("decisionId") if isinstance(data.get("decisionId"), int) else None
        if code == "council_denied":
            votes = [v for v in data.get("votes") or () if isinstance(v, dict)]
            raise CouncilDenied(str(data.get("rule") or code), detail, decision_id=decision_id, votes=votes)
        if code == "policy_denied":
            raise PolicyDenied(str(data.get("rule") or code), detail, decision_id=decision_id)
        if code == "no_matching_intent":
            raise NoAcceptableRequirement(f"{data.get('field') or 'requirement'}: {detail}")
        raise WalletRequestError(response.status_code, code, detail)
    if not isinstance(step, (Authorize, PollReview)):
        return None
    outcome = data.get("outcome")
    if outcome == "allow" and isinstance(data.get("header"), str) and isinstance(data.get("paymentId"), str):
        return WalletDecision("allow", str(data.get("rule", "")), str(data.get("reason", "")), data["paymentId"],
                              int(data.get("amount") or 0), data["header"], data.get("reviewId"), data.get("intentId"))
    if outcome == "review" and isinstance(data.get("reviewId"), str):
        return WalletDecision("review", str(data.get("rule", "")), str(data.get("reason", "")), amount=int(data.get("amount") or 0),
                              review_id=data["reviewId"], intent_id=data.get("intentId"))
    raise WalletRequestError(response.status_code, "malformed_answer", f"{response.request.url.path}: {str(data)[:200]}")
