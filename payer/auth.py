"""``AEP2Auth``: answer x402 ``402 Payment Required`` challenges with AEP2 mandates.

An ``httpx.Auth`` in the shape of httpx's ``DigestAuth``: send the request; on a 402 that
offers an ``aep2`` requirement on the intent's network, asset, settlement contract and
processor,
reserve a nonce and the amount in the ``PayerState``, sign a mandate bound to this exact
request (``request_hash`` of method, raw path and query, body), set ``PAYMENT-SIGNATURE``
and send the request once more. At most one mandate is signed per request.

* The gateway answers the paid request with ``PAYMENT-RESPONSE``: the payment is confirmed
  and its receipt stored.
* It answers 402 again (``error = "<code>: <reason>"``): the reservation is released (the
  nonce is not reused) and ``PaymentRefused`` is raised, or the 402 returned when
  ``raise_on_refusal=False``.
* Any other status >= 400 without a receipt: the gateway did not commit the payment, so the
  reservation is released and the response returned.
* A status < 400 without a receipt leaves the amount reserved: the outcome is unknown, so it
  keeps counting against the budget.

Intent Mode: when a route's price is known in advance (``prices=``, ``prepay()``, or
``discover()`` from the gateway's ``/skill.json``) the first request already carries the
mandate. If the gateway answers it with a 402 anyway, the reservation is released, the
price forgotten (the next request negotiates through a 402) and the refusal raised.

The flow's only I/O is the local SQLite state, so one generator serves ``httpx.Client`` and
``httpx.AsyncClient``; the sync/async wrappers read the body of 402 responses only (for the
v1 challenge in the body), never of the paid responses.
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import httpx

from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode
from aep2.intent import SignedIntent
from aep2.mandate import MAX_DEADLINE, Mandate, request_hash
from aep2.payload import build_payload
from aep2.x402 import (
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    caip2,
    chain_id_of,
    encode_header,
)

from .challenge import check_entry, is_refusal, parse_challenge, read_receipt, refusal
from .errors import (
    IntentExpired,
    IntentNotYetValid,
    MalformedChallenge,
    NoAcceptableRequirement,
    PayeeNotAllowed,
    PaymentRefused,
)
from .state import PayerState

__all__ = ["AEP2Auth", "DEFAULT_DEADLINE_SECONDS", "SCHEME"]

SCHEME = "aep2"
#: Mandate lifetime unless the gateway asks for more (``extra.minDeadlineSeconds``).
DEFAULT_DEADLINE_SECONDS = 3600


#: ``{(METHOD, url): requirement}``: the routes paid up front (Intent Mode).
Prices = dict[tuple[str, str], dict[str, Any]]


@dataclass(frozen=True)
class _Pending:
    mandate: Mandate
    version: int


class AEP2Auth(httpx.Auth):
    """Pay 402 challenges from ``signed_intent`` with mandates signed by ``session_key``.

    ``state`` keeps nonces, reservations and receipts (default: a fresh in-memory
    ``PayerState``; pass a file-backed one so a restarted agent continues its nonces and
    budget). ``deadline_seconds``: mandate lifetime (default 3600, never below the gateway's
    ``minDeadlineSeconds``). ``prices``: ``{(METHOD, url): requirement}`` paid up front
    (Intent Mode; ``url`` absolute without query, or just the path). ``clock`` returns unix
    seconds. Raises ``ValueError`` when ``session_key`` is not the intent's session key.
    """

    requires_request_body = True

    def __init__(
        self,
        signed_intent: SignedIntent,
        session_key: SessionKey,
        state: PayerState | None = None,
        *,
        deadline_seconds: int | None = None,
        raise_on_refusal: bool = True,
        prices: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tuple(session_key.public_key) != tuple(signed_intent.intent.session_key):
            raise ValueError("session_key: does not match the intent's sessionKey")
        if deadline_seconds is not None and deadline_seconds <= 0:
            raise ValueError(f"deadline_seconds: {deadline_seconds} must be positive")
        self.signed_intent = signed_intent
        self.intent = signed_intent.intent
        self.intent_id = self.intent.intent_id
        self.session_key = session_key
        self.state = state if state is not None else PayerState()
        self.deadline_seconds = deadline_seconds
        self.raise_on_refusal = raise_on_refusal
        self.prices: Prices = {}
        for (method, url), requirement in (prices or {}).items():
            self.prepay(requirement, method=method, url=url)
        self._clock = clock
        self.state.register(signed_intent)

    # -- public state ------------------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Base units the gateway confirmed under this intent."""
        return self.state.spent(self.intent_id)

    @property
    def remaining(self) -> int:
        """Base units still available: ``maxAmount - spent - reserved``."""
        return self.state.remaining(self.intent_id)

    @property
    def receipts(self) -> list[dict[str, Any]]:
        """The gateway's receipts (decoded ``PAYMENT-RESPONSE``: an x402 ``SettleResponse``, plus
        ``paymentId`` at the top) for this intent, oldest first."""
        return self.state.receipts(self.intent_id)

    # -- Intent Mode ---------------------------------------------------------------------------

    def prepay(self, requirement: Mapping[str, Any], *, url: str, method: str = "GET") -> None:
        """Pay requests to ``method url`` up front with ``requirement`` (an x402 ``accepts`` entry).

        ``url`` is absolute (``https://host/path``, query ignored) or just a path. The
        requirement is checked against the intent now: ``NoAcceptableRequirement``,
        ``PayeeNotAllowed`` or ``MalformedChallenge`` when it could not be paid.
        """
        entry = dict(requirement)
        self.select([entry], source="requirement")
        self.prices[(method.upper(), _route_url(url))] = entry

    @typing.overload
    def discover(self, client: httpx.AsyncClient, base_url: str = "") -> typing.Awaitable[Prices]: ...

    @typing.overload
    def discover(self, client: httpx.Client, base_url: str = "") -> Prices: ...

    def discover(self, client: httpx.Client | httpx.AsyncClient, base_url: str = "") -> Prices | typing.Awaitable[Prices]:
        """Fetch ``<base_url>/skill.json`` and record the fixed aep2 prices it lists.

        With an ``httpx.AsyncClient`` this returns an awaitable (``await auth.discover(client, url)``).
        Routes this intent cannot pay (other network, asset, settlement or payee; templated
        paths; non-integer prices) are skipped. Returns the recorded prices.
        """
        url = base_url.rstrip("/") + "/skill.json"
        if isinstance(client, httpx.AsyncClient):
            return self._adiscover(client, url, base_url)
        response = client.get(url)
        response.raise_for_status()
        return self._record_skill(response.json(), base_url or str(response.url.copy_with(path="/", query=None)))

    async def _adiscover(self, client: httpx.AsyncClient, url: str, base_url: str) -> Prices:
        response = await client.get(url)
        response.raise_for_status()
        return self._record_skill(response.json(), base_url or str(response.url.copy_with(path="/", query=None)))

    def _record_skill(self, doc: Any, base_url: str) -> Prices:
        if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
            raise MalformedChallenge("routes: missing or not a list", header="skill.json")
        defaults = doc.get("aep2") if isinstance(doc.get("aep2"), dict) else {}
        recorded: Prices = {}
        origin = httpx.URL(base_url) if base_url else None
        for route in doc["routes"]:
            if not isinstance(route, dict):
                continue
            entry = _route_requirement(route, defaults)
            path = route.get("path")
            if entry is None or not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "{}*:<"):
                continue
            method = str(route.get("method", "GET")).upper()
            url = str(origin.copy_with(path=path, query=None)) if origin is not None else path
            try:
                self.prepay(entry, url=url, method=method)
            except (NoAcceptableRequirement, PayeeNotAllowed, MalformedChallenge):
                continue
            recorded[(method, _route_url(url))] = entry
        return recorded

    # -- the flow ------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> typing.Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if response.status_code == 402:
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    async def async_auth_flow(self, request: httpx.Request) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if response.status_code == 402:
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    def auth_flow(self, request: httpx.Request) -> typing.Generator[httpx.Request, httpx.Response, None]:
        if PAYMENT_SIGNATURE_HEADER in request.headers or X_PAYMENT_HEADER in request.headers:
            yield request  # already carries a payment (e.g. a re-sent request): never pay twice
            return
        key = self._price_key(request)
        if key is not None:
            pending = self._pay(request, self.prices[key], {"url": str(request.url)}, version=2)
            response = yield request
            if response.status_code == 402:
                self.prices.pop(key, None)
            self._finish(pending, response)
            return

        response = yield request
        if response.status_code != 402:
            return
        challenge = parse_challenge(response, request)
        requirement = self.select(challenge.accepts, source=challenge.source)
        pending = self._pay(request, requirement, challenge.resource, challenge.version)
        response = yield request
        self._finish(pending, response)

    # -- steps ---------------------------------------------------------------------------------

    def _pay(self, request: httpx.Request, requirement: dict[str, Any], resource: Any, version: int) -> _Pending:
        """Reserve, sign and attach one mandate for ``request``."""
        mandate, envelope = self.sign(
            requirement, resource, version=version,
            method=request.method, path_and_query=request.url.raw_path.decode("ascii"), body=request.content,
        )
        request.headers[PAYMENT_SIGNATURE_HEADER if version == 2 else X_PAYMENT_HEADER] = encode_header(envelope)
        return _Pending(mandate, version)

    def sign(
        self, requirement: dict[str, Any], resource: Any, *, method: str, path_and_query: str, body: bytes, version: int = 2
    ) -> tuple[Mandate, dict[str, Any]]:
        """Reserve a nonce and ``requirement``'s amount (base units) in the state and sign one
        mandate for it, bound to ``method path_and_query`` with ``body`` (docs/PROTOCOL.md §3).

        ``requirement``: an ``aep2`` ``accepts`` entry, as ``select`` returns it; ``resource``:
        the x402 ``ResourceInfo`` echoed in a v2 envelope. Returns the mandate and the x402
        ``PaymentPayload`` (v2, or v1 for ``version=1``) as a JSON object. The caller confirms
        or releases the reservation in ``state`` once the payee answers. Raises
        ``IntentExpired``, ``IntentNotYetValid``, or what ``PayerState.allocate`` raises
        (``BudgetExceeded``, ``PerPaymentCapExceeded``); nothing stays reserved then.
        """
        intent = self.intent
        now = int(self._clock())
        if now >= intent.valid_before:
            raise IntentExpired(f"validBefore: intent expired at {intent.valid_before} (now {now})")
        if now < intent.valid_after:
            raise IntentNotYetValid(f"validAfter: intent valid from {intent.valid_after} (now {now})")
        extra = requirement.get("extra") or {}
        lifetime = max(self.deadline_seconds or DEFAULT_DEADLINE_SECONDS, extra.get("minDeadlineSeconds") or 0)
        deadline = min(now + lifetime, MAX_DEADLINE)
        amount = int(_amount(requirement))
        binding = request_hash(method, path_and_query, body)
        nonce = self.state.allocate(self.intent_id, amount)
        try:
            mandate = Mandate(
                intent_id=self.intent_id,
                payee=requirement["payTo"],
                amount=amount,
                nonce=nonce,
                deadline=deadline,
                request_hash=binding,
            )
            signature = mandate.sign(self.session_key)
            include_intent = not self.state.is_known(self.intent_id) or extra.get("intentKnown") is False
            payload = build_payload(mandate, signature, self.signed_intent if include_intent else None)
        except BaseException:
            self.state.release(self.intent_id, nonce)
            raise
        if version == 2:
            return mandate, {"x402Version": 2, "accepted": requirement, "resource": resource, "payload": payload}
        return mandate, {"x402Version": 1, "scheme": SCHEME, "network": requirement["network"], "payload": payload}

    def _finish(self, pending: _Pending, response: httpx.Response) -> None:
        """Confirm or release the payment from the gateway's answer to the paid request."""
        mandate = pending.mandate
        receipt = read_receipt(response, payment_id=mandate.payment_id, amount=mandate.amount)
        if receipt is not None:
            if receipt.get("success") is False:
                self.state.release(self.intent_id, mandate.nonce)
                code = str(receipt.get("errorReason") or "payment_failed")
                self._refuse(code, f"{PAYMENT_RESPONSE_HEADER}: success is false", response)
                return
            self.state.confirm(self.intent_id, mandate.nonce, receipt)
            return
        if is_refusal(response):
            self.state.release(self.intent_id, mandate.nonce)
            code, reason = refusal(response)
            if code == ErrorCode.UNKNOWN_INTENT:
                self.state.forget(self.intent_id)
            self._refuse(code, reason, response)
            return
        if response.status_code >= 400:
            # The gateway commits a reservation only for responses < 400.
            self.state.release(self.intent_id, mandate.nonce)
        # < 400 without a receipt: outcome unknown, the amount stays reserved.

    def _refuse(self, code: str, reason: str, response: httpx.Response) -> None:
        if self.raise_on_refusal:
            raise PaymentRefused(code, reason, response=response)

    def _price_key(self, request: httpx.Request) -> tuple[str, str] | None:
        if not self.prices:
            return None
        method = request.method.upper()
        url = request.url
        for candidate in (str(url.copy_with(query=None, fragment=None)), url.path):
            if (method, candidate) in self.prices:
                return (method, candidate)
        return None

    def select(self, accepts: list[dict[str, Any]], *, source: str) -> dict[str, Any]:
        """The first ``aep2`` entry of ``accepts`` (x402 ``accepts`` entries, JSON objects) on
        our network, asset, settlement and processor (an entry whose ``extra`` names no
        processor is tried) whose payee we may pay.

        ``source`` names where the entries came from in errors. Raises
        ``NoAcceptableRequirement``, ``PayeeNotAllowed``, or ``MalformedChallenge`` naming
        ``accepts[i].<field>``."""
        intent = self.intent
        network = caip2(intent.chain_id)
        matching: list[tuple[int, dict[str, Any]]] = []
        for index, entry in enumerate(accepts):
            if entry.get("scheme") != SCHEME:
                continue
            if _chain_id(entry.get("network")) != intent.chain_id:
                continue
            if str(entry.get("asset", "")).lower() != intent.asset.lower():
                continue
            extra = entry.get("extra")
            if not isinstance(extra, dict):
                raise MalformedChallenge(f"accepts[{index}].extra: {extra!r:.80} is not an object", header=source)
            if str(extra.get("settlement", "")).lower() != intent.verifying_contract.lower():
                continue
            # A gateway accepts only intents naming its processor; one that does not say is tried.
            processor = extra.get("processor")
            if processor is not None and str(processor).lower() != intent.processor.lower():
                continue
            check_entry(index, entry, source)
            matching.append((index, entry))
        if not matching:
            offered = ", ".join(
                f"{e.get('scheme')}/{e.get('network')}/{e.get('asset')}/{_extra(e, 'settlement')}/{_extra(e, 'processor')}"
                for e in accepts
            ) or "nothing"
            raise NoAcceptableRequirement(
                f"accepts: no {SCHEME} entry for network {network}, asset {intent.asset}, "
                f"settlement {intent.verifying_contract}, processor {intent.processor} (offered: {offered})"
            )
        for _, entry in matching:
            if intent.allows_payee(entry["payTo"]):
                return entry
        raise PayeeNotAllowed(
            f"payTo: {', '.join(e['payTo'] for _, e in matching)} not in the intent's payees {list(intent.payees)}"
        )


def _extra(entry: Mapping[str, Any], name: str) -> Any:
    extra = entry.get("extra")
    return extra.get(name) if isinstance(extra, dict) else None


def _amount(entry: Mapping[str, Any]) -> Any:
    """``amount`` (v2) or ``maxAmountRequired`` (v1)."""
    return entry.get("amount", entry.get("maxAmountRequired"))


def _chain_id(network: Any) -> int | None:
    if not isinstance(network, str):
        return None
    try:
        return chain_id_of(network)
    except ValueError:
        return None


def _route_url(url: str) -> str:
    if url.startswith("/"):
        return url.split("?", 1)[0]
    return str(httpx.URL(url).copy_with(query=None, fragment=None))


def _route_requirement(route: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """An x402 accepts entry for a ``skill.json`` route (its own ``requirement`` when given)."""
    for name in ("requirement", "accepts"):
        given = route.get(name)
        if isinstance(given, dict) and given.get("scheme") == SCHEME:
            return dict(given)
        if isinstance(given, list):
            for item in given:
                if isinstance(item, dict) and item.get("scheme") == SCHEME:
                    return dict(item)
    scheme = route.get("scheme", defaults.get("scheme", SCHEME))
    if scheme != SCHEME:
        return None
    price = route.get("amount", route.get("price"))
    if isinstance(price, int) and not isinstance(price, bool):
        price = str(price)
    if not isinstance(price, str) or not price.isdigit():
        return None

    def pick(name: str, default: Any = None) -> Any:
        return route.get(name, defaults.get(name, default))

    settlement = pick("settlement") or pick("verifyingContract")
    network = pick("network")
    if network is None and pick("chainId") is not None:
        network = caip2(int(pick("chainId")))
    extra: dict[str, Any] = {"settlement": settlement, "minDeadlineSeconds": int(pick("minDeadlineSeconds", 0))}
    if pick("processor") is not None:
        extra["processor"] = pick("processor")
    return {
        "scheme": SCHEME,
        "network": network,
        "asset": pick("asset"),
        "amount": price,
        "payTo": pick("payTo"),
        "maxTimeoutSeconds": int(pick("maxTimeoutSeconds", 60)),
        "extra": extra,
    }
