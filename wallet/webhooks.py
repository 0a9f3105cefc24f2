"""Signed webhooks: the wallet tells its owner what happened, per the Standard Webhooks spec.

Why an outbox. An event is written by ``Webhooks.enqueue`` on the caller's own connection, in
the transaction that makes the state change it reports, so "intent approved" is sent if and
only if the approval committed. Sending happens later, outside any write transaction
(``deliver_due``, or the ``run`` loop): a slow receiver never holds the database's write lock.

Spec followed: Standard Webhooks v1 (https://www.standardwebhooks.com, PyPI
``standardwebhooks``), signed with the library's own ``Webhook(secret).sign``:

- each request is ``POST <endpoint url>`` with ``content-type: application/json`` and the body
  ``{"type": <event type>, "timestamp": <ISO 8601 UTC, when the event was enqueued>,
  "data": {...}}``; the body text is fixed at enqueue, so every retry signs the same bytes;
- headers ``webhook-id`` (the delivery's id, ``msg_…``, the same on every retry of it: the
  receiver's idempotency key), ``webhook-timestamp`` (integer Unix seconds of this attempt)
  and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``);
- secrets are ``whsec_`` + base64 of 32 random bytes (``secrets.token_bytes``). Receivers
  verify with ``Webhook(secret).verify(body, headers)``, which refuses a timestamp more than
  5 minutes from its own clock: attempts must be stamped with real time.

Delivery. One ``webhook_deliveries`` row per (event, subscribed active endpoint). A delivery is
*claimed* before it is sent: in one short write transaction its ``next_attempt_at`` moves a
lease ahead and a fresh ``claim_token`` is set, so no other worker (task or process) sees it as
due while it is in flight. Only a 2xx answer delivers; any other status, a timeout or a
connection error is a failed attempt, retried after ``backoff · 2^(n-1)`` seconds (capped at
``max_backoff``, stretched by up to ``jitter`` of itself) until ``max_attempts``, then
``failed``. Every attempt is a row of ``webhook_attempts``, the delivery log. A worker that
dies mid-send leaves its claim to expire after ``lease`` seconds; the delivery is then sent
again (at least once, as the spec expects: receivers dedupe on ``webhook-id``).

Secrets leave this module once: in the ``Endpoint`` returned by ``Webhooks.add_endpoint``
(``repr`` hides it); ``endpoints`` lists endpoints without them. They are never logged and
never sent. At rest each is sealed with ``keys.Sealer`` (AES-256-GCM under ``AEP2_WALLET_KEY``)
bound to its endpoint id (``keys.webhook_secret_aad``): a signer needs the secret itself, so
it is encrypted rather than hashed, and a copy of the database alone does not reveal it.

Targets (SSRF). An endpoint URL must be http(s) with a host and no credentials. Unless the
operator sets ``allow_private_targets`` (local receivers, tests), every address its host
resolves to must be globally routable (``ipaddress``'s ``is_global``: no loopback, private,
link-local, so no cloud metadata service at 169.254.169.254, shared, reserved or multicast
address, IPv4 embedded in IPv6 included). This is checked when the endpoint is added and again
before every attempt, and the attempt then connects to the address just checked (the URL's
host goes in ``Host`` and in TLS's SNI), so a DNS answer that changes after the check (DNS
rebinding) cannot redirect a delivery.

Tables (registered on ``wallet.db.metadata``, created by ``Database.create()`` once this module
has been imported): ``webhook_endpoints``, ``webhook_deliveries``, ``webhook_attempts``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks import Webhook

from . import audit
from .audit import redact
from .db import Database, metadata
from .keys import Sealer, UnsealError, webhook_secret_aad
from .rounds import run_rounds

__all__ = [
    "EventType",
    "DeliveryStatus",
    "Endpoint",
    "Delivery",
    "Attempt",
    "Webhooks",
    "TargetRefused",
    "check_url",
    "endpoints",
    "deliveries",
    "attempts",
    "new_secret",
    "envelope",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
]

logger = logging.getLogger(__name__)

_SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32  # the spec asks for 24 to 64 bytes
_USER_AGENT = "aep2-wallet-webhooks/1"


class EventType(StrEnum):
    """The events an endpoint can subscribe to (issue 10; ``card.*``: issue 11, ``wallet.cards``)."""

    INTENT_REQUESTED = "intent.requested"
    INTENT_APPROVED = "intent.approved"
    PAYMENT_AUTHORIZED = "payment.authorized"
    PAYMENT_DENIED = "payment.denied"
    PAYMENT_SETTLED = "payment.settled"
    PAYMENT_SETTLED_ON_CHAIN = "payment.settled_on_chain"  # its batch landed (wallet.settlements)
    PAYMENT_SETTLEMENT_FAILED = "payment.settlement_failed"  # its gateway will never settle it
    KILLSWITCH_ENGAGED = "killswitch.engaged"
    CARD_CREATED = "card.created"
    CARD_AUTHORIZED = "card.authorized"
    CARD_USED = "card.used"
    CARD_EXPIRED = "card.expired"
    CARD_CANCELLED = "card.cancelled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# ---------------------------------------------------------------------------------------------
# Tables. Times are fixed-width ISO 8601 UTC text (``_iso``, the format of ``wallet.db.utc_now``)
# so they compare as they sort, on both dialects.
# ---------------------------------------------------------------------------------------------

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),  # ep_…
    Column("url", Text, nullable=False),
    Column("sealed_secret", LargeBinary, nullable=False),  # keys.Sealer blob of the whsec_… text
    Column("event_types", Text, nullable=False),  # JSON array of EventType values, sorted
    Column("active", Boolean, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("removed_at", String(32), nullable=True),  # removed endpoints stay for the delivery log
    CheckConstraint("url <> ''", name="webhook_endpoints_url_nonempty"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # msg_…, sent as webhook-id
    Column("endpoint_id", String(40), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("payload", Text, nullable=False),  # the exact body sent on every attempt
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),  # attempts started (counted at claim)
    Column("next_attempt_at", String(32), nullable=False),  # due time, or the claim's lease end
    Column("claim_token", String(32), nullable=True),  # set by the worker holding the claim
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_status"),
    CheckConstraint("attempts >= 0", name="webhook_deliveries_attempts"),
)
Index("webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at)
Index("webhook_deliveries_by_endpoint", webhook_deliveries.c.endpoint_id)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("delivery_id", String(40), ForeignKey("webhook_deliveries.id"), nullable=False),
    Column("attempt", Integer, nullable=False),  # 1, 2, … within its delivery
    Column("at", String(32), nullable=False),  # when the request was sent (= webhook-timestamp)
    Column("status_code", Integer, nullable=True),  # NULL: no answer (timeout, refused…)
    Column("error", Text, nullable=True),  # NULL on 2xx
    Column("duration", Float, nullable=False),  # seconds, wall time of the request
    UniqueConstraint("delivery_id", "attempt", name="webhook_attempts_one_per_number"),
)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A subscription: ``url`` receives the ``event_types`` while ``active``.

    ``secret`` (``whsec_…``) is what the receiver verifies with: set only in the answer to
    ``Webhooks.add_endpoint`` (None in listings), and left out of ``repr``.
    """

    id: str
    url: str
    event_types: frozenset[EventType]
    active: bool
    created_at: str
    removed_at: str | None = None
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event bound for one endpoint; ``id`` is its ``webhook-id``."""

    id: str
    endpoint_id: str
    event_type: EventType
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str
    last_status_code: int | None
    last_error: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of the delivery log. ``status_code`` is None when nothing answered."""

    delivery_id: str
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# ---------------------------------------------------------------------------------------------
# Endpoints (each writes through the caller's connection, like ``audit.append``)
# ---------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def _check_secret(secret: str) -> None:
    """Raise ``ValueError`` unless ``secret`` is ``whsec_`` + base64 of 24 to 64 bytes.

    The message never contains the value.
    """
    body = secret.removeprefix(_SECRET_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raw = b""
    if body == secret or not 24 <= len(raw) <= 64:
        raise ValueError("secret: expected whsec_ followed by base64 of 24 to 64 bytes")


def _event_types(values: Collection[str]) -> frozenset[EventType]:
    if isinstance(values, str):
        raise TypeError("event_types: expected a collection of event types, got one string")
    if not values:
        raise ValueError("event_types: subscribe to at least one event type")
    try:
        return frozenset(EventType(v) for v in values)
    except ValueError as exc:
        raise ValueError(f"event_types: {exc}; expected some of {[e.value for e in EventType]}") from None


class TargetRefused(ValueError):
    """An endpoint URL the wallet will not send to: not http(s), credentials in it, no host,
    or (without ``allow_private_targets``) a host that is or resolves to a non-global address.
    The message starts with ``url:``."""


def check_url(url: str) -> SplitResult:
    """The parts of ``url`` if it is an absolute http(s) URL with a host and no credentials;
    ``TargetRefused`` otherwise (the message never echoes a password)."""
    if not isinstance(url, str):
        raise TargetRefused(f"url: expected a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a malformed port)
    except ValueError:
        raise TargetRefused("url: not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("url: credentials in the URL are refused (the secret signs the request)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"url: expected an absolute http(s) URL, got {url!r}")
    return parts


#: ``resolve(host, port)``: the IP addresses (text) ``host`` resolves to; raises ``OSError``.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# Refused whatever ``is_global`` says: its tables differ across Python patch releases (3.11.7
# calls 192.0.0.8 global), and none of these is a place a webhook receiver lives.
_SPECIAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4",
              "64:ff9b:1::/48", "2001::/23", "2001:db8::/32")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix embeds an IPv4 address


def _refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a delivery must not reach ``address``: anything not globally routable,
    looking through IPv4 embedded in IPv6 (mapped, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        nat64 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        embedded = [address.ipv4_mapped, nat64, address.sixtofour, address.teredo[1] if address.teredo else None]
        if any(inner is not None and _refused_address(inner) for inner in embedded):
            return True
    special = any(address in network for network in _SPECIAL_NETWORKS if network.version == address.version)
    return special or not address.is_global or address.is_multicast


async def _public_addresses(parts: SplitResult, resolve: Resolver) -> list[str]:
    """Every address of ``parts.hostname``, all global; ``TargetRefused`` otherwise."""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host, port)]
        except (OSError, ValueError) as exc:
            raise TargetRefused(f"url: cannot resolve {host!r}: {type(exc).__name__}") from None
    if not addresses:
        raise TargetRefused(f"url: {host!r} resolves to no address")
    refused = sorted({str(a) for a in addresses if _refused_address(a)})
    if refused:
        raise TargetRefused(
            f"url: {host!r} resolves to non-public {', '.join(refused)} (allow_private_targets is off)"
        )
    return [str(a) for a in addresses]


async def endpoints(conn: AsyncConnection, *, include_removed: bool = False) -> list[Endpoint]:
    """Every endpoint, oldest first, without secrets; removed ones only with ``include_removed``."""
    query = select(webhook_endpoints).order_by(webhook_endpoints.c.created_at)
    if not include_removed:
        query = query.where(webhook_endpoints.c.removed_at.is_(None))
    return [_endpoint(row) for row in (await conn.execute(query)).mappings()]


async def deliveries(conn: AsyncConnection, *, endpoint_id: str | None = None) -> list[Delivery]:
    """Deliveries, oldest first, optionally of one endpoint."""
    query = select(webhook_deliveries).order_by(webhook_deliveries.c.created_at, webhook_deliveries.c.id)
    if endpoint_id is not None:
        query = query.where(webhook_deliveries.c.endpoint_id == endpoint_id)
    rows = await conn.execute(query)
    return [_delivery(row) for row in rows.mappings()]


async def attempts(conn: AsyncConnection, delivery_id: str) -> list[Attempt]:
    """The delivery log of one delivery, in attempt order."""
    rows = await conn.execute(
        select(webhook_attempts)
        .where(webhook_attempts.c.delivery_id == delivery_id)
        .order_by(webhook_attempts.c.attempt)
    )
    return [_attempt(row) for row in rows.mappings()]


def envelope(event_type: EventType, data: Mapping[str, Any], at: datetime) -> str:
    """The body sent for an event: compact JSON ``{"type", "timestamp", "data"}``.

    ``data`` goes through ``audit.redact`` first, so a field named like a secret is sent as
    ``"[redacted]"``. Raises ``ValueError`` if ``data`` is not JSON (NaN included).
    """
    body = {"type": event_type.value, "timestamp": _iso(at), "data": redact(dict(data))}
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: str
    endpoint_id: str
    url: str
    sealed_secret: bytes = field(repr=False)
    event_type: str
    payload: str
    attempt: int
    claim_token: str


class Webhooks:
    """Enqueues events into the outbox and delivers them.

    - ``http``: the client to send with; None makes one this object owns (``aclose``). Each
      request is bounded by ``timeout`` seconds in total, and redirects are not followed (a
      3xx is a failed attempt).
    - ``max_attempts``: attempts before a delivery is ``failed`` (≥ 1).
    - ``backoff``: seconds before the first retry; the n-th retry waits ``backoff · 2^(n-1)``,
      at most ``max_backoff`` seconds, times ``1 + jitter · rng.random()`` (``0 ≤ jitter < 1``,
      so delays still grow).
    - ``lease``: seconds a claimed delivery stays invisible to other workers; must exceed
      ``timeout`` or a slow request could be claimed and sent again by another worker.
    - ``batch``: deliveries claimed per transaction and then sent at once (the requests in
      flight per ``deliver_due`` call).
    - ``clock``: returns the current time (aware); ``rng``: the jitter's source. Both exist
      so tests can be deterministic.
    - ``sealer``: seals endpoint secrets at rest (the wallet's ``keys.Sealer``).
    - ``allow_private_targets``: let endpoints be on loopback, private or link-local
      addresses (local receivers, tests); off, every target must be public (module docstring).
    - ``resolve``: ``(host, port) -> addresses``, the DNS lookup (the event loop's
      ``getaddrinfo`` by default; tests inject answers).

    Raises ``ValueError`` naming the option that is out of range.
    """

    def __init__(
        self,
        db: Database,
        *,
        sealer: Sealer,
        allow_private_targets: bool = False,
        resolve: Resolver = _getaddrinfo,
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 12,
        backoff: float = 5.0,
        max_backoff: float = 3600.0,
        jitter: float = 0.1,
        timeout: float = 10.0,
        lease: float = 60.0,
        batch: int = 16,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts: expected ≥ 1, got {max_attempts}")
        if backoff < 0 or max_backoff < backoff:
            raise ValueError(f"backoff: expected 0 ≤ backoff ≤ max_backoff, got {backoff}, {max_backoff}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter: expected 0 ≤ jitter < 1, got {jitter}")
        if timeout <= 0 or lease <= timeout:
            raise ValueError(f"lease: expected lease > timeout > 0, got lease={lease}, timeout={timeout}")
        if batch < 1:
            raise ValueError(f"batch: expected ≥ 1, got {batch}")
        self.db = db
        self.sealer = sealer
        self.allow_private_targets = allow_private_targets
        self._resolve = resolve
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.timeout = timeout
        self.lease = lease
        self.batch = batch
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(headers={"user-agent": _USER_AGENT})
        self._clock = clock or _utc
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"Webhooks({self.db!r}, max_attempts={self.max_attempts}, backoff={self.backoff})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            await self._http.aclose()

    # -- endpoints ------------------------------------------------------------------------------

    async def check_target(self, url: str) -> list[str]:
        """Check ``url`` as a delivery target (module docstring, "Targets"): the addresses a
        request may connect to, or ``[]`` when ``allow_private_targets`` skips the lookup.
        Raises ``TargetRefused``."""
        parts = check_url(url)
        if self.allow_private_targets:
            return []
        return await _public_addresses(parts, self._resolve)

    async def add_endpoint(
        self, url: str, event_types: Collection[str], *, secret: str | None = None, actor: str = "owner"
    ) -> Endpoint:
        """Subscribe ``url`` to ``event_types``; the ``Endpoint`` with its secret, the only
        time the secret is returned. The secret is sealed at rest; an audit record
        ``webhook.endpoint_added`` names the endpoint (never the secret).

        ``secret`` defaults to ``new_secret()``; one given must be a valid ``whsec_`` secret.
        Raises ``TargetRefused`` for the URL (checked before any write: the DNS lookup holds
        no lock) and ``ValueError`` / ``TypeError`` naming the bad argument.
        """
        types = _event_types(event_types)
        if secret is None:
            secret = new_secret()
        else:
            _check_secret(secret)
        await self.check_target(url)
        endpoint_id = f"ep_{uuid.uuid4().hex}"
        endpoint = Endpoint(endpoint_id, url, types, True, _iso(self._clock()), secret=secret)
        sealed = self.sealer.seal(secret.encode(), aad=webhook_secret_aad(endpoint_id))
        async with self.db.transaction() as conn:
            await conn.execute(
                webhook_endpoints.insert().values(
                    id=endpoint_id, url=url, sealed_secret=sealed, event_types=json.dumps(sorted(types)),
                    active=True, created_at=endpoint.created_at,
                )
            )
            await audit.append(conn, actor, "webhook.endpoint_added",
                               {"endpoint_id": endpoint_id, "url": url, "event_types": sorted(types)})
        return endpoint

    async def set_endpoint_active(self, endpoint_id: str, active: bool, *, actor: str = "owner") -> None:
        """Pause or resume an endpoint. While paused, its pending deliveries wait (none is sent).

        Raises ``KeyError`` if there is no such endpoint (or it was removed).
        """
        await self._change_endpoint(endpoint_id, {"active": active}, actor,
                                    "webhook.endpoint_resumed" if active else "webhook.endpoint_paused")

    async def remove_endpoint(self, endpoint_id: str, *, actor: str = "owner") -> None:
        """Stop sending to an endpoint for good: it is marked removed and inactive, and its
        pending deliveries are never sent; its delivery log stays. Raises ``KeyError``."""
        values = {"active": False, "removed_at": _iso(self._clock())}
        await self._change_endpoint(endpoint_id, values, actor, "webhook.endpoint_removed")

    async def _change_endpoint(self, endpoint_id: str, values: dict[str, Any], actor: str, action: str) -> None:
        e = webhook_endpoints
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(e).where(e.c.id == endpoint_id, e.c.removed_at.is_(None)).values(**values)
            )
            if result.rowcount != 1:
                raise KeyError(endpoint_id)
            await audit.append(conn, actor, action, {"endpoint_id": endpoint_id})

    # -- delivery -------------------------------------------------------------------------------

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return delay * (1.0 + self.jitter * self._rng.random()) if self.jitter else delay

    async def enqueue(self, conn: AsyncConnection, event_type: str, data: Mapping[str, Any]) -> list[str]:
        """Record ``event_type`` with ``data`` for every active endpoint subscribed to it.

        Call it on the connection of the transaction making the change the event reports: the
        deliveries commit with it or not at all. Returns the new deliveries' ids (none when no
        endpoint listens). Raises ``ValueError`` for an unknown event type or non-JSON data.
        """
        kind = EventType(event_type)
        now = self._clock()
        body = envelope(kind, data, now)
        stamp = _iso(now)
        rows = await conn.execute(
            select(webhook_endpoints.c.id, webhook_endpoints.c.event_types).where(webhook_endpoints.c.active)
        )
        targets = [row.id for row in rows if kind.value in json.loads(row.event_types)]
        ids = [f"msg_{uuid.uuid4().hex}" for _ in targets]
        if targets:
            await conn.execute(
                webhook_deliveries.insert(),
                [
                    {
                        "id": msg_id,
                        "endpoint_id": endpoint_id,
                        "event_type": kind.value,
                        "payload": body,
                        "status": DeliveryStatus.PENDING.value,
                        "attempts": 0,
                        "next_attempt_at": stamp,
                        "claim_token": None,
                        "last_status_code": None,
                        "last_error": None,
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                    for msg_id, endpoint_id in zip(ids, targets)
                ],
            )
        return ids

    async def deliver_due(self, now: datetime | None = None) -> list[Attempt]:
        """Send every pending delivery due at ``now`` (default: the clock) once; return the attempts.

        Deliveries are claimed ``batch`` at a time until none is due, so concurrent callers
        (tasks or processes) split the work and never send one delivery twice at once. A
        delivery that fails here is rescheduled, not retried within this call. ``now`` is also
        the attempt's ``webhook-timestamp``: keep it within minutes of real time. A failed
        request is an attempt, never an exception; a database error propagates.
        """
        at = (now or self._clock()).astimezone(timezone.utc)
        done: list[Attempt] = []
        tried: set[str] = set()
        while claimed := await self._claim(at, tried):
            tried.update(c.id for c in claimed)
            done += await asyncio.gather(*(self._send(c, at) for c in claimed))
        return done

    async def run(self, stop: asyncio.Event, *, interval: float = 1.0) -> None:
        """Deliver what is due every ``interval`` seconds until ``stop`` is set.

        An error in one round (the database unavailable, say) is logged and the loop goes on.
        """
        await run_rounds(self.deliver_due, stop, interval, logger, "webhook delivery")

    async def _claim(self, at: datetime, tried: Collection[str]) -> list[_Claimed]:
        """Take up to ``batch`` due deliveries in one write transaction: lease, token, attempt + 1."""
        d, e = webhook_deliveries, webhook_endpoints
        stamp = _iso(at)
        token = uuid.uuid4().hex
        due = (d.c.status == DeliveryStatus.PENDING.value) & (d.c.next_attempt_at <= stamp)
        async with self.db.transaction() as conn:
            query = (
                select(d.c.id)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(due, e.c.active)
                .order_by(d.c.next_attempt_at, d.c.id)
                .limit(self.batch)
                .with_for_update(of=d, skip_locked=True)  # PostgreSQL; SQLite holds the write lock
            )
            if tried:
                query = query.where(d.c.id.not_in(list(tried)))
            ids = list((await conn.execute(query)).scalars())
            if not ids:
                return []
            # Re-checks ``due``: under READ COMMITTED a row another worker claimed meanwhile
            # no longer matches and stays theirs.
            await conn.execute(
                update(d)
                .where(d.c.id.in_(ids), due)
                .values(
                    claim_token=token,
                    next_attempt_at=_iso(at + timedelta(seconds=self.lease)),
                    attempts=d.c.attempts + 1,
                    updated_at=stamp,
                )
            )
            rows = await conn.execute(
                select(d.c.id, d.c.event_type, d.c.payload, d.c.attempts, e.c.id.label("endpoint_id"), e.c.url,
                       e.c.sealed_secret)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(d.c.claim_token == token)
            )
            return [
                _Claimed(r.id, r.endpoint_id, r.url, r.sealed_secret, r.event_type, r.payload, r.attempts, token)
                for r in rows
            ]

    async def _request(self, claimed: _Claimed, at: datetime) -> httpx.Request:
        """The signed POST, aimed at an address just checked (DNS rebinding): the URL's host
        is replaced by the address and kept in ``Host`` and, for https, in TLS's SNI (so the
        certificate is still verified for the name). Raises ``TargetRefused`` or ``UnsealError``."""
        secret = self.sealer.open(claimed.sealed_secret, aad=webhook_secret_aad(claimed.endpoint_id)).decode()
        headers = {
            "content-type": "application/json",
            "webhook-id": claimed.id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(claimed.id, at, claimed.payload),
        }
        del secret
        addresses = await self.check_target(claimed.url)
        url = httpx.URL(claimed.url)
        extensions: dict[str, Any] = {}
        if addresses:
            headers["host"] = url.netloc.decode("ascii")
            if url.scheme == "https":
                extensions["sni_hostname"] = url.host
            url = url.copy_with(host=addresses[0])
        return self._http.build_request(
            "POST", url, content=claimed.payload.encode(), headers=headers, extensions=extensions
        )

    async def _send(self, claimed: _Claimed, at: datetime) -> Attempt:
        """One signed POST, then its outcome written to the log and the delivery."""
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                request = await self._request(claimed, at)
                response = await self._http.send(request, stream=True, follow_redirects=False)
                status = response.status_code  # the body is neither needed nor read
                await response.aclose()
        except TimeoutError:
            error = f"timeout after {self.timeout}s"
        except TargetRefused as exc:
            error = f"refused target: {exc}"
        except UnsealError:
            error = "the endpoint's secret does not open (AEP2_WALLET_KEY changed?)"
        except Exception as exc:  # connection refused, TLS, a bad URL…: all failed attempts
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration = time.perf_counter() - started
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        attempt = Attempt(claimed.id, claimed.attempt, _iso(at), status, error, duration)
        await self._record(claimed, attempt, at)
        return attempt

    async def _record(self, claimed: _Claimed, attempt: Attempt, at: datetime) -> None:
        d = webhook_deliveries
        if attempt.ok:
            outcome = {"status": DeliveryStatus.DELIVERED.value}
        elif attempt.attempt >= self.max_attempts:
            outcome = {"status": DeliveryStatus.FAILED.value}
        else:
            retry_at = at + timedelta(seconds=self.retry_delay(attempt.attempt))
            outcome = {"next_attempt_at": _iso(retry_at)}
        async with self.db.transaction() as conn:
            await conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=attempt.delivery_id,
                    attempt=attempt.attempt,
                    at=attempt.at,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    duration=attempt.duration,
                )
            )
            result = await conn.execute(
                update(d)
                .where(d.c.id == claimed.id, d.c.claim_token == claimed.claim_token)
                .values(
                    claim_token=None,
                    last_status_code=attempt.status_code,
                    last_error=attempt.error,
                    updated_at=_iso(self._clock()),
                    **outcome,
                )
            )
        held = result.rowcount == 1
        log = logger.info if attempt.ok else logger.warning
        log(
            "webhook %s (%s) attempt %d: %s%s",
            claimed.id,
            claimed.event_type,
            attempt.attempt,
            attempt.status_code if attempt.error is None else attempt.error,
            "" if held else " (claim expired before the answer; outcome not applied)",
        )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _utc() -> datetime:
    return datetime.now(timezone.utc)


def _iso(at: datetime) -> str:
    """Fixed-width ISO 8601 UTC text, the format of ``wallet.db.utc_now``."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _endpoint(row: Mapping[str, Any]) -> Endpoint:
    return Endpoint(
        id=row["id"],
        url=row["url"],
        event_types=frozenset(EventType(v) for v in json.loads(row["event_types"])),
        active=bool(row["active"]),
        created_at=row["created_at"],
        removed_at=row["removed_at"],
    )


def _delivery(row: Mapping[str, Any]) -> Delivery:
    return Delivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_type=EventType(row["event_type"]),
        payload=row["payload"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        delivery_id=row["delivery_id"],
        attempt=row["attempt"],
        at=row["at"],
        status_code=row["status_code"],
        error=row["error"],
        duration=row["duration"],
    )
