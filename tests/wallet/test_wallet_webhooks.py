"""Webhooks end to end: a real receiver on loopback verifies every request with the library.

The receiver is a Starlette app served by uvicorn (``serve``) that checks each request with
``standardwebhooks.Webhook(secret).verify`` and records it; it can answer 500 to the first N
requests of a path, or answer slowly. Time is an injected clock that starts at the real time
(receivers refuse a ``webhook-timestamp`` more than 5 minutes off) and moves only when a test
moves it, so backoff is tested in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Collection

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wallet import webhooks
from wallet.db import Database
from wallet.keys import Sealer
from wallet.webhooks import DeliveryStatus, EventType, Webhooks

# ---------------------------------------------------------------------------------------------
# Receiver, clock, fixtures
# ---------------------------------------------------------------------------------------------

SEALER = Sealer(bytes(range(32)))  # every Webhooks of these tests seals and opens with it


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """``/hooks/{name}``: verifies with ``secrets[name]``; 500 to the first ``fail_first[name]``."""

    secrets: dict[str, str] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            name = request.path_params["name"]
            body = await request.body()
            try:
                Webhook(self.secrets[name]).verify(body, dict(request.headers))
                verified = True
            except Exception:
                verified = False
            with self.lock:
                self.requests.append(Received(name, dict(request.headers), body, verified))
                failing = self.fail_first.get(name, 0) > 0
                if failing:
                    self.fail_first[name] -= 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if not verified:
                return Response(status_code=401)
            return Response(status_code=500 if failing else 204)

        return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])

    def at(self, name: str) -> list[Received]:
        return [r for r in self.requests if r.path == name]


class Clock:
    """Starts at the real time; moves only with ``advance`` or ``to``."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def to(self, iso: str) -> None:
        self.now = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _seconds(a: str, b: str) -> float:
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


@pytest.fixture
def receiver(serve: Callable[[Any], Any]) -> tuple[Receiver, str]:
    """A running receiver and its base URL."""
    rx = Receiver()
    return rx, serve(rx.app()).url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_hooks(clock: Clock) -> AsyncIterator[Callable[..., Webhooks]]:
    """``make_hooks(db, **options)``: a ``Webhooks`` on the test clock, no jitter unless asked."""
    made: list[Webhooks] = []

    def make(db: Database, **options: Any) -> Webhooks:
        options = {"backoff": 1.0, "jitter": 0.0, "timeout": 5.0, "clock": clock, "sealer": SEALER,
                   "allow_private_targets": True} | options
        hooks = Webhooks(db, **options)
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        await hooks.aclose()


async def _add(db: Database, url: str, types: Collection[str], **options: Any) -> webhooks.Endpoint:
    """``Webhooks.add_endpoint`` on a throwaway ``Webhooks`` that allows loopback targets."""
    hooks = Webhooks(db, sealer=SEALER, allow_private_targets=True)
    try:
        return await hooks.add_endpoint(url, types, **options)
    finally:
        await hooks.aclose()


async def _endpoint(
    db: Database, rx: Receiver, url: str, name: str, types: list[str] | None = None
) -> webhooks.Endpoint:
    ep = await _add(db, f"{url}/hooks/{name}", types or list(EventType))
    assert ep.secret is not None
    rx.secrets[name] = ep.secret
    return ep


async def _emit(hooks: Webhooks, event: str, data: dict[str, Any]) -> list[str]:
    async with hooks.db.transaction() as conn:
        return await hooks.enqueue(conn, event, data)


async def _deliveries(db: Database) -> list[webhooks.Delivery]:
    async with db.snapshot() as conn:
        return await webhooks.deliveries(conn)


async def _attempts(db: Database, delivery_id: str) -> list[webhooks.Attempt]:
    async with db.snapshot() as conn:
        return await webhooks.attempts(conn, delivery_id)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


async def test_delivery_arrives_with_a_valid_signature(wallet_db, receiver, make_hooks, clock) -> None:
    rx, url = receiver
    hooks = make_hooks(wallet_db)
    ep = await _endpoint(wallet_db, rx, url, "a")

    [msg_id] = await _emit(hooks, "intent.approved", {"intent_id": "int_1", "budget": 1_000_000})
    [attempt] = await hooks.deliver_due()

    assert (attempt.delivery_id, attempt.attempt, attempt.status_code, attempt.error) == (msg_id, 1, 204, None)
    [req] = rx.at("a")
    assert req.verified
    assert req.headers["webhook-id"] == msg_id
    assert req.headers["webhook-timestamp"] == str(int(clock.now.timestamp()))
    assert req.headers["webhook-signature"].startswith("v1,")
    assert req.headers["content-type"] == "application/json"
    body = Webhook(ep.secret).verify(req.body, req.headers)
    assert body["type"] == "intent.approved"
    assert body["data"] == {"intent_id": "int_1", "budget": 1_000_000}
    assert datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    [delivery] = await _deliveries(wallet_db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.DELIVERED, 1, 204)
    assert delivery.endpoint_id == ep.id

    # The library refuses a changed body, a changed id, and another endpoint's secret.
    tampered = req.body.replace(b"1000000", b"9000000")
    assert tampered != req.body
    with pytest.raises(WebhookVerificationError):
        Webhook(ep.secret).verify(tampered, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ep.secret).verify(req.body, req.headers | {"webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(req.body, req.headers)


async def test_retry_body_and_id_are_fixed_timestamp_is_per_attempt(wallet_db, receiver, make_hooks, clock) -> None:
    rx, url = receiver
    rx.fail_first["a"] = 1
    hooks = make_hooks(wallet_db)
    await _endpoint(wallet_db, rx, url, "a")
    await _emit(hooks, "payment.settled", {"payment_id": "p1", "amount": 5})

    await hooks.deliver_due()
    clock.advance(1.0)
    await hooks.deliver_due()

    first, second = rx.at("a")
    assert first.verified and second.verified
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 1


def test_new_secret_is_whsec_base64_of_32_random_bytes() -> None:
    a, b = webhooks.new_secret(), webhooks.new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) == 32


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "not-prefixed" + "A" * 40, "whsec_" + base64.b64encode(b"x" * 23).decode(), "whsec_!!!!"],
)
async def test_add_endpoint_refuses_a_bad_secret_without_echoing_it(wallet_db, secret: str) -> None:
    with pytest.raises(ValueError, match="^secret:") as info:
        await _add(wallet_db, "http://127.0.0.1:1/x", ["payment.settled"], secret=secret)
    value = secret.removeprefix("whsec_")
    assert not value or value not in str(info.value)


async def test_add_endpoint_refuses_bad_url_and_event_types(wallet_db) -> None:
    with pytest.raises(ValueError, match="^url:"):
        await _add(wallet_db, "ftp://example.com/x", ["payment.settled"])
    with pytest.raises(ValueError, match="^url:"):
        await _add(wallet_db, "/relative", ["payment.settled"])
    with pytest.raises(ValueError, match="^event_types:"):
        await _add(wallet_db, "http://127.0.0.1:1/x", ["payment.refunded"])
    with pytest.raises(ValueError, match="^event_types:"):
        await _add(wallet_db, "http://127.0.0.1:1/x", [])
    with pytest.raises(TypeError):
        await _add(wallet_db, "http://127.0.0.1:1/x", "payment.settled")


# ---------------------------------------------------------------------------------------------
# Retries and the delivery log
# ---------------------------------------------------------------------------------------------


async def test_500_twice_then_200_is_delivered_on_the_third_attempt(wallet_db, receiver, make_hooks, clock) -> None:
    rx, url = receiver
    rx.fail_first["a"] = 2
    hooks = make_hooks(wallet_db, backoff=2.0, max_attempts=5)
    await _endpoint(wallet_db, rx, url, "a")
    [msg_id] = await _emit(hooks, "payment.authorized", {"payment_id": "p1"})

    statuses = []
    for _ in range(3):
        [attempt] = await hooks.deliver_due()
        statuses.append(attempt.status_code)
        assert await hooks.deliver_due() == []  # not due again at the same instant
        [delivery] = await _deliveries(wallet_db)
        clock.to(delivery.next_attempt_at)

    assert statuses == [500, 500, 204]
    log = await _attempts(wallet_db, msg_id)
    assert [(a.attempt, a.status_code, a.error) for a in log] == [(1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 204, None)]
    gaps = [_seconds(x.at, y.at) for x, y in zip(log, log[1:])]
    assert gaps == [2.0, 4.0]  # backoff · 2^(n-1)
    [delivery] = await _deliveries(wallet_db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        DeliveryStatus.DELIVERED,
        3,
        204,
        None,
    )
    assert all(r.verified for r in rx.at("a")) and len(rx.at("a")) == 3


async def test_receiver_down_is_retried_then_failed_after_max_attempts(wallet_db, make_hooks, clock) -> None:
    hooks = make_hooks(wallet_db, max_attempts=3)
    await _add(wallet_db, f"http://127.0.0.1:{_closed_port()}/hooks/a", ["killswitch.engaged"])
    [msg_id] = await _emit(hooks, "killswitch.engaged", {"scope": "global"})

    for _ in range(3):
        [attempt] = await hooks.deliver_due()
        assert attempt.status_code is None and attempt.error is not None and "ConnectError" in attempt.error
        [delivery] = await _deliveries(wallet_db)
        clock.to(delivery.next_attempt_at)

    [delivery] = await _deliveries(wallet_db)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (DeliveryStatus.FAILED, 3, None)
    assert [a.attempt for a in await _attempts(wallet_db, msg_id)] == [1, 2, 3]
    clock.advance(86_400)
    assert await hooks.deliver_due() == []


async def test_timeout_is_a_failed_attempt(wallet_db, receiver, make_hooks) -> None:
    rx, url = receiver
    rx.delay = 1.0
    hooks = make_hooks(wallet_db, timeout=0.2, lease=5.0, max_attempts=1)
    await _endpoint(wallet_db, rx, url, "a")
    await _emit(hooks, "payment.denied", {"payment_id": "p1", "rule": "daily_cap"})

    [attempt] = await hooks.deliver_due()

    assert attempt.status_code is None and attempt.error == "timeout after 0.2s"
    assert attempt.duration < 1.0
    [delivery] = await _deliveries(wallet_db)
    assert delivery.status == DeliveryStatus.FAILED


async def test_a_redirect_is_not_followed_and_fails_the_attempt(wallet_db, serve, make_hooks) -> None:
    async def moved(request: Request) -> Response:
        return Response(status_code=307, headers={"location": "/elsewhere"})

    url = serve(Starlette(routes=[Route("/hooks/a", moved, methods=["POST"])])).url
    hooks = make_hooks(wallet_db)
    await _add(wallet_db, f"{url}/hooks/a", ["payment.settled"])
    await _emit(hooks, "payment.settled", {"payment_id": "p1"})

    [attempt] = await hooks.deliver_due()

    assert (attempt.status_code, attempt.error) == (307, "HTTP 307")


def test_retry_delay_grows_with_seeded_jitter_and_is_capped(wallet_db) -> None:
    hooks = Webhooks(wallet_db, sealer=SEALER, backoff=5.0, max_backoff=60.0, jitter=0.5, rng=random.Random(7))
    again = Webhooks(wallet_db, sealer=SEALER, backoff=5.0, max_backoff=60.0, jitter=0.5, rng=random.Random(7))
    delays = [hooks.retry_delay(n) for n in range(1, 8)]
    assert delays == [again.retry_delay(n) for n in range(1, 8)]  # deterministic given the rng
    for n, d in enumerate(delays[:4], start=1):
        assert 5.0 * 2 ** (n - 1) <= d < 1.5 * 5.0 * 2 ** (n - 1)
    assert delays[:4] == sorted(delays[:4])
    assert all(60.0 <= d < 90.0 for d in delays[4:])


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"backoff": -1.0}, {"jitter": 1.0}, {"timeout": 10.0, "lease": 10.0}, {"batch": 0}],
)
def test_webhooks_refuses_bad_options(wallet_db, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Webhooks(wallet_db, sealer=SEALER, **options)


# ---------------------------------------------------------------------------------------------
# Outbox semantics
# ---------------------------------------------------------------------------------------------


async def test_event_in_a_rolled_back_transaction_is_never_delivered(wallet_db, receiver, make_hooks, clock) -> None:
    rx, url = receiver
    hooks = make_hooks(wallet_db)
    await _endpoint(wallet_db, rx, url, "a")

    with pytest.raises(RuntimeError, match="approval failed"):
        async with wallet_db.transaction() as conn:
            assert len(await hooks.enqueue(conn, "intent.approved", {"intent_id": "int_1"})) == 1
            raise RuntimeError("approval failed")

    assert await _deliveries(wallet_db) == []
    clock.advance(3600)
    assert await hooks.deliver_due() == []
    assert rx.requests == []


async def test_only_subscribed_event_types_reach_an_endpoint(wallet_db, receiver, make_hooks) -> None:
    rx, url = receiver
    hooks = make_hooks(wallet_db)
    await _endpoint(wallet_db, rx, url, "intents", ["intent.requested", "intent.approved"])
    await _endpoint(wallet_db, rx, url, "payments", ["payment.authorized", "payment.denied", "payment.settled"])
    paused = await _endpoint(wallet_db, rx, url, "paused")
    await hooks.set_endpoint_active(paused.id, False)
    with pytest.raises(KeyError):
        await hooks.set_endpoint_active("ep_missing", False)

    for event in EventType:
        await _emit(hooks, event, {"event": event.value})
    await hooks.deliver_due()

    def types(name: str) -> list[str]:
        return sorted(json.loads(r.body)["type"] for r in rx.at(name))

    assert types("intents") == ["intent.approved", "intent.requested"]
    assert types("payments") == ["payment.authorized", "payment.denied", "payment.settled"]
    assert types("paused") == []  # nothing queued for it: it was paused when the events happened
    assert all(r.verified for r in rx.requests)
    assert len(await _deliveries(wallet_db)) == 5  # killswitch.engaged had no active listener


async def test_pausing_an_endpoint_holds_its_pending_deliveries(wallet_db, receiver, make_hooks) -> None:
    rx, url = receiver
    hooks = make_hooks(wallet_db)
    ep = await _endpoint(wallet_db, rx, url, "a")
    await _emit(hooks, "payment.settled", {"payment_id": "p1"})
    await hooks.set_endpoint_active(ep.id, False)

    assert await hooks.deliver_due() == []

    await hooks.set_endpoint_active(ep.id, True)
    assert [a.status_code for a in await hooks.deliver_due()] == [204]

    # Removed: its pending deliveries are never sent, it leaves the listing, it cannot come back.
    await _emit(hooks, "payment.settled", {"payment_id": "p2"})
    await hooks.remove_endpoint(ep.id)
    assert await hooks.deliver_due() == []
    async with wallet_db.snapshot() as conn:
        assert await webhooks.endpoints(conn) == []
        assert [e.removed_at is not None for e in await webhooks.endpoints(conn, include_removed=True)] == [True]
    with pytest.raises(KeyError):
        await hooks.set_endpoint_active(ep.id, True)


async def test_enqueue_refuses_an_unknown_event_type_and_non_json_data(wallet_db, make_hooks) -> None:
    hooks = make_hooks(wallet_db)
    async with wallet_db.transaction() as conn:
        with pytest.raises(ValueError):
            await hooks.enqueue(conn, "payment.refunded", {})
        with pytest.raises(ValueError):
            await hooks.enqueue(conn, "payment.settled", {"amount": float("nan")})


def test_envelope_is_type_timestamp_data_with_secret_fields_redacted() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=timezone.utc)
    body = json.loads(webhooks.envelope(EventType.INTENT_REQUESTED, {"intent": "i1", "api_key": "sk_live"}, at))
    assert body == {
        "type": "intent.requested",
        "timestamp": "2026-01-02T03:04:05.600000Z",
        "data": {"intent": "i1", "api_key": "[redacted]"},
    }


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


async def test_two_concurrent_workers_deliver_each_message_exactly_once(wallet_db, receiver, make_hooks) -> None:
    rx, url = receiver
    rx.delay = 0.02  # keep requests in flight while the other worker claims
    await _endpoint(wallet_db, rx, url, "a")
    other_db = Database(wallet_db.url)  # a second engine on the same file: another process, in effect
    try:
        one = make_hooks(wallet_db, batch=3)
        two = make_hooks(other_db, batch=3)
        ids = [i for n in range(24) for i in await _emit(one, "payment.authorized", {"n": n})]

        a, b = await asyncio.gather(one.deliver_due(), two.deliver_due())
        c, d = await asyncio.gather(one.deliver_due(), one.deliver_due())  # nothing left, same object
    finally:
        await other_db.aclose()

    assert a and b  # both took part
    assert (c, d) == ([], [])
    sent = [r.headers["webhook-id"] for r in rx.at("a")]
    assert sorted(sent) == sorted(ids)  # each exactly once
    assert sorted(x.delivery_id for x in a + b) == sorted(ids)
    assert {x.status for x in await _deliveries(wallet_db)} == {DeliveryStatus.DELIVERED}
    assert [len(await _attempts(wallet_db, i)) for i in ids] == [1] * len(ids)


async def test_run_delivers_until_stopped(wallet_db, receiver) -> None:
    rx, url = receiver
    hooks = Webhooks(wallet_db, sealer=SEALER, allow_private_targets=True)  # the real clock, its own client
    try:
        await _endpoint(wallet_db, rx, url, "a")
        stop = asyncio.Event()
        task = asyncio.create_task(hooks.run(stop, interval=0.02))
        [msg_id] = await _emit(hooks, "intent.requested", {"intent_id": "int_1"})
        for _ in range(250):
            if rx.at("a"):
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    finally:
        await hooks.aclose()
    [req] = rx.at("a")
    assert req.verified and req.headers["webhook-id"] == msg_id


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_or_requests(wallet_db, receiver, make_hooks, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    # aiosqlite logs every statement with its bound parameters at DEBUG, the endpoint's INSERT
    # included: the service must keep that logger at INFO (see wallet.webhooks' docstring).
    caplog.set_level(logging.INFO, logger="aiosqlite")
    rx, url = receiver
    rx.fail_first["flaky"] = 1
    hooks = make_hooks(wallet_db, max_attempts=2)
    good = await _endpoint(wallet_db, rx, url, "good")
    flaky = await _endpoint(wallet_db, rx, url, "flaky")
    down = await _add(wallet_db, f"http://127.0.0.1:{_closed_port()}/x", list(EventType))

    await _emit(hooks, "payment.settled", {"payment_id": "p1"})
    await hooks.deliver_due()
    clock.advance(1.0)
    await hooks.deliver_due()

    secrets = [ep.secret for ep in (good, flaky, down)]
    needles = secrets + [s.removeprefix("whsec_") for s in secrets]
    async with wallet_db.snapshot() as conn:
        listed = await webhooks.endpoints(conn)
        shown = [repr(listed), repr(await webhooks.deliveries(conn)), repr(hooks), repr(good), str(good)]
        shown += [repr(await webhooks.attempts(conn, d.id)) for d in await webhooks.deliveries(conn)]
        rows = [dict(r) for r in (await conn.execute(webhooks.webhook_endpoints.select())).mappings()]
    assert [ep.secret for ep in listed] == [None] * 3  # shown once, at creation
    shown += [repr(row) for row in rows]  # sealed at rest: no column holds a secret
    raw = [base64.b64decode(s.removeprefix("whsec_")) for s in secrets]
    assert all(r not in row["sealed_secret"] for r in raw for row in rows)
    logged = caplog.text + "".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    sent = [json.dumps(r.headers) + r.body.decode() for r in rx.requests]
    assert any("p1" in line for line in sent) and "webhook" in caplog.text
    for needle in needles:
        assert needle not in logged
        assert all(needle not in text for text in shown)
        assert all(needle not in text for text in sent)


def test_exported_members() -> None:
    assert set(webhooks.__all__) == {
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
    }
    assert all(hasattr(webhooks, name) for name in webhooks.__all__)


# ---------------------------------------------------------------------------------------------
# Targets: no SSRF, at registration and at delivery
# ---------------------------------------------------------------------------------------------

PUBLIC = "93.184.215.14"  # a globally routable address; nothing is sent to it (fake resolver, mock transport)
REFUSED_NETWORKS = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:7f00:0/104", "::ffff:a9fe:0/112", "2002:7f00::/24", "64:ff9b::7f00:0/104",
    "2001:db8::/32",
]


class Dns:
    """A resolver the test scripts: ``answers[host]`` is what the next lookup returns."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {host.replace("_", "."): list(a) for host, a in answers.items()}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "no such host")
        return self.answers[host]


def _guarded(db: Database, dns: Dns, **options: Any) -> Webhooks:
    return Webhooks(db, sealer=SEALER, resolve=dns, backoff=1.0, jitter=0.0, **options)


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_every_non_public_address_is_refused_as_a_literal_and_through_dns(data: st.DataObject) -> None:
    network = ipaddress.ip_network(data.draw(st.sampled_from(REFUSED_NETWORKS)))
    offset = data.draw(st.integers(0, network.num_addresses - 1))
    address = network.network_address + offset
    literal = f"[{address}]" if address.version == 6 else str(address)
    hooks_dns = Dns(evil_example=[PUBLIC, str(address)])  # one bad answer among good ones is enough

    async def check() -> None:
        hooks = Webhooks(Database("sqlite+aiosqlite:///:memory:"), sealer=SEALER, resolve=hooks_dns)
        try:
            for url in (f"http://{literal}/hooks", "https://evil.example/hooks"):
                with pytest.raises(webhooks.TargetRefused, match="^url: .*non-public"):
                    await hooks.check_target(url)
        finally:
            await hooks.aclose()
            await hooks.db.aclose()

    asyncio.run(check())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://user:hunter2@hooks.example/x", "credentials"),
        ("http://:hunter2@hooks.example/x", "credentials"),
        ("file:///etc/passwd", "http"),
        ("gopher://hooks.example/x", "http"),
        ("http:///x", "http"),
        ("http://hooks.example:99999/x", "valid URL"),
        ("http://nowhere.example/x", "cannot resolve"),
    ],
)
async def test_add_endpoint_refuses_bad_targets_without_writing(wallet_db, url: str, match: str) -> None:
    hooks = _guarded(wallet_db, Dns(hooks_example=[PUBLIC]))
    try:
        with pytest.raises(webhooks.TargetRefused, match=match) as info:
            await hooks.add_endpoint(url, ["payment.settled"])
        assert "hunter2" not in str(info.value)
        async with wallet_db.snapshot() as conn:
            assert await webhooks.endpoints(conn, include_removed=True) == []
        assert (await hooks.add_endpoint("https://hooks.example/x", ["payment.settled"])).url.endswith("/x")
    finally:
        await hooks.aclose()


async def test_loopback_needs_the_operators_opt_in(wallet_db, receiver) -> None:
    _rx, url = receiver
    strict = _guarded(wallet_db, Dns())
    relaxed = _guarded(wallet_db, Dns(), allow_private_targets=True)
    try:
        with pytest.raises(webhooks.TargetRefused, match="127.0.0.1"):
            await strict.add_endpoint(f"{url}/hooks/a", ["payment.settled"])
        with pytest.raises(webhooks.TargetRefused, match="credentials"):  # the opt-in is about addresses only
            await relaxed.add_endpoint(url.replace("://", "://u:p@") + "/hooks/a", ["payment.settled"])
        assert (await relaxed.add_endpoint(f"{url}/hooks/a", ["payment.settled"])).active
    finally:
        await strict.aclose()
        await relaxed.aclose()


async def test_dns_rebinding_after_registration_is_refused_at_delivery(wallet_db, receiver, clock) -> None:
    rx, url = receiver
    port = url.rsplit(":", 1)[1]
    dns = Dns(rebind_example=[PUBLIC])
    hooks = _guarded(wallet_db, dns, clock=clock, max_attempts=2)
    try:
        endpoint = await hooks.add_endpoint(f"http://rebind.example:{port}/hooks/a", ["payment.settled"])
        rx.secrets["a"] = endpoint.secret
        dns.answers["rebind.example"] = ["127.0.0.1"]  # the attacker's DNS now points at the wallet's host
        await _emit(hooks, "payment.settled", {"payment_id": "p1"})
        [attempt] = await hooks.deliver_due()
        assert attempt.status_code is None and attempt.error.startswith("refused target: url: 'rebind.example'")
        assert rx.requests == []
        assert dns.lookups == ["rebind.example", "rebind.example"]  # at registration and before the attempt
    finally:
        await hooks.aclose()


async def test_a_delivery_connects_to_the_checked_address_with_host_and_sni_kept(wallet_db, clock) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    dns = Dns(hooks_example=[PUBLIC])
    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    hooks = _guarded(wallet_db, dns, clock=clock, http=http)
    try:
        endpoint = await hooks.add_endpoint("https://hooks.example:8443/in?x=1", ["payment.settled"])
        await _emit(hooks, "payment.settled", {"payment_id": "p1"})
        dns.answers["hooks.example"] = ["1.1.1.1"]  # a new public answer: the attempt follows it
        [attempt] = await hooks.deliver_due()
    finally:
        await hooks.aclose()
        await http.aclose()
    assert attempt.ok
    [request] = seen
    assert (request.url.host, request.url.port, request.url.raw_path) == ("1.1.1.1", 8443, b"/in?x=1")
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    Webhook(endpoint.secret).verify(request.content, dict(request.headers))


async def test_a_secret_copied_to_another_endpoint_row_does_not_open(wallet_db, receiver, make_hooks) -> None:
    rx, url = receiver
    hooks = make_hooks(wallet_db)
    first = await _endpoint(wallet_db, rx, url, "a")
    second = await _endpoint(wallet_db, rx, url, "b")
    e = webhooks.webhook_endpoints
    async with wallet_db.transaction() as conn:
        blob = (await conn.execute(select(e.c.sealed_secret).where(e.c.id == first.id))).scalar_one()
        await conn.execute(update(e).where(e.c.id == second.id).values(sealed_secret=blob))
    await _emit(hooks, "payment.settled", {"payment_id": "p1"})
    outcomes = {a.delivery_id: a for a in await hooks.deliver_due()}
    assert sorted((str(a.status_code), a.error or "") for a in outcomes.values()) == [
        ("204", ""), ("None", "the endpoint's secret does not open (AEP2_WALLET_KEY changed?)")
    ]
    assert [r.path for r in rx.requests] == ["a"]
