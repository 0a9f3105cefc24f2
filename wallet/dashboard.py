"""The owner's live dashboard: Jinja2 pages with htmx, served by the wallet app under ``/dashboard``.

What it shows: balances (the escrow on chain when the service's ``chain`` can read it, and the
ledger's view), intents with their budget used, payments on their way to the chain (authorized,
then accepted by the payee, in batch #k, settled: ``wallet.settlements``) with the transaction,
block, the batch's proving seconds and gas, and a panel of those batches, policy decisions
with the deciding rule, reviews with the council's ballots (each judge's rationale and risk
score), cards, the ledger's recent transactions and the spend per destination over the last
seven days as a Chart.js chart. The owner approves or denies pending intents and reviews,
engages or releases the kill switch and cancels cards.

Live. The page subscribes to ``/dashboard/events`` (Server-Sent Events, ``sse-starlette``;
htmx's ``sse`` extension on the page). The server polls the audit log's head every
``POLL_SECONDS`` and sends ``update`` when it advances: every change of money or state
appends an audit record in the transaction that makes it, so the head is the one signal
that covers them all. Each section re-fetches its fragment on ``update``; nothing reloads.

Credentials. The owner token, as ``Authorization: Bearer`` or through the login form, which
sets an HttpOnly, SameSite=Strict session cookie (Secure over https). The cookie is a nonce,
an expiry and an HMAC under a key derived from the owner token, so nothing is stored, and
changing the owner token ends every session. Failed logins count against the API's brake.

CSRF. Every POST carries a token, in the ``csrf_token`` form field or the ``X-CSRF-Token``
header: an HMAC of the session's nonce (a bearer caller's session is ``"bearer"``). The login
form has its own, bound to a short-lived pre-login cookie. A missing or wrong token is 403;
a missing credential is 401, checked first.

Secrets. The pages show ids, amounts, hosts, rules and the last four digits of a card, never
an API key, a session key, a card number or CVV, a payment header or a webhook secret. A
strict Content-Security-Policy (scripts and styles from this origin only) goes with every page.

Assets. htmx, its SSE extension and Chart.js come from ``node_modules`` (npm, with the rest
of the toolchain) and are served from here: the page needs no CDN.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import desc, func, select
from sse_starlette import EventSourceResponse
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from . import audit, ledger
from .cards import TOKEN_DECIMALS, CardIssuer, card_spends
from .db import accounts, entries, transactions
from .ledger import AccountKind, LedgerError
from .council import tally, wallet_council_votes
from .service import IntentStatus, PaymentStatus, ReviewStatus, WalletError, WalletService, wallet_decisions, wallet_payments
from .settlements import SettlementStage, wallet_settlements

__all__ = ["dashboard_mount", "usd", "OwnerCheck", "EscrowBalance", "DASHBOARD_PATH", "CSRF_HEADER", "CSRF_FIELD",
           "SESSION_COOKIE"]

#: Where ``create_app`` mounts the dashboard.
DASHBOARD_PATH = "/dashboard"
SESSION_COOKIE = "wallet_dashboard"
_LOGIN_COOKIE = "wallet_dashboard_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: How long a login lasts (seconds).
SESSION_SECONDS = 12 * 3600
#: How long the login form may stay open before it must be reloaded (seconds).
_LOGIN_SECONDS = 600
#: How often the event stream reads the audit head (seconds).
POLL_SECONDS = 0.5
#: Rows per table; the ledger and the audit log keep the rest.
RECENT = 50
SPEND_DAYS = 7
#: A chain read that takes longer shows the escrow as unavailable rather than holding the page.
_CHAIN_TIMEOUT = 3.0
#: An action's form is a few fields; anything larger is refused unread.
_MAX_FORM = 16 * 1024
_ACTOR = "owner:dashboard"

_HERE = Path(__file__).resolve().parent
_NODE_MODULES = _HERE.parent / "node_modules"
#: Served name -> file: the dashboard's own assets, then the npm packages it uses.
_ASSETS: dict[str, Path] = {
    "dashboard.css": _HERE / "static" / "dashboard.css",
    "dashboard.js": _HERE / "static" / "dashboard.js",
    "htmx.min.js": _NODE_MODULES / "htmx.org" / "dist" / "htmx.min.js",
    "sse.js": _NODE_MODULES / "htmx-ext-sse" / "dist" / "sse.js",
    "chart.umd.min.js": _NODE_MODULES / "chart.js" / "dist" / "chart.umd.min.js",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_FRAGMENTS = ("controls", "balances", "intents", "reviews", "payments", "decisions", "cards", "ledger", "spend")


class OwnerCheck(Protocol):
    """``_Api.is_owner_token``: whether a token is the owner's, counted by the brute-force brake."""

    async def __call__(self, request: Request, token: str) -> bool: ...


@runtime_checkable
class EscrowBalance(Protocol):
    """A chain reader for the owner's escrow (``payer.Escrow`` is one): base units, synchronous."""

    def balance(self) -> int: ...


def dashboard_mount(
    service: WalletService,
    *,
    owner_token: str,
    is_owner_token: OwnerCheck,
    cards: CardIssuer | None = None,
    clock: Callable[[], float] = time.time,
) -> Mount:
    """The dashboard's routes, to mount at ``DASHBOARD_PATH`` of the wallet app.

    ``owner_token`` keys the session cookies and CSRF tokens; ``is_owner_token`` checks a token
    presented as a bearer header or in the login form. ``cards``: with an issuer, cards and card
    reviews are shown and can be acted on.
    """
    return Mount(DASHBOARD_PATH, routes=_Dashboard(service, owner_token, is_owner_token, cards, clock).routes())


class _Sessions:
    """Stateless session cookies and CSRF tokens: HMACs under a key derived from the owner token."""

    def __init__(self, owner_token: str, clock: Callable[[], float]) -> None:
        self._key = hmac.new(owner_token.encode(), b"wallet.dashboard.session.v1", hashlib.sha256).digest()
        self._clock = clock

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    def _issue(self, purpose: str, lifetime: int) -> str:
        nonce, expires = secrets.token_urlsafe(18), str(int(self._clock()) + lifetime)
        return f"{nonce}.{expires}.{self._mac(purpose, nonce, expires)}"

    def _nonce(self, purpose: str, value: str | None) -> str | None:
        parts = (value or "").split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        nonce, expires, mac = parts
        if not hmac.compare_digest(mac, self._mac(purpose, nonce, expires)) or int(expires) <= self._clock():
            return None
        return nonce

    def issue_session(self) -> str:
        return self._issue("session", SESSION_SECONDS)

    def session(self, cookie: str | None) -> str | None:
        """The session id of a valid, unexpired cookie, else None."""
        return self._nonce("session", cookie)

    def issue_login(self) -> str:
        return self._issue("login", _LOGIN_SECONDS)

    def login(self, cookie: str | None) -> str | None:
        return self._nonce("login", cookie)

    def csrf(self, session_id: str) -> str:
        return self._mac("csrf", session_id)

    def check_csrf(self, session_id: str, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(str(sent), self.csrf(session_id))


def usd(amount: int | None) -> str:
    """Base units as dollars, trimmed but with at least cents: 140000 → ``$0.14``, 1000 → ``$0.001``."""
    if amount is None:
        return "—"
    value = Decimal(amount).scaleb(-TOKEN_DECIMALS)
    text = f"{value:,.{TOKEN_DECIMALS}f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _short(value: str | None, keep: int = 10) -> str:
    if not value:
        return "—"
    return value if len(value) <= keep + 2 else value[:keep] + "…"


class _Dashboard:
    """The handlers, sharing the service, the session keys and the templates."""

    def __init__(
        self,
        service: WalletService,
        owner_token: str,
        is_owner_token: OwnerCheck,
        cards: CardIssuer | None,
        clock: Callable[[], float],
    ) -> None:
        self.service = service
        self.cards = cards
        self.sessions = _Sessions(owner_token, clock)
        self._is_owner_token = is_owner_token
        self._clock = clock
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.filters["usd"] = usd
        self.templates.env.filters["short"] = _short

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/events", self.events, methods=["GET"]),
            Route("/fragments/{name}", self.fragment, methods=["GET"]),
            Route("/assets/{name}", self.asset, methods=["GET"]),
            Route("/intents/{item_id}/{decision}", self.decide_intent, methods=["POST"]),
            Route("/reviews/{item_id}/{decision}", self.decide_review, methods=["POST"]),
            Route("/card-reviews/{item_id}/{decision}", self.decide_card_review, methods=["POST"]),
            Route("/cards/{item_id}/cancel", self.cancel_card, methods=["POST"]),
            Route("/kill-switch/{decision}", self.kill_switch, methods=["POST"]),
        ]

    # -- credentials ----------------------------------------------------------------------------

    async def _session(self, request: Request) -> str | None:
        """The caller's session id: its cookie's, ``"bearer"`` for the owner token, else None."""
        session = self.sessions.session(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return session
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and await self._is_owner_token(request, token.strip()):
            return "bearer"
        return None

    @staticmethod
    def _unauthenticated() -> Response:
        return PlainTextResponse("owner credential required", status_code=401,
                                 headers={"WWW-Authenticate": "Bearer", **_SECURITY_HEADERS})

    def _html(self, request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        return self.templates.TemplateResponse(
            request, name, {"base": _base(request), **context}, status_code=status_code, headers=_SECURITY_HEADERS
        )

    @staticmethod
    def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=DASHBOARD_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    # -- pages ----------------------------------------------------------------------------------

    async def login_form(self, request: Request, *, error: str | None = None, status_code: int = 200) -> Response:
        """The login form, with a fresh pre-login cookie and the CSRF token bound to it."""
        cookie = self.sessions.issue_login()
        nonce = self.sessions.login(cookie)
        assert nonce is not None  # just issued
        response = self._html(request, "dashboard/login.html",
                              {"csrf": self.sessions.csrf("login:" + nonce), "error": error}, status_code)
        self._cookie(request, response, _LOGIN_COOKIE, cookie, _LOGIN_SECONDS)
        return response

    async def login(self, request: Request) -> Response:
        form = await self._form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        nonce = self.sessions.login(request.cookies.get(_LOGIN_COOKIE))
        if nonce is None or not self.sessions.check_csrf("login:" + nonce, _text(form.get(CSRF_FIELD))):
            return PlainTextResponse("CSRF token missing or wrong: reload the login page", status_code=403,
                                     headers=_SECURITY_HEADERS)
        if not await self._is_owner_token(request, _text(form.get("token")) or ""):
            return await self.login_form(request, error="That is not the owner token.", status_code=401)
        response = RedirectResponse(f"{_base(request)}/", status_code=303)
        self._cookie(request, response, SESSION_COOKIE, self.sessions.issue_session(), SESSION_SECONDS)
        response.delete_cookie(_LOGIN_COOKIE, path=DASHBOARD_PATH)
        return response

    async def logout(self, request: Request) -> Response:
        guarded = await self._guard(request)
        if isinstance(guarded, Response):
            return guarded
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=DASHBOARD_PATH)
        return response

    async def page(self, request: Request) -> Response:
        session = await self._session(request)
        if session is None:
            return RedirectResponse(f"{_base(request)}/login", status_code=303)
        return self._html(request, "dashboard/page.html",
                          {"csrf": self.sessions.csrf(session), "fragments": _FRAGMENTS})

    async def fragment(self, request: Request) -> Response:
        session = await self._session(request)
        if session is None:
            return self._unauthenticated()
        name = request.path_params["name"]
        if name not in _FRAGMENTS:
            return PlainTextResponse("no such fragment", status_code=404)
        context = await getattr(self, f"_{name}")()
        return self._html(request, f"dashboard/{name}.html", {"csrf": self.sessions.csrf(session), **context})

    async def asset(self, request: Request) -> Response:
        path = _ASSETS.get(request.path_params["name"])
        if path is None or not path.is_file():
            return PlainTextResponse("no such asset (run `npm install`)", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def events(self, request: Request) -> Response:
        """``update`` (data: the audit head's seq) each time the audit log grows."""
        if await self._session(request) is None:
            return self._unauthenticated()

        async def stream() -> Any:
            seen = await self._head()
            while True:
                await asyncio.sleep(POLL_SECONDS)
                head = await self._head()
                if head != seen:
                    seen = head
                    yield {"event": "update", "data": str(head)}

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    async def _head(self) -> int:
        async with self.service.db.snapshot() as conn:
            return (await audit.head(conn))[0]

    # -- actions --------------------------------------------------------------------------------

    @staticmethod
    async def _form(request: Request) -> FormData | None:
        """The form, or None when it is declared larger than an action's form can be."""
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > _MAX_FORM:
            return None
        return await request.form()

    async def _guard(self, request: Request) -> FormData | Response:
        """A POST's form once its credential (401), size (413) and CSRF token (403) pass,
        else the refusal."""
        session = await self._session(request)
        if session is None:
            return self._unauthenticated()
        form = await self._form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        if not self.sessions.check_csrf(session, request.headers.get(CSRF_HEADER) or _text(form.get(CSRF_FIELD))):
            return PlainTextResponse("CSRF token missing or wrong", status_code=403, headers=_SECURITY_HEADERS)
        return form

    async def _act(self, request: Request, run: Callable[[Request, FormData], Awaitable[str]]) -> Response:
        """``run`` once the POST passes ``_guard``: htmx gets a message fragment (409 when the
        wallet refused), a plain form a redirect to the page."""
        form = await self._guard(request)
        if isinstance(form, Response):
            return form
        status, message = 200, ""
        try:
            message = await run(request, form)
        except (WalletError, LedgerError) as exc:
            status, message = 409, getattr(exc, "reason", str(exc))
        if request.headers.get("hx-request") != "true":
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return self._html(request, "dashboard/flash.html", {"message": message, "ok": status == 200}, status)

    async def decide_intent(self, request: Request) -> Response:
        return await self._act(request, self._decide_intent)

    async def _decide_intent(self, request: Request, _form: FormData) -> str:
        intent_id, decision = request.path_params["item_id"], _decision(request)
        if decision == "approve":
            await self.service.approve_intent(intent_id, actor=_ACTOR)
        else:
            await self.service.deny_intent(intent_id, actor=_ACTOR, reason="denied from the dashboard")
        return f"intent {intent_id} {decision}d"

    async def decide_review(self, request: Request) -> Response:
        return await self._act(request, self._decide_review)

    async def _decide_review(self, request: Request, _form: FormData) -> str:
        review_id, decision = request.path_params["item_id"], _decision(request)
        if decision == "approve":
            auth = await self.service.approve_review(review_id, actor=_ACTOR)
            return f"review {review_id}: {auth.outcome} ({auth.rule})"
        await self.service.deny_review(review_id, actor=_ACTOR, reason="denied from the dashboard")
        return f"review {review_id} denied"

    async def decide_card_review(self, request: Request) -> Response:
        return await self._act(request, self._decide_card_review)

    async def _decide_card_review(self, request: Request, _form: FormData) -> str:
        cards = self._card_issuer()
        review_id, decision = request.path_params["item_id"], _decision(request)
        if decision == "approve":
            result = await cards.approve_review(review_id, actor=_ACTOR)
            return f"card review {review_id}: {result.outcome} ({result.rule})"
        await cards.deny_review(review_id, actor=_ACTOR, reason="denied from the dashboard")
        return f"card review {review_id} denied"

    async def cancel_card(self, request: Request) -> Response:
        return await self._act(request, self._cancel_card)

    async def _cancel_card(self, request: Request, _form: FormData) -> str:
        card = await self._card_issuer().cancel(request.path_params["item_id"], actor=_ACTOR,
                                                reason="cancelled from the dashboard")
        return f"card {card.id} {card.status.value}"

    async def kill_switch(self, request: Request) -> Response:
        return await self._act(request, self._kill_switch)

    async def _kill_switch(self, request: Request, form: FormData) -> str:
        decision = request.path_params["decision"]
        if decision == "engage":
            revoked = await self.service.engage_kill_switch(actor=_ACTOR, reason="engaged from the dashboard",
                                                            revoke=form.get("revoke") == "on")
            return f"kill switch engaged; {len(revoked)} intents revoked"
        if decision == "release":
            await self.service.disengage_kill_switch(actor=_ACTOR)
            return "kill switch released"
        raise _NoSuchAction(decision)

    def _card_issuer(self) -> CardIssuer:
        if self.cards is None:
            raise _NoSuchAction("this wallet issues no cards")
        return self.cards

    # -- fragments' data ------------------------------------------------------------------------

    async def _controls(self) -> dict[str, Any]:
        switch = await self.service.kill_switch()
        return {"engaged": switch.engaged, "stopped_agents": sorted(switch.agents)}

    async def _balances(self) -> dict[str, Any]:
        owner = self.service.owner_ref
        async with self.service.db.snapshot() as conn:
            totals = {kind: sum((await ledger.balances(conn, kind)).values())
                      for kind in (AccountKind.INTENT, AccountKind.RESERVED, AccountKind.CARD, AccountKind.PAYEE,
                                   AccountKind.MERCHANT)}
            available = (await ledger.balances(conn, AccountKind.OWNER)).get(owner, 0)
            escrow = await ledger.escrow(conn, owner)
        chain, chain_error = None, None
        if isinstance(self.service.chain, EscrowBalance):
            try:
                chain = await asyncio.wait_for(asyncio.to_thread(self.service.chain.balance), _CHAIN_TIMEOUT)
            except Exception as exc:  # a node down or slow must not take the page with it
                chain_error = type(exc).__name__
        return {
            "chain": chain, "chain_error": chain_error, "has_chain": isinstance(self.service.chain, EscrowBalance),
            "escrow": escrow, "available": available, "budgets": totals[AccountKind.INTENT],
            "reserved": totals[AccountKind.RESERVED] + totals[AccountKind.CARD],
            "settled": totals[AccountKind.PAYEE] + totals[AccountKind.MERCHANT],
        }

    async def _intents(self) -> dict[str, Any]:
        records = list(reversed(await self.service.intents()))[:RECENT]
        rows = [{"record": r, "used": None if r.remaining is None else r.budget - r.remaining} for r in records]
        return {"intents": rows, "pending": IntentStatus.PENDING_APPROVAL}

    async def _reviews(self) -> dict[str, Any]:
        reviews = list(reversed(await self.service.reviews(status=None)))[:RECENT]
        async with self.service.db.snapshot() as conn:
            votes = (await conn.execute(
                select(wallet_council_votes).where(wallet_council_votes.c.review_id.in_([r.id for r in reviews]))
                .order_by(wallet_council_votes.c.id)
            )).all()
        ballots: dict[str, list[Any]] = defaultdict(list)
        for vote in votes:
            ballots[vote.review_id].append(vote)
        verdicts = {rid: tally([b.vote for b in rows], rows[0].quorum) for rid, rows in ballots.items()}
        card_reviews = [] if self.cards is None else await self.cards.reviews(status="pending")
        return {"reviews": reviews, "ballots": ballots, "verdicts": verdicts, "pending": ReviewStatus.PENDING,
                "card_reviews": card_reviews}

    async def _payments(self) -> dict[str, Any]:
        """The recent payments with their stage on the way to the chain, and the batches they are in."""
        p, s = wallet_payments, wallet_settlements
        async with self.service.db.snapshot() as conn:
            rows = (await conn.execute(
                select(p.c.payment_id, p.c.agent_id, p.c.intent_id, p.c.payee, p.c.host, p.c.amount, p.c.status,
                       p.c.receipt, p.c.created_at, s.c.stage, s.c.batch_id, s.c.batch_status, s.c.tx_hash,
                       s.c.block, s.c.prove_seconds, s.c.gas_used, s.c.reason)
                .outerjoin(s, s.c.payment_id == p.c.payment_id)
                .order_by(desc(p.c.at)).limit(RECENT)
            )).all()
        payments = [{"row": row, "stage": _stage(row), "tx": row.tx_hash or _receipt_tx(row.receipt)} for row in rows]
        batches: dict[int, dict[str, Any]] = {}
        for row in rows:
            if row.batch_id is not None:
                batch = batches.setdefault(row.batch_id, {"id": row.batch_id, "payments": 0, "amount": 0})
                batch["payments"] += 1
                batch["amount"] += row.amount
                batch.update(status=row.batch_status, tx=row.tx_hash, block=row.block,
                             prove_seconds=row.prove_seconds, gas_used=row.gas_used)
        return {"payments": payments, "batches": sorted(batches.values(), key=lambda b: -b["id"])}

    async def _decisions(self) -> dict[str, Any]:
        async with self.service.db.snapshot() as conn:
            rows = (await conn.execute(
                select(wallet_decisions.c.id, wallet_decisions.c.at, wallet_decisions.c.agent_id,
                       wallet_decisions.c.outcome, wallet_decisions.c.rule, wallet_decisions.c.reason,
                       wallet_decisions.c.payment_id, wallet_decisions.c.review_id)
                .order_by(desc(wallet_decisions.c.id)).limit(RECENT)
            )).all()
        return {"decisions": rows}

    async def _cards(self) -> dict[str, Any]:
        cards = [] if self.cards is None else list(reversed(await self.cards.cards()))[:RECENT]
        return {"cards": cards, "issuing": self.cards is not None}

    async def _ledger(self) -> dict[str, Any]:
        debit, credit = accounts.alias("debit"), accounts.alias("credit")
        recent = select(transactions.c.id).order_by(desc(transactions.c.id)).limit(RECENT)
        async with self.service.db.snapshot() as conn:
            rows = (await conn.execute(
                select(transactions.c.id, transactions.c.kind, transactions.c.created_at, transactions.c.memo,
                       entries.c.amount, debit.c.kind.label("debit_kind"), debit.c.ref.label("debit_ref"),
                       credit.c.kind.label("credit_kind"), credit.c.ref.label("credit_ref"))
                .join(entries, entries.c.transaction_id == transactions.c.id)
                .join(debit, debit.c.id == entries.c.debit_account)
                .join(credit, credit.c.id == entries.c.credit_account)
                .where(transactions.c.id.in_(recent))
                .order_by(desc(transactions.c.id), entries.c.id)
            )).all()
        return {"entries": rows}

    async def _spend(self) -> dict[str, Any]:
        """Per destination (the paid host, or the card's payee), what still counts over the window."""
        since = self._clock() - SPEND_DAYS * 86_400
        destination = func.coalesce(wallet_payments.c.host, wallet_payments.c.payee)
        async with self.service.db.snapshot() as conn:
            paid = (await conn.execute(
                select(destination.label("destination"), func.sum(wallet_payments.c.amount).label("amount"))
                .where(wallet_payments.c.at > since, wallet_payments.c.status != PaymentStatus.RELEASED.value)
                .group_by(destination)
            )).all()
            by_card = await card_spends(conn, since) if self.cards is not None else []
        totals: dict[str, int] = defaultdict(int)
        for row in paid:
            totals[str(row.destination)] += int(row.amount)
        for spend in by_card:
            totals[f"card {_short(spend.payee)}"] += spend.amount
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        chart = {"labels": [f"→ {name}" for name, _ in ranked],
                 "values": [float(Decimal(amount).scaleb(-TOKEN_DECIMALS)) for _, amount in ranked]}
        return {"spend": ranked, "chart": json.dumps(chart), "days": SPEND_DAYS}


class _NoSuchAction(WalletError):
    """An action path that names nothing the dashboard does (shown as a refused action)."""

    def __init__(self, what: str) -> None:
        super().__init__("action", f"no such action: {what}")


def _base(request: Request) -> str:
    """The dashboard's path prefix as mounted (``/dashboard``, behind any proxy's root path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _decision(request: Request) -> str:
    decision = str(request.path_params["decision"])
    if decision not in ("approve", "deny"):
        raise _NoSuchAction(decision)
    return decision


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _stage(row: Any) -> str:
    """Where a payment is, for the page: ``authorized`` or ``released`` (the wallet's own
    status), else the chain's stage: ``accepted`` (its receipt booked, no batch yet),
    ``in_batch``, ``settled`` (its batch landed) or ``failed``."""
    if row.status != PaymentStatus.SETTLED.value:
        return str(row.status)
    if row.stage == SettlementStage.SETTLED_ON_CHAIN.value:
        return "settled"
    return str(row.stage or SettlementStage.ACCEPTED.value)


def _receipt_tx(receipt: str | None) -> str | None:
    """The settlement transaction a gateway's receipt names, if any."""
    if not receipt:
        return None
    try:
        data = json.loads(receipt)
    except ValueError:
        return None
    tx = data.get("transaction") if isinstance(data, dict) else None
    return tx if isinstance(tx, str) and tx else None
