"""The wallet makes the paid call for an agent: ``payment.execute`` by URL and method.

An agent that should not even see the payment header asks the wallet to call the payee: the
wallet sends the request, answers the 402 through its own policy engine and signer (the same
flow as the payer SDK's ``WalletAuth``, its steps run in process by ``ServiceAuth``), sends
the paid request, books the receipt and hands back the payee's answer.

The wallet only calls hosts its owner named: the hosts of one of the agent's active intents,
or the owner's host allowlist for the agent. Anything else is refused before any request
leaves (``HostNotAllowed``), so an agent cannot aim the wallet at an internal address. The
wallet never follows redirects, caps the body it relays (``max_response_bytes``) and strips
the agent's own payment and hop-by-hop headers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

from payer.errors import CouncilDenied, NoAcceptableRequirement, PolicyDenied, WalletRequestError
from payer.remote import Authorize, Confirm, PollReview, Release, WalletDecision, WalletPaymentFlow, WalletStep

from .policy import host_matches
from .service import IntentStatus, NoMatchingIntent, WalletError, WalletService

__all__ = ["Executor", "HostNotAllowed", "PaidCall", "ServiceAuth", "allowed_hosts"]

#: Never forwarded from the agent: the payment is the wallet's to attach, the rest is per hop.
_DROPPED_REQUEST_HEADERS = frozenset(
    {"payment-signature", "x-payment", "host", "content-length", "connection", "keep-alive",
     "transfer-encoding", "upgrade", "te", "trailer", "proxy-authorization", "proxy-connection"}
)
_DROPPED_RESPONSE_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


async def allowed_hosts(service: WalletService, agent_id: str) -> frozenset[str]:
    """The host patterns the wallet may call for ``agent_id``: its active intents' hosts and
    the owner's host allowlist for it (match a host with ``policy.host_matches``)."""
    hosts = {h for record in await service.intents(agent_id=agent_id)
             if record.status is IntentStatus.ACTIVE for h in record.hosts}
    rules = await service.rules(agent_id)
    return frozenset(hosts | set(rules.host_allowlist or ()))


class HostNotAllowed(WalletError):
    """The URL's host is not one the owner named for this agent; nothing was sent."""


class ResponseTooLarge(WalletError):
    """The payee's answer is larger than the wallet relays (the payment stands)."""


class ServiceAuth(WalletPaymentFlow):
    """``WalletPaymentFlow`` with its steps run on ``service`` for ``agent_id`` (async clients).

    ``idempotency_key``: the agent's key for this call (a repeated execute then gets the first
    one's mandate, or a review's outcome); None draws one per call. ``payment_id``: the
    payment signed, once there is one. A gateway refusal is returned, not raised.
    """

    def __init__(
        self, service: WalletService, agent_id: str, idempotency_key: str | None = None, review_timeout: float = 0.0
    ) -> None:
        super().__init__(review_timeout=review_timeout, poll_interval=0.05, raise_on_refusal=False)
        self.service = service
        self.agent_id = agent_id
        self.idempotency_key = idempotency_key
        self.payment_id: str | None = None

    def _key(self) -> str:
        return self.idempotency_key or super()._key()

    async def _arun(self, step: WalletStep) -> WalletDecision | None:
        actor = f"agent:{self.agent_id}"
        try:
            if isinstance(step, Authorize):
                auth = await self.service.authorize_payment(
                    self.agent_id, step.requirement, step.url, step.method, step.body,
                    idempotency_key=step.idempotency_key,
                )
            elif isinstance(step, PollReview):
                auth = await self.service.review_authorization(self.agent_id, step.review_id)
            elif isinstance(step, Confirm):
                await self.service.confirm(step.payment_id, step.receipt, actor=actor)
                return None
            elif isinstance(step, Release):
                await self.service.release_payment(step.payment_id, actor=actor, reason=step.reason)
                return None
            else:
                raise TypeError(f"not a wallet step: {step!r}")
        except NoMatchingIntent as exc:
            raise NoAcceptableRequirement(str(exc)) from None
        except WalletError as exc:
            raise WalletRequestError(409, type(exc).__name__, str(exc)) from exc
        if auth.outcome == "deny" and auth.council is not None and not auth.council.approved:
            raise CouncilDenied(auth.rule, auth.reason, decision_id=auth.decision_id,
                                votes=[ballot.to_json() for ballot in auth.council.ballots])
        if auth.outcome == "deny":
            raise PolicyDenied(auth.rule, auth.reason, decision_id=auth.decision_id)
        if auth.outcome == "review":
            return WalletDecision("review", auth.rule, auth.reason, amount=auth.amount, review_id=auth.review_id,
                                  intent_id=auth.intent_id)
        self.payment_id = auth.payment_id
        return WalletDecision("allow", auth.rule, auth.reason, auth.payment_id, auth.amount, auth.header,
                              auth.review_id, auth.intent_id)


@dataclass(frozen=True)
class PaidCall:
    """The payee's answer (``status``, ``headers`` as pairs, ``body`` bytes) and the payment
    made for it (``payment_id`` None when the route was free or the payment was never signed)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    payment_id: str | None = None


class Executor:
    """Makes paid calls for agents with ``service``'s policy and keys.

    ``client``: the ``httpx.AsyncClient`` to reach payees with (default: a new one, 30 s
    timeout); redirects are never followed. ``max_response_bytes``: the largest body relayed.
    """

    def __init__(
        self,
        service: WalletService,
        *,
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.service = service
        self.client = client or httpx.AsyncClient(timeout=30.0)
        self.max_response_bytes = max_response_bytes

    async def aclose(self) -> None:
        await self.client.aclose()

    async def allowed_hosts(self, agent_id: str) -> frozenset[str]:
        """The host patterns the wallet may call for ``agent_id`` (``allowed_hosts``)."""
        return await allowed_hosts(self.service, agent_id)

    async def execute(
        self,
        agent_id: str,
        url: str,
        method: str = "GET",
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        idempotency_key: str | None = None,
        review_timeout: float = 0.0,
    ) -> PaidCall:
        """Call ``method url`` for ``agent_id`` and pay its 402 within the policy.

        Raises ``HostNotAllowed`` (nothing sent), the payer errors of the flow
        (``PolicyDenied``, ``ReviewPending``, ``NoAcceptableRequirement``,
        ``MalformedChallenge``), ``httpx.HTTPError`` when the payee cannot be reached, and
        ``ResponseTooLarge`` (the payment stands; its id is in the message).
        """
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise HostNotAllowed("url", "not an absolute http(s) URL") from None
        if target.scheme not in ("http", "https") or not target.host or target.userinfo:
            raise HostNotAllowed("url", "not an absolute http(s) URL without credentials")
        allowed = await self.allowed_hosts(agent_id)
        if not host_matches(target.host.lower(), allowed):
            raise HostNotAllowed("url", f"host {target.host!r} is not among the hosts the owner named for this agent")
        forwarded = {k: v for k, v in (headers or {}).items() if k.lower() not in _DROPPED_REQUEST_HEADERS}
        auth = ServiceAuth(self.service, agent_id, idempotency_key, review_timeout)
        request = self.client.build_request(method, target, headers=forwarded, content=body)
        response = await self.client.send(request, auth=auth, stream=True, follow_redirects=False)
        try:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > self.max_response_bytes:
                    raise ResponseTooLarge(
                        "response", f"over {self.max_response_bytes} bytes (payment {auth.payment_id} stands)"
                    )
        finally:
            await response.aclose()
        pairs = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROPPED_RESPONSE_HEADERS]
        return PaidCall(response.status_code, pairs, bytes(content), auth.payment_id)


def paid_call_json(call: PaidCall) -> dict[str, Any]:
    """The execute endpoint's answer: the payee's status, headers and base64 body, the payment id."""
    return {
        "status": call.status,
        "headers": [list(pair) for pair in call.headers],
        "body": base64.b64encode(call.body).decode("ascii"),
        "paymentId": call.payment_id,
    }
