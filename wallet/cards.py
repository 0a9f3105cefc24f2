"""AgentCards: single-use virtual cards minted from an intent, and the issuer's authorization.

For payees that take cards rather than x402, the wallet mints a card scoped to one purchase.
This module is the issuer: it mints, answers merchants' authorization requests in real time,
and books every step in the ledger. The HTTP routes (``wallet.app``) and the CLI
(``python -m wallet card …``) are thin layers over :class:`CardIssuer`.

Minting. A card is a spend like any other: ``CardIssuer.mint`` evaluates it with
``policy.evaluate`` on the agent's rules, the intent's limits and the spend history, inside the
same serialized transaction as ``WalletService.authorize_payment``. Its payee is a pseudo-address
(``card_payee``) derived from the merchant the card is locked to, or the one "any merchant"
address, so an owner can name card merchants in allowlists, denylists and per-payee caps; an
intent that names its payees funds no card unless it names that address too (fail closed). A
card request that goes to ``review`` is kept in ``wallet_card_reviews``; the owner, or the
``CardReviewer`` hook (the AI council), approves or denies it, and the approved card is shown
to its agent at its next poll. Card spends count against the caps of every later spend, x402
mandates included (``WalletService.spend_sources``), until the card expires or is cancelled.

Numbers. 16 digits (configurable) in the issuer BIN of ``IssuerBin``, Luhn-valid (ISO/IEC
7812-1 annex B), a 3-digit CVV and an expiry: the printed month/year and an exact time. The
number and CVV are shown once, to the agent that minted the card (the mint answer, or the
first poll of an approved review); they are stored sealed (``keys.Sealer``, AES-256-GCM, the
associated data bound to the card id) and found again by ``HMAC-SHA256(lookup key, number)``,
never by plaintext. The lookup key is random, kept sealed in ``wallet_card_keys`` (it survives
a rotation of the sealing key: ``reseal`` it like any blob). Everywhere else, audit trail and
webhooks included, only the last 4 digits appear.

State machine (every transition an audit record and a ``card.*`` webhook)::

    active ──authorize──▶ authorized ──capture──▶ used
      │ └──sweeper──▶ expired            │
      └──cancel──▶ cancelled ◀──cancel, reverse, authorization lapsed

Issuer authorization, modelled on card issuers' real-time authorization (Stripe Issuing's
authorization request and spending controls): an acquirer, with its own credential
(``add_acquirer``; neither an agent key nor the owner token), sends number, expiry, CVV,
amount, merchant id and MCC. The answer is approve, or decline with one ``DeclineReason``.
Checks run in a fixed order, card data first (``invalid_card``, ``incorrect_cvv``,
``incorrect_expiry``), then the card's state and spending controls, so a caller without the
CVV learns nothing of the card's state; number and CVV are compared in constant time. The card
row is locked (``SELECT … FOR UPDATE``, plus SQLite's single writer) and moved by a conditional
``UPDATE … WHERE status = 'active'``: of any number of concurrent authorizations exactly one is
approved. Then capture (all or part; a partial capture returns the rest to the intent),
reversal (before capture: the card is cancelled, its hold released) and refunds (after
capture, any number, never more than captured).

Ledger (``wallet.ledger``): ``card_hold`` at mint (intent → card), ``card_capture`` at use
(card → merchant, the rest card → intent), ``card_release`` at expiry, cancel or reversal
(card → intent), ``card_refund`` (merchant → card → intent). What returns to an intent that is
no longer active goes on to the owner, as a released mandate's does.

Errors are the service's (``wallet.service``): ``NotFound``, ``InvalidState``,
``InvalidRequest``, ``Unauthenticated``, ``IdempotencyConflict``; a decline is an answer, not
an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
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
    UniqueConstraint,
    case,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import audit, ledger
from .db import metadata, serialize, statement_guard, utc_now
from .keys import ApiKeyRecord, averify_api_key, issue_api_key
from .council import COUNCIL_ACTOR, Council, SpendCase, store_votes
from .policy import Decision, Outcome, Rule, Spend, SpendHistory, SpendRequest, evaluate, mission_check
from .service import _SPEND_LOCK, _agent_actor, _new_id, _positive, _same_request
from .service import (
    InvalidRequest,
    row_or_not_found,
    InvalidState,
    NotFound,
    Unauthenticated,
    WalletService,
    wallet_decisions,
)
from .webhooks import EventType

__all__ = [
    "CardIssuer",
    "IssuerBin",
    "Card",
    "CardSecrets",
    "MintResult",
    "CardAuthorization",
    "CardReview",
    "CardVerdict",
    "CardReviewer",
    "CouncilCardReviewer",
    "NewAcquirer",
    "CardStatus",
    "AuthorizationStatus",
    "DeclineReason",
    "TOKEN_DECIMALS",
    "DEFAULT_BIN",
    "luhn_valid",
    "luhn_check_digit",
    "card_payee",
    "card_spends",
    "to_base_units",
    "wallet_cards",
    "wallet_card_reviews",
    "wallet_card_authorizations",
    "wallet_acquirers",
    "wallet_card_keys",
]

#: Decimals of the escrow's token (USDC): ``to_base_units("25.00") == 25_000_000``.
TOKEN_DECIMALS = 6
#: The default issuer BIN: 424242, the range card networks' test environments use (Stripe's
#: test Visa); no live issuer authorizes it.
DEFAULT_BIN = "424242"
#: Default card lifetime (seconds), always cut at the funding intent's ``validBefore``.
DEFAULT_TTL_SECONDS = 86_400
#: An authorization not captured or reversed within this many seconds lapses (the sweeper
#: cancels the card), as issuers let uncaptured authorizations expire after about a week.
DEFAULT_AUTHORIZATION_TTL = 7 * 86_400

_CARD_AAD = b"aep2/wallet/card/v1"
_LOOKUP_AAD = b"aep2/wallet/card-lookup-key/v1"
_LOOKUP_KEY_NAME = "number-lookup"
_PAYEE_LABEL = b"aep2/wallet/card-payee/v1\x00"
_MAX_TTL = 366 * 86_400
_ACQUIRER_PREFIX = "acq_"


class CardStatus(StrEnum):
    ACTIVE = "active"
    AUTHORIZED = "authorized"
    USED = "used"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


#: The allowed moves of the state machine drawn in the module's docstring.
_TRANSITIONS: dict[CardStatus, frozenset[CardStatus]] = {
    CardStatus.ACTIVE: frozenset({CardStatus.AUTHORIZED, CardStatus.EXPIRED, CardStatus.CANCELLED}),
    CardStatus.AUTHORIZED: frozenset({CardStatus.USED, CardStatus.CANCELLED}),
}
_EVENTS = {
    CardStatus.AUTHORIZED: EventType.CARD_AUTHORIZED,
    CardStatus.USED: EventType.CARD_USED,
    CardStatus.EXPIRED: EventType.CARD_EXPIRED,
    CardStatus.CANCELLED: EventType.CARD_CANCELLED,
}


class AuthorizationStatus(StrEnum):
    PENDING = "pending"  # approved, waiting for capture or reversal
    CAPTURED = "captured"
    REVERSED = "reversed"  # by the acquirer, by a cancelled card, or lapsed
    DECLINED = "declined"


class DeclineReason(StrEnum):
    """Why an authorization was declined: the only thing a decline says. Values are API."""

    INVALID_CARD = "invalid_card"  # no card has this number (or it is malformed)
    INCORRECT_CVV = "incorrect_cvv"
    INCORRECT_EXPIRY = "incorrect_expiry"  # the expiry presented is not the card's
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ALREADY_USED = "already_used"  # single use: authorized or used already
    WRONG_MERCHANT = "wrong_merchant"  # the card is locked to another merchant id or MCC
    OVER_AMOUNT = "over_amount"  # above the amount locked at mint


# ---------------------------------------------------------------------------------------------
# Tables (on ``wallet.db.metadata``; created by ``Database.create()`` once this module is imported)
# ---------------------------------------------------------------------------------------------

wallet_cards = Table(
    "wallet_cards",
    metadata,
    Column("id", String(40), primary_key=True),  # card_…; the ledger's card account ref
    Column("agent_id", String(40), ForeignKey("wallet_agents.id"), nullable=False),
    Column("intent_id", String(40), ForeignKey("wallet_intents.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),  # base units, locked at mint
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("payee", String(42), nullable=False),  # card_payee(merchant_id), lower-case hex
    Column("merchant_id", String(200), nullable=True),
    Column("mcc", String(4), nullable=True),
    Column("last4", String(4), nullable=False),
    Column("exp_month", Integer, nullable=False),
    Column("exp_year", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),  # unix seconds
    Column("at", Float, nullable=False),  # unix seconds of the mint decision (the policy's clock)
    Column("authorized_at", Float, nullable=True),
    Column("number_hash", String(64), nullable=False, unique=True),  # HMAC-SHA256(lookup key, number)
    Column("sealed", LargeBinary, nullable=False),  # keys.Sealer blob of "number:cvv"
    Column("revealed_at", String(32), nullable=True),  # when the agent was shown number and CVV
    Column("decision_id", Integer, ForeignKey("wallet_decisions.id"), nullable=False),
    Column("review_id", String(40), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    UniqueConstraint("agent_id", "idempotency_key", name="wallet_cards_idempotency"),
    CheckConstraint("amount > 0 AND captured >= 0 AND captured <= amount", name="wallet_cards_amounts"),
    CheckConstraint(
        "status IN ('active', 'authorized', 'used', 'expired', 'cancelled')", name="wallet_cards_status"
    ),
)
Index("wallet_cards_by_status", wallet_cards.c.status, wallet_cards.c.expires_at)
Index("wallet_cards_by_agent", wallet_cards.c.agent_id)
Index("wallet_cards_by_time", wallet_cards.c.at)

wallet_card_reviews = Table(
    "wallet_card_reviews",
    metadata,
    Column("id", String(40), primary_key=True),  # crv_…
    Column("agent_id", String(40), ForeignKey("wallet_agents.id"), nullable=False),
    Column("intent_id", String(40), ForeignKey("wallet_intents.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("rule", String(40), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("merchant_id", String(200), nullable=True),
    Column("mcc", String(4), nullable=True),
    Column("ttl_seconds", BigInteger, nullable=False),
    Column("decision_id", Integer, ForeignKey("wallet_decisions.id"), nullable=False),  # the latest
    Column("card_id", String(40), ForeignKey("wallet_cards.id"), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("decided_at", String(32), nullable=True),
    Column("decided_by", String(200), nullable=True),
    UniqueConstraint("agent_id", "idempotency_key", name="wallet_card_reviews_idempotency"),
    CheckConstraint("status IN ('pending', 'approved', 'denied')", name="wallet_card_reviews_status"),
)

wallet_acquirers = Table(
    "wallet_acquirers",
    metadata,
    Column("id", String(40), primary_key=True),  # acq_…
    Column("name", String(200), nullable=False),
    Column("api_key_id", String(16), nullable=False, unique=True),
    Column("api_key_digest", String(64), nullable=False),
    Column("api_key_prefix", String(16), nullable=False),
    Column("created_at", String(32), nullable=False),
)

wallet_card_authorizations = Table(
    "wallet_card_authorizations",
    metadata,
    Column("id", String(40), primary_key=True),  # iauth_…
    Column("card_id", String(40), ForeignKey("wallet_cards.id"), nullable=True),  # None: no such card
    Column("acquirer_id", String(40), ForeignKey("wallet_acquirers.id"), nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("decline_reason", String(20), nullable=True),
    Column("status", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("merchant_id", String(200), nullable=False),
    Column("mcc", String(4), nullable=False),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("refunded", BigInteger, nullable=False, server_default="0"),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    CheckConstraint("refunded <= captured AND captured <= amount", name="wallet_card_authorizations_amounts"),
    CheckConstraint(
        "status IN ('pending', 'captured', 'reversed', 'declined')", name="wallet_card_authorizations_status"
    ),
)
Index("wallet_card_authorizations_by_card", wallet_card_authorizations.c.card_id)

wallet_card_keys = Table(
    "wallet_card_keys",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),  # keys.Sealer blob of a 32-byte key
    Column("created_at", String(32), nullable=False),
)


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def luhn_check_digit(payload: str) -> str:
    """The Luhn check digit (ISO/IEC 7812-1 annex B) to append to the digits ``payload``."""
    total = 0
    for index, char in enumerate(reversed(payload)):
        digit = int(char)
        if index % 2 == 0:  # doubled: every second digit from the right, check digit excluded
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str(-total % 10)


def luhn_valid(number: str) -> bool:
    """Whether ``number`` is 12 to 19 ASCII digits whose last is its Luhn check digit."""
    return (
        isinstance(number, str) and number.isascii() and number.isdigit() and 12 <= len(number) <= 19
        and luhn_check_digit(number[:-1]) == number[-1]
    )


@dataclass(frozen=True)
class IssuerBin:
    """The issuer's number range: every number starts with ``prefix`` (a 6- or 8-digit BIN,
    ISO/IEC 7812-1) and has ``length`` digits, the last a Luhn check digit.

    Raises ``ValueError`` for a prefix that is not 6 or 8 digits, a length outside 13..19 or
    fewer than 6 random digits left between them.
    """

    prefix: str = DEFAULT_BIN
    length: int = 16

    def __post_init__(self) -> None:
        if not (self.prefix.isascii() and self.prefix.isdigit() and len(self.prefix) in (6, 8)):
            raise ValueError(f"prefix: {self.prefix!r} is not a 6- or 8-digit BIN")
        if not 13 <= self.length <= 19 or self.length - len(self.prefix) - 1 < 6:
            raise ValueError(f"length: {self.length} leaves fewer than 6 random digits after {self.prefix}")

    def generate(self) -> str:
        """A fresh random number in the range (``secrets``), Luhn-valid."""
        size = self.length - len(self.prefix) - 1
        body = self.prefix + str(secrets.randbelow(10**size)).zfill(size)
        return body + luhn_check_digit(body)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and len(number) == self.length and number.startswith(self.prefix)


def card_payee(merchant_id: str | None) -> str:
    """The pseudo-payee address the policy sees for a card locked to ``merchant_id`` (None:
    any merchant): the first 20 bytes of SHA-256(label ‖ merchant id), lower-case hex."""
    digest = hashlib.sha256(_PAYEE_LABEL + (merchant_id or "").encode()).digest()
    return "0x" + digest[:20].hex()


def to_base_units(amount: str, decimals: int = TOKEN_DECIMALS) -> int:
    """``"25.00"`` → ``25_000_000`` (6 decimals). Raises ``InvalidRequest`` for a non-decimal,
    a non-positive amount or one with more than ``decimals`` decimal places."""
    try:
        value = Decimal(amount)
    except (InvalidOperation, TypeError):
        raise InvalidRequest("amount", f"{amount!r} is not a decimal amount") from None
    units = value.scaleb(decimals)
    if not value.is_finite() or units <= 0 or units != units.to_integral_value():
        raise InvalidRequest("amount", f"{amount!r}: expected a positive amount with at most {decimals} decimals")
    return int(units)


def _card_aad(card_id: str) -> bytes:
    return _CARD_AAD + len(card_id).to_bytes(2, "big") + card_id.encode()


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Card:
    """A card as everyone may see it: no number, no CVV, only ``last4``. Amounts in base
    units; ``expires_at`` in unix seconds; ``exp_month``/``exp_year`` as printed (4-digit year)."""

    id: str
    agent_id: str
    intent_id: str
    status: CardStatus
    amount: int
    captured: int
    last4: str
    exp_month: int
    exp_year: int
    expires_at: float
    merchant_id: str | None
    mcc: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class CardSecrets:
    """The full number and CVV, handed out once; kept out of ``repr``."""

    number: str = field(repr=False)
    cvv: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MintResult:
    """The answer to ``mint`` (and to a poll of a card review).

    ``allow``: ``card`` is the card; ``secrets`` its number and CVV if this is the one answer
    that shows them, else None. ``deny``: nothing was minted. ``review``: ``review_id`` names
    the pending review. ``rule``/``reason`` come from the policy (or the reviewer).
    """

    outcome: Outcome
    rule: str
    reason: str
    decision_id: int
    intent_id: str
    amount: int
    card: Card | None = None
    secrets: CardSecrets | None = field(default=None, repr=False)
    review_id: str | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CardAuthorization:
    """An issuer authorization: approved (``status`` pending, captured or reversed) or declined
    with ``decline_reason``. ``card_id`` is set on approvals only. Amounts in base units."""

    id: str
    approved: bool
    decline_reason: DeclineReason | None
    status: AuthorizationStatus
    amount: int
    merchant_id: str
    mcc: str
    captured: int
    refunded: int
    created_at: str
    card_id: str | None = None


@dataclass(frozen=True, slots=True)
class CardReview:
    """A card request the policy sent to review; ``card_id`` once approved."""

    id: str
    agent_id: str
    intent_id: str
    status: str
    rule: str
    amount: int
    merchant_id: str | None
    mcc: str | None
    created_at: str
    card_id: str | None = None
    decided_by: str | None = None


@dataclass(frozen=True, slots=True)
class CardVerdict:
    """A reviewer's answer: approve or not, and why (stored with the decision)."""

    approve: bool
    reason: str = ""
    actor: str = "council"


class CardReviewer(Protocol):
    """Decides card requests in review (the AI council plugs in here). Called after the
    request's transaction committed, never inside one; None leaves the review to the owner."""

    async def __call__(self, review: CardReview) -> CardVerdict | None: ...


class CouncilCardReviewer:
    """``CardReviewer`` by the AI review council: the judges see the card request as a spend
    (amount, the merchant's pseudo-payee, ``card:<merchant id>`` as the resource, the intent's
    purpose, budget and remaining, the on-mission check against the merchant id and MCC), their
    votes are stored with the card review's id and audited, and the council's tally decides.
    """

    def __init__(self, council: Council, service: WalletService) -> None:
        self.council = council
        self.service = service

    async def __call__(self, review: CardReview) -> CardVerdict:
        intent = await self.service.intent(review.intent_id)
        merchant = review.merchant_id or "any-merchant"
        path = f"/{merchant}" + (f"/mcc-{review.mcc}" if review.mcc else "")
        case = SpendCase(
            review_id=review.id, agent_id=review.agent_id, intent_id=review.intent_id, amount=review.amount,
            payee=card_payee(review.merchant_id), host=None, resource=f"card:{merchant}", method="CARD",
            rule=review.rule, reason=f"single-use card of {review.amount} for {merchant}", purpose=intent.purpose,
            budget=intent.budget, remaining=intent.remaining or 0, per_payment_cap=intent.per_payment_cap,
            mission=mission_check(intent.purpose, None, path), now=self.service._clock(),
        )
        verdict = await self.council.deliberate(case)
        async with self.service.db.transaction() as conn:
            await store_votes(conn, review.id, verdict)
            await audit.append(conn, COUNCIL_ACTOR, "council.voted", {
                "card_review_id": review.id, "agent_id": review.agent_id, "approved": verdict.approved,
                "approvals": verdict.approvals, "denials": verdict.denials, "abstentions": verdict.abstentions,
                "quorum": verdict.quorum,
            })
        return CardVerdict(verdict.approved, verdict.reason, COUNCIL_ACTOR)


@dataclass(frozen=True, slots=True)
class NewAcquirer:
    """A new acquirer and its API key (``acq_…``), returned once by ``add_acquirer``."""

    acquirer_id: str
    name: str
    key_id: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class _MintRequest:
    amount: int
    merchant_id: str | None
    mcc: str | None
    ttl_seconds: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def card_spends(conn: AsyncConnection, since: float) -> list[Spend]:
    """The cards minted after ``since`` that still count against the policy's caps: the locked
    amount of an active or authorized card, the captured amount of a used one (a
    ``WalletService.spend_sources`` entry)."""
    counted = case((wallet_cards.c.status == CardStatus.USED.value, wallet_cards.c.captured), else_=wallet_cards.c.amount)
    rows = await conn.execute(
        select(wallet_cards.c.agent_id, wallet_cards.c.at, counted.label("amount"), wallet_cards.c.payee).where(
            wallet_cards.c.at > since,
            wallet_cards.c.status.in_([CardStatus.ACTIVE.value, CardStatus.AUTHORIZED.value, CardStatus.USED.value]),
        )
    )
    return [Spend(r.agent_id, r.at, int(r.amount), r.payee) for r in rows]


# ---------------------------------------------------------------------------------------------
# The issuer
# ---------------------------------------------------------------------------------------------


class CardIssuer:
    """Mints single-use cards for ``service``'s agents and authorizes them for acquirers.

    ``bin``: the issuer's number range. ``reviewer``: decides card requests in review (None:
    the owner does, ``approve_review``/``deny_review``). ``authorization_ttl``: seconds an
    uncaptured authorization lives. ``clock``: unix seconds (default: the service's). One
    issuer per service: it registers ``card_spends`` with the service's policy history.
    """

    def __init__(
        self,
        service: WalletService,
        *,
        bin: IssuerBin | None = None,
        reviewer: CardReviewer | None = None,
        authorization_ttl: int = DEFAULT_AUTHORIZATION_TTL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if authorization_ttl <= 0:
            raise ValueError(f"authorization_ttl: {authorization_ttl} must be positive")
        self.service = service
        self.db = service.db
        self.bin = bin or IssuerBin()
        self.reviewer = reviewer
        self.authorization_ttl = authorization_ttl
        self._clock = clock or service._clock
        self._lookup: bytes | None = None
        if card_spends not in service.spend_sources:
            service.spend_sources.append(card_spends)

    def __repr__(self) -> str:
        return f"CardIssuer(bin={self.bin.prefix!r}, service={self.service!r})"

    # -- minting --------------------------------------------------------------------------------

    async def mint(
        self,
        agent_id: str,
        *,
        intent_id: str,
        amount: int,
        merchant_id: str | None = None,
        mcc: str | None = None,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> MintResult:
        """Mint a card for ``amount`` base units funded by the agent's ``intent_id``, locked to
        ``merchant_id`` and/or ``mcc`` (4 digits) if given, living ``ttl_seconds`` (cut at the
        intent's ``validBefore``). The policy decides as for any spend; on ``allow`` the
        result carries the number and CVV, the only time they are shown.

        With ``idempotency_key`` a repeated call returns the first answer (the card without
        its secrets; a card approved in review is shown once at its first replay).

        Raises ``NotFound`` (agent, or an intent not the agent's), ``InvalidState`` (intent
        never approved), ``InvalidRequest``, ``IdempotencyConflict``.
        """
        ask = _mint_request(amount, merchant_id, mcc, ttl_seconds)
        _check_key(idempotency_key)
        digest = hashlib.sha256(audit.canonical_json(ask.to_json() | {"intent_id": intent_id})).hexdigest()
        lookup = await self._lookup_key()
        actor = actor or _agent_actor(agent_id)
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            await self.service._agent_row(conn, agent_id)
            if idempotency_key is not None:
                earlier = await self._replay(conn, agent_id, idempotency_key, digest)
                if earlier is not None:
                    return earlier
            row = await self._funding_intent(conn, agent_id, intent_id)
            now = self._clock()
            decision = await self._evaluate(conn, row, ask, now, review_rules=True)
            context = {"card": ask.to_json()}
            if decision.outcome == "allow":
                decision_id = await self.service._store_decision(conn, agent_id, row.id, decision, context)
                card, shown = await self._issue(
                    conn, row, ask, now, decision_id, lookup, actor=actor, key=idempotency_key, digest=digest,
                    reveal=True,
                )
                return MintResult("allow", str(decision.rule), decision.reason, decision_id, row.id, ask.amount,
                                  card, shown)
            decision_id = await self.service._store_decision(conn, agent_id, row.id, decision, context)
            event = {"agent_id": agent_id, "intent_id": row.id, "decision_id": decision_id, "rule": str(decision.rule),
                     "reason": decision.reason, **ask.to_json()}
            if decision.outcome == "deny":
                await audit.append(conn, actor, "card.denied", event)
                await self.service.webhooks.enqueue(conn, EventType.PAYMENT_DENIED, event | {"kind": "card"})
                return MintResult("deny", str(decision.rule), decision.reason, decision_id, row.id, ask.amount)
            review_id = _new_id("crv")
            await conn.execute(
                wallet_card_reviews.insert().values(
                    id=review_id, agent_id=agent_id, intent_id=row.id, status="pending", rule=str(decision.rule),
                    amount=ask.amount, merchant_id=ask.merchant_id, mcc=ask.mcc, ttl_seconds=ask.ttl_seconds,
                    decision_id=decision_id, idempotency_key=idempotency_key, request_digest=digest,
                    created_at=utc_now(),
                )
            )
            await audit.append(conn, actor, "card.review_requested", event | {"review_id": review_id})
        pending = MintResult("review", str(decision.rule), decision.reason, decision_id, row.id, ask.amount,
                             review_id=review_id)
        if self.reviewer is None:
            return pending
        verdict = await self.reviewer(await self.review(review_id))
        if verdict is None:
            return pending
        if not verdict.approve:
            await self.deny_review(review_id, actor=verdict.actor, reason=verdict.reason)
        else:
            await self.approve_review(review_id, actor=verdict.actor)
        return await self.review_result(agent_id, review_id)

    async def approve_review(self, review_id: str, *, actor: str = "owner") -> MintResult:
        """The reviewer allows a card request in review. It is evaluated again without the
        review rules (a deny rule that fires now still denies, and the review is ``denied``);
        on ``allow`` the card is minted and shown to its agent at its next poll
        (``review_result``). Raises ``NotFound`` or ``InvalidState`` (not pending)."""
        lookup = await self._lookup_key()
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            review = await self._pending_review(conn, review_id)
            row = await self.service._intent_row(conn, review.intent_id)
            ask = _MintRequest(review.amount, review.merchant_id, review.mcc, review.ttl_seconds)
            now = self._clock()
            decision = await self._evaluate(conn, row, ask, now, review_rules=False)
            context = {"card": ask.to_json(), "review_id": review_id, "reviewer": actor}
            decided = {"decided_at": utc_now(), "decided_by": actor}
            decision_id = await self.service._store_decision(conn, review.agent_id, row.id, decision, context)
            if decision.outcome != "allow":
                await conn.execute(update(wallet_card_reviews).where(wallet_card_reviews.c.id == review_id)
                                   .values(status="denied", decision_id=decision_id, **decided))
                await audit.append(conn, actor, "card.denied", {"review_id": review_id, "rule": str(decision.rule),
                                                                "reason": decision.reason})
                return MintResult("deny", str(decision.rule), decision.reason, decision_id, row.id, ask.amount,
                                  review_id=review_id)
            card, _ = await self._issue(
                conn, row, ask, now, decision_id, lookup, actor=actor, key=None, digest=review.request_digest,
                review_id=review_id, reveal=False,
            )
            await conn.execute(update(wallet_card_reviews).where(wallet_card_reviews.c.id == review_id)
                               .values(status="approved", decision_id=decision_id, card_id=card.id, **decided))
            return MintResult("allow", str(decision.rule), decision.reason, decision_id, row.id, ask.amount, card,
                              review_id=review_id)

    async def deny_review(self, review_id: str, *, actor: str = "owner", reason: str = "") -> CardReview:
        """The reviewer refuses a card request in review: nothing is minted."""
        async with self.db.transaction() as conn:
            review = await self._pending_review(conn, review_id)
            why = f"denied by reviewer {actor}" + (f": {reason}" if reason else "")
            context = {"card": {"amount": review.amount}, "review_id": review_id, "reviewer": actor}
            decision_id = await self.service._store_decision(
                conn, review.agent_id, review.intent_id, Decision("deny", Rule(review.rule), why), context
            )
            await conn.execute(
                update(wallet_card_reviews).where(wallet_card_reviews.c.id == review_id).values(
                    status="denied", decision_id=decision_id, decided_at=utc_now(), decided_by=actor)
            )
            event = {"review_id": review_id, "agent_id": review.agent_id, "intent_id": review.intent_id,
                     "decision_id": decision_id, "rule": review.rule, "reason": why, "kind": "card"}
            await audit.append(conn, actor, "card.denied", event)
            await self.service.webhooks.enqueue(conn, EventType.PAYMENT_DENIED, event)
            return _review(await self._review_row(conn, review_id))

    async def review(self, review_id: str) -> CardReview:
        async with self.db.snapshot() as conn:
            return _review(await self._review_row(conn, review_id))

    async def reviews(self, *, status: str | None = "pending") -> list[CardReview]:
        async with self.db.snapshot() as conn:
            query = select(wallet_card_reviews).order_by(wallet_card_reviews.c.created_at)
            if status is not None:
                query = query.where(wallet_card_reviews.c.status == status)
            return [_review(row) for row in await conn.execute(query)]

    async def review_result(self, agent_id: str, review_id: str) -> MintResult:
        """The agent's view of its card review; an approved card's number and CVV are in the
        first answer after approval and in no other. Raises ``NotFound``."""
        async with self.db.transaction() as conn:
            review = await self._review_row(conn, review_id)
            if review.agent_id != agent_id:
                raise NotFound("review_id", f"no card review {review_id!r} for this agent")
            return await self._from_review(conn, review, replayed=False)

    # -- the agent's cards ------------------------------------------------------------------------

    async def card(self, card_id: str) -> Card:
        async with self.db.snapshot() as conn:
            return _card(await self._card_row(conn, card_id))

    async def cards(self, *, agent_id: str | None = None) -> list[Card]:
        """Every card (of ``agent_id``), oldest first; never a number or CVV."""
        async with self.db.snapshot() as conn:
            query = select(wallet_cards).order_by(wallet_cards.c.created_at, wallet_cards.c.id)
            if agent_id is not None:
                query = query.where(wallet_cards.c.agent_id == agent_id)
            return [_card(row) for row in await conn.execute(query)]

    async def cancel(self, card_id: str, *, agent_id: str | None = None, actor: str = "owner", reason: str = "") -> Card:
        """Cancel an active or authorized card (``agent_id``: only if it is that agent's); a
        pending authorization is reversed and the hold returns to the intent. Raises
        ``NotFound`` or ``InvalidState``."""
        async with self.db.transaction() as conn:
            row = await self._card_row(conn, card_id, lock=True)
            if agent_id is not None and row.agent_id != agent_id:
                raise NotFound("card_id", f"no card {card_id!r} for this agent")
            if row.status not in (CardStatus.ACTIVE.value, CardStatus.AUTHORIZED.value):
                raise InvalidState("card_id", f"{card_id!r} is {row.status}")
            await self._close(conn, row, CardStatus.CANCELLED, actor, reason or "cancelled")
            return _card(await self._card_row(conn, card_id))

    async def expire_cards(self, *, actor: str = "wallet") -> list[str]:
        """The sweeper: every active card past ``expires_at`` becomes ``expired`` and every
        card authorized more than ``authorization_ttl`` seconds ago ``cancelled`` (its
        authorization lapsed); their holds return to the intents. The ids, in that order."""
        async with self.db.transaction() as conn:
            now = self._clock()
            due = (await conn.execute(
                select(wallet_cards).where(
                    ((wallet_cards.c.status == CardStatus.ACTIVE.value) & (wallet_cards.c.expires_at <= now))
                    | ((wallet_cards.c.status == CardStatus.AUTHORIZED.value)
                       & (wallet_cards.c.authorized_at <= now - self.authorization_ttl))
                ).order_by(wallet_cards.c.id).with_for_update()
            )).all()
            for row in due:
                if row.status == CardStatus.ACTIVE.value:
                    await self._close(conn, row, CardStatus.EXPIRED, actor, "expired")
                else:
                    await self._close(conn, row, CardStatus.CANCELLED, actor, "authorization lapsed")
        return [row.id for row in due]

    # -- acquirers and authorization ---------------------------------------------------------------

    async def add_acquirer(self, name: str, *, actor: str = "owner") -> NewAcquirer:
        """Register an acquirer; its API key (``acq_…``) is in the result and nowhere else."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidRequest("name", "expected a non-empty name of at most 200 characters")
        api_key, record = issue_api_key(_ACQUIRER_PREFIX)
        acquirer_id = _new_id("acq")
        async with self.db.transaction() as conn:
            await conn.execute(wallet_acquirers.insert().values(
                id=acquirer_id, name=name, api_key_id=record.key_id, api_key_digest=record.digest,
                api_key_prefix=record.prefix, created_at=utc_now(),
            ))
            await audit.append(conn, actor, "acquirer.added", {"acquirer_id": acquirer_id, "name": name,
                                                               "key_id": record.key_id})
        return NewAcquirer(acquirer_id, name, record.key_id, api_key)

    async def authenticate_acquirer(self, api_key: object) -> str:
        """The id of the acquirer holding ``api_key``; ``Unauthenticated`` otherwise (agent
        keys and the owner token are not acquirer keys)."""

        async def lookup(key_id: str) -> ApiKeyRecord | None:
            async with self.db.snapshot() as conn:
                row = (await conn.execute(select(wallet_acquirers).where(wallet_acquirers.c.api_key_id == key_id))).first()
            return None if row is None else ApiKeyRecord(row.api_key_id, row.api_key_digest, row.api_key_prefix)

        key_id = await averify_api_key(api_key, lookup)
        if key_id is None or not str(api_key).startswith(_ACQUIRER_PREFIX):
            raise Unauthenticated("api_key", "not a valid acquirer key")
        async with self.db.snapshot() as conn:
            return str((await conn.execute(
                select(wallet_acquirers.c.id).where(wallet_acquirers.c.api_key_id == key_id))).scalar_one())

    async def authorize(
        self,
        acquirer_id: str,
        *,
        number: str,
        exp_month: int,
        exp_year: int,
        cvv: str,
        amount: int,
        merchant_id: str,
        mcc: str,
    ) -> CardAuthorization:
        """Approve or decline one purchase in real time: card data first, then the card's
        state and spending controls (``DeclineReason`` in check order). On approval the card
        is ``authorized`` and the authorization ``pending`` its capture or reversal.
        ``exp_year`` may have 2 or 4 digits; ``amount`` in base units.

        Raises ``InvalidRequest`` for a malformed amount, merchant id or MCC (a malformed
        number, expiry or CVV is a decline, like a wrong one).
        """
        _positive("amount", amount, ledger.MAX_AMOUNT)
        _merchant(merchant_id, required=True)
        _mcc(mcc, required=True)
        lookup = await self._lookup_key()
        presented = number if isinstance(number, str) else ""
        number_hash = hmac.new(lookup, presented.encode(), hashlib.sha256).hexdigest()
        async with self.db.transaction() as conn:
            now = self._clock()
            row = (await conn.execute(
                select(wallet_cards).where(wallet_cards.c.number_hash == number_hash).with_for_update()
            )).first()
            reason = self._decline_reason(row, presented, exp_month, exp_year, cvv, amount, merchant_id, mcc, now)
            stamp = utc_now()
            values = {"id": _new_id("iauth"), "acquirer_id": acquirer_id, "amount": amount, "merchant_id": merchant_id,
                      "mcc": mcc, "created_at": stamp, "updated_at": stamp}
            if reason is None:
                assert row is not None
                # The conditional UPDATE is the single-use guarantee: of two writers that both
                # read "active", only the first moves the row.
                if await self._move(conn, row, CardStatus.AUTHORIZED, authorized_at=now):
                    await conn.execute(wallet_card_authorizations.insert().values(
                        card_id=row.id, approved=True, status=AuthorizationStatus.PENDING.value, **values))
                    await self._announce(conn, row, CardStatus.AUTHORIZED, f"acquirer:{acquirer_id}", {
                        "auth_id": values["id"], "amount": amount, "merchant_id": merchant_id, "mcc": mcc})
                    return _authorization(await self._authorization_row(conn, values["id"]))
                reason = DeclineReason.ALREADY_USED
            await conn.execute(wallet_card_authorizations.insert().values(
                card_id=None if row is None else row.id, approved=False, decline_reason=reason.value,
                status=AuthorizationStatus.DECLINED.value, **values))
            return _authorization(await self._authorization_row(conn, values["id"]))

    async def capture(self, acquirer_id: str, authorization_id: str, amount: int | None = None) -> CardAuthorization:
        """Capture ``amount`` (default: all) of a pending authorization: the card is ``used``,
        the merchant paid, the rest returned to the intent. Raises ``NotFound`` (not this
        acquirer's), ``InvalidState`` (not pending) or ``InvalidRequest`` (amount)."""
        async with self.db.transaction() as conn:
            auth, card = await self._pending(conn, acquirer_id, authorization_id)
            amount = auth.amount if amount is None else amount
            _positive("amount", amount, auth.amount)
            tx = await ledger.capture_card(conn, card=card.id, merchant=auth.merchant_id, amount=amount,
                                           memo=authorization_id)
            await self._set_authorization(conn, authorization_id, AuthorizationStatus.CAPTURED, captured=amount)
            await self._move(conn, card, CardStatus.USED, captured=amount)
            reclaimed = await self._reclaim_if_closed(conn, card.intent_id)
            await self._announce(conn, card, CardStatus.USED, f"acquirer:{acquirer_id}", {
                "auth_id": authorization_id, "captured": amount, "released": card.amount - amount,
                "merchant_id": auth.merchant_id, "tx": tx, "reclaimed": reclaimed})
            return _authorization(await self._authorization_row(conn, authorization_id))

    async def reverse(self, acquirer_id: str, authorization_id: str) -> CardAuthorization:
        """Reverse a pending authorization (the sale did not happen): the card is cancelled and
        its hold returns to the intent. Raises ``NotFound`` or ``InvalidState``."""
        async with self.db.transaction() as conn:
            _auth, card = await self._pending(conn, acquirer_id, authorization_id)
            await self._close(conn, card, CardStatus.CANCELLED, f"acquirer:{acquirer_id}", "authorization reversed")
            return _authorization(await self._authorization_row(conn, authorization_id))

    async def refund(self, acquirer_id: str, authorization_id: str, amount: int | None = None) -> CardAuthorization:
        """Refund ``amount`` (default: all that is left) of a captured authorization to the
        card's intent; any number of refunds, never more than captured. Raises ``NotFound``,
        ``InvalidState`` (not captured, or fully refunded) or ``InvalidRequest`` (amount)."""
        async with self.db.transaction() as conn:
            auth = await self._authorization_row(conn, authorization_id, lock=True)
            if auth.acquirer_id != acquirer_id:
                raise NotFound("authorization_id", f"no authorization {authorization_id!r} for this acquirer")
            left = auth.captured - auth.refunded
            if auth.status != AuthorizationStatus.CAPTURED.value or left == 0:
                raise InvalidState("authorization_id", f"{authorization_id!r} has nothing captured left to refund")
            amount = left if amount is None else amount
            _positive("amount", amount, left)
            card = await self._card_row(conn, auth.card_id)
            tx = await ledger.refund_card(conn, card=card.id, merchant=auth.merchant_id, amount=amount,
                                          memo=authorization_id)
            await self._set_authorization(conn, authorization_id, AuthorizationStatus.CAPTURED,
                                          refunded=auth.refunded + amount)
            reclaimed = await self._reclaim_if_closed(conn, card.intent_id)
            await audit.append(conn, f"acquirer:{acquirer_id}", "card.refunded", {
                **_card_event(card), "auth_id": authorization_id, "refunded": amount, "tx": tx,
                "reclaimed": reclaimed})
            return _authorization(await self._authorization_row(conn, authorization_id))

    async def authorizations(self, *, card_id: str | None = None) -> list[CardAuthorization]:
        """Every authorization request (of ``card_id``), approved or declined, oldest first."""
        async with self.db.snapshot() as conn:
            query = select(wallet_card_authorizations).order_by(wallet_card_authorizations.c.created_at)
            if card_id is not None:
                query = query.where(wallet_card_authorizations.c.card_id == card_id)
            return [_authorization(row) for row in await conn.execute(query)]

    # -- steps ----------------------------------------------------------------------------------

    async def _evaluate(self, conn: AsyncConnection, row: Any, ask: _MintRequest, now: float, *,
                        review_rules: bool) -> Decision:
        """``policy.evaluate`` of the card as a spend to its pseudo-payee, with no host; the
        merchant id stands for the path, so the on-mission check sees what the card buys from
        (with nothing at all to check, every card was off-mission)."""
        rules = await self.service._rules(conn, row.agent_id)
        if not review_rules:
            rules = dataclasses.replace(rules, review_above=None, review_new_payee=False)
        request = SpendRequest(row.agent_id, row.id, card_payee(ask.merchant_id), None, ask.amount, now,
                               path=ask.merchant_id, card=True)
        history = await self.service._history(conn, request, rules)
        if rules.review_new_payee:
            carded = await conn.execute(select(wallet_cards.c.agent_id).where(wallet_cards.c.payee == request.payee))
            history = SpendHistory(history.spends, history.payee_paid_by | set(carded.scalars()))
        limits = await self.service._limits(conn, row)
        return evaluate(request, history, rules, limits, await self.service._kill_switch(conn))

    async def _issue(
        self, conn: AsyncConnection, row: Any, ask: _MintRequest, now: float, decision_id: int, lookup: bytes, *,
        actor: str, key: str | None, digest: str, reveal: bool, review_id: str | None = None,
    ) -> tuple[Card, CardSecrets | None]:
        """Draw the number and CVV, seal them, hold the amount, store and announce the card."""
        card_id = _new_id("card")
        expires_at = min(now + ask.ttl_seconds, float(row.valid_before))
        printed = datetime.fromtimestamp(expires_at, timezone.utc)
        while True:
            number = self.bin.generate()
            number_hash = hmac.new(lookup, number.encode(), hashlib.sha256).hexdigest()
            taken = await conn.execute(select(wallet_cards.c.id).where(wallet_cards.c.number_hash == number_hash))
            if taken.first() is None:
                break
        cvv = str(secrets.randbelow(1000)).zfill(3)
        tx = await ledger.hold_card(conn, intent=row.id, card=card_id, amount=ask.amount, memo=f"decision {decision_id}")
        stamp = utc_now()
        await conn.execute(wallet_cards.insert().values(
            id=card_id, agent_id=row.agent_id, intent_id=row.id, status=CardStatus.ACTIVE.value, amount=ask.amount,
            captured=0, payee=card_payee(ask.merchant_id), merchant_id=ask.merchant_id, mcc=ask.mcc,
            last4=number[-4:], exp_month=printed.month, exp_year=printed.year, expires_at=expires_at, at=now,
            number_hash=number_hash, sealed=self.service.sealer.seal(f"{number}:{cvv}".encode(), aad=_card_aad(card_id)),
            revealed_at=stamp if reveal else None, decision_id=decision_id, review_id=review_id,
            idempotency_key=key, request_digest=digest, created_at=stamp, updated_at=stamp,
        ))
        card = _card(await self._card_row(conn, card_id))
        event = _card_event(card) | {"decision_id": decision_id, "tx": tx, "review_id": review_id}
        await audit.append(conn, actor, "card.created", event)
        await self.service.webhooks.enqueue(conn, EventType.CARD_CREATED, event)
        return card, CardSecrets(number, cvv) if reveal else None

    def _decline_reason(
        self, row: Any, number: str, exp_month: object, exp_year: object, cvv: object, amount: int,
        merchant_id: str, mcc: str, now: float,
    ) -> DeclineReason | None:
        if row is None or not luhn_valid(number):
            return DeclineReason.INVALID_CARD
        stored_number, stored_cvv = self._open(row).split(":")
        if not hmac.compare_digest(number.encode(), stored_number.encode()):
            return DeclineReason.INVALID_CARD
        if not hmac.compare_digest(str(cvv).encode(), stored_cvv.encode()):
            return DeclineReason.INCORRECT_CVV
        if (exp_month, _full_year(exp_year)) != (row.exp_month, row.exp_year):
            return DeclineReason.INCORRECT_EXPIRY
        if row.status == CardStatus.CANCELLED.value:
            return DeclineReason.CANCELLED
        if row.status in (CardStatus.AUTHORIZED.value, CardStatus.USED.value):
            return DeclineReason.ALREADY_USED
        if row.status == CardStatus.EXPIRED.value or now >= row.expires_at:
            return DeclineReason.EXPIRED
        if (row.merchant_id is not None and row.merchant_id != merchant_id) or (row.mcc is not None and row.mcc != mcc):
            return DeclineReason.WRONG_MERCHANT
        if amount > row.amount:
            return DeclineReason.OVER_AMOUNT
        return None

    async def _close(self, conn: AsyncConnection, row: Any, to: CardStatus, actor: str, reason: str) -> None:
        """Expire or cancel ``row``: reverse its pending authorization, release its hold."""
        await conn.execute(
            update(wallet_card_authorizations)
            .where(wallet_card_authorizations.c.card_id == row.id,
                   wallet_card_authorizations.c.status == AuthorizationStatus.PENDING.value)
            .values(status=AuthorizationStatus.REVERSED.value, updated_at=utc_now())
        )
        tx = await ledger.release_card(conn, card=row.id, memo=reason)
        if not await self._move(conn, row, to):
            raise InvalidState("card_id", f"{row.id!r} changed state meanwhile")
        reclaimed = await self._reclaim_if_closed(conn, row.intent_id)
        await self._announce(conn, row, to, actor, {"released": row.amount, "tx": tx, "reclaimed": reclaimed,
                                                    "reason": reason})

    async def _move(self, conn: AsyncConnection, row: Any, to: CardStatus, **values: Any) -> bool:
        """``row.status → to`` if the row still has ``row.status``; whether it moved."""
        if to not in _TRANSITIONS.get(CardStatus(row.status), frozenset()):
            raise InvalidState("card_id", f"{row.id!r} cannot go from {row.status} to {to.value}")
        done = await conn.execute(
            update(wallet_cards)
            .where(wallet_cards.c.id == row.id, wallet_cards.c.status == row.status)
            .values(status=to.value, updated_at=utc_now(), **values)
        )
        return bool(done.rowcount == 1)

    async def _announce(self, conn: AsyncConnection, row: Any, to: CardStatus, actor: str, extra: dict[str, Any]) -> None:
        """The audit record and the webhook of one transition."""
        event = _card_event(_card(row)) | {"status": to.value, "from": row.status} | extra
        await audit.append(conn, actor, f"card.{to.value}", event)
        await self.service.webhooks.enqueue(conn, _EVENTS[to], event)

    async def _reclaim_if_closed(self, conn: AsyncConnection, intent_id: str) -> int:
        """What returned to an intent no longer active goes on to the owner (as for mandates)."""
        intent = await self.service._intent_row(conn, intent_id)
        return 0 if intent.status == "active" else await self.service._reclaim(conn, intent_id)

    async def _pending(self, conn: AsyncConnection, acquirer_id: str, authorization_id: str) -> tuple[Any, Any]:
        auth = await self._authorization_row(conn, authorization_id, lock=True)
        if auth.acquirer_id != acquirer_id:
            raise NotFound("authorization_id", f"no authorization {authorization_id!r} for this acquirer")
        if auth.status != AuthorizationStatus.PENDING.value:
            raise InvalidState("authorization_id", f"{authorization_id!r} is {auth.status}, not pending")
        return auth, await self._card_row(conn, auth.card_id, lock=True)

    async def _set_authorization(self, conn: AsyncConnection, authorization_id: str, status: AuthorizationStatus,
                                 **values: Any) -> None:
        await conn.execute(
            update(wallet_card_authorizations).where(wallet_card_authorizations.c.id == authorization_id)
            .values(status=status.value, updated_at=utc_now(), **values)
        )

    async def _replay(self, conn: AsyncConnection, agent_id: str, key: str, digest: str) -> MintResult | None:
        """The earlier answer to ``key`` (a card or a card review), or None."""
        card = (await conn.execute(select(wallet_cards).where(
            wallet_cards.c.agent_id == agent_id, wallet_cards.c.idempotency_key == key))).first()
        review = (await conn.execute(select(wallet_card_reviews).where(
            wallet_card_reviews.c.agent_id == agent_id, wallet_card_reviews.c.idempotency_key == key))).first()
        if review is not None:
            _same_request(key, review.request_digest, digest)
            return await self._from_review(conn, review, replayed=True)
        if card is None:
            return None
        _same_request(key, card.request_digest, digest)
        decision = await self._decision(conn, card.decision_id)
        return MintResult("allow", decision.rule, decision.reason, decision.id, card.intent_id, card.amount,
                          _card(card), replayed=True)

    async def _from_review(self, conn: AsyncConnection, review: Any, *, replayed: bool) -> MintResult:
        decision = await self._decision(conn, review.decision_id)
        common = (decision.rule, decision.reason, decision.id, review.intent_id, review.amount)
        if review.status == "pending":
            return MintResult("review", *common, review_id=review.id, replayed=replayed)
        if review.status == "denied":
            return MintResult("deny", *common, review_id=review.id, replayed=replayed)
        row = await self._card_row(conn, review.card_id)
        return MintResult("allow", *common, _card(row), await self._reveal(conn, row), review_id=review.id,
                          replayed=replayed)

    async def _reveal(self, conn: AsyncConnection, row: Any) -> CardSecrets | None:
        """The number and CVV if they were never shown (marking them shown), else None."""
        if row.revealed_at is not None:
            return None
        done = await conn.execute(update(wallet_cards).where(wallet_cards.c.id == row.id,
                                                             wallet_cards.c.revealed_at.is_(None))
                                  .values(revealed_at=utc_now()))
        if done.rowcount != 1:
            return None
        number, cvv = self._open(row).split(":")
        return CardSecrets(number, cvv)

    def _open(self, row: Any) -> str:
        return self.service.sealer.open(row.sealed, aad=_card_aad(row.id)).decode()

    async def _lookup_key(self) -> bytes:
        """The number-lookup HMAC key: read (or drawn and stored, sealed) once per issuer.

        Called before a write transaction opens, never inside one (its own may be needed)."""
        if self._lookup is not None:
            return self._lookup
        async with self.db.snapshot() as conn:
            sealed = (await conn.execute(select(wallet_card_keys.c.sealed).where(
                wallet_card_keys.c.name == _LOOKUP_KEY_NAME))).scalar_one_or_none()
        if sealed is None:
            async with self.db.transaction() as conn:
                try:
                    async with statement_guard(conn):  # a concurrent first use (PostgreSQL)
                        await conn.execute(wallet_card_keys.insert().values(
                            name=_LOOKUP_KEY_NAME, sealed=self.service.sealer.seal(secrets.token_bytes(32), aad=_LOOKUP_AAD),
                            created_at=utc_now()))
                except IntegrityError:
                    pass
                sealed = (await conn.execute(select(wallet_card_keys.c.sealed).where(
                    wallet_card_keys.c.name == _LOOKUP_KEY_NAME))).scalar_one()
        self._lookup = self.service.sealer.open(sealed, aad=_LOOKUP_AAD)
        return self._lookup

    # -- rows -----------------------------------------------------------------------------------

    async def _funding_intent(self, conn: AsyncConnection, agent_id: str, intent_id: str) -> Any:
        row = await self.service._intent_row(conn, intent_id)
        if row.agent_id != agent_id:
            raise NotFound("intent_id", f"no intent {intent_id!r} for this agent")
        if row.chain_intent_id is None:
            raise InvalidState("intent_id", f"{intent_id!r} is {row.status}: it was never approved")
        return row

    async def _card_row(self, conn: AsyncConnection, card_id: str, *, lock: bool = False) -> Any:
        return await row_or_not_found(conn, wallet_cards.c.id, card_id, "card_id", "card", lock=lock)

    async def _authorization_row(self, conn: AsyncConnection, authorization_id: str, *, lock: bool = False) -> Any:
        return await row_or_not_found(
            conn, wallet_card_authorizations.c.id, authorization_id, "authorization_id", "authorization", lock=lock
        )

    async def _review_row(self, conn: AsyncConnection, review_id: str) -> Any:
        return await row_or_not_found(conn, wallet_card_reviews.c.id, review_id, "review_id", "card review")

    async def _pending_review(self, conn: AsyncConnection, review_id: str) -> Any:
        review = await self._review_row(conn, review_id)
        if review.status != "pending":
            raise InvalidState("review_id", f"{review_id!r} is {review.status}, not pending")
        return review

    async def _decision(self, conn: AsyncConnection, decision_id: int) -> Any:
        return (await conn.execute(select(wallet_decisions).where(wallet_decisions.c.id == decision_id))).one()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _merchant(value: object, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or not value.isprintable():
        raise InvalidRequest("merchant_id", "expected a printable merchant id of 1 to 200 characters")


def _mcc(value: object, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or len(value) != 4 or not (value.isascii() and value.isdigit()):
        raise InvalidRequest("mcc", f"{value!r} is not a 4-digit merchant category code (ISO 18245)")


def _mint_request(amount: object, merchant_id: object, mcc: object, ttl_seconds: object) -> _MintRequest:
    _positive("amount", amount, ledger.MAX_AMOUNT)
    _merchant(merchant_id, required=False)
    _mcc(mcc, required=False)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 0 < ttl_seconds <= _MAX_TTL:
        raise InvalidRequest("ttl_seconds", f"expected an integer in 1..{_MAX_TTL}, got {ttl_seconds!r}")
    return _MintRequest(amount, merchant_id, mcc, ttl_seconds)  # type: ignore[arg-type]


def _check_key(key: object) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise InvalidRequest("idempotency_key", "expected a non-empty string of at most 200 characters")




def _full_year(year: object) -> object:
    """A 2-digit expiry year as printed on cards (``28``) to its 4-digit form."""
    return 2000 + year if isinstance(year, int) and not isinstance(year, bool) and 0 <= year < 100 else year


def _card(row: Any) -> Card:
    return Card(
        id=row.id, agent_id=row.agent_id, intent_id=row.intent_id, status=CardStatus(row.status), amount=row.amount,
        captured=row.captured, last4=row.last4, exp_month=row.exp_month, exp_year=row.exp_year,
        expires_at=row.expires_at, merchant_id=row.merchant_id, mcc=row.mcc, created_at=row.created_at,
    )


def _card_event(card: Card) -> dict[str, Any]:
    """What the audit trail and webhooks say of a card: never its number or CVV."""
    return {"card_id": card.id, "agent_id": card.agent_id, "intent_id": card.intent_id, "amount": card.amount,
            "last4": card.last4, "merchant_id": card.merchant_id, "mcc": card.mcc, "expires_at": card.expires_at}


def _authorization(row: Any) -> CardAuthorization:
    return CardAuthorization(
        id=row.id, approved=bool(row.approved),
        decline_reason=None if row.decline_reason is None else DeclineReason(row.decline_reason),
        status=AuthorizationStatus(row.status), amount=row.amount, merchant_id=row.merchant_id, mcc=row.mcc,
        captured=row.captured, refunded=row.refunded, created_at=row.created_at,
        card_id=row.card_id if row.approved else None,
    )


def _review(row: Any) -> CardReview:
    return CardReview(
        id=row.id, agent_id=row.agent_id, intent_id=row.intent_id, status=row.status, rule=row.rule,
        amount=row.amount, merchant_id=row.merchant_id, mcc=row.mcc, created_at=row.created_at,
        card_id=row.card_id, decided_by=row.decided_by,
    )
