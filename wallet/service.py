"""The co-wallet's core: agents, Intent-Pay, the kill switch and policy-checked signing, no HTTP.

The HTTP API and the CLI are thin layers over :class:`WalletService`; everything that decides,
signs or moves money is here, so both behave the same and the tests need no server.

Why one serialized transaction per spend. ``authorize_payment`` reads the spend history,
evaluates the policy, takes a nonce, reserves the amount in the ledger, records the decision,
appends the audit record and enqueues the webhook inside one ``Database.transaction()``
(SQLite: ``BEGIN IMMEDIATE`` plus the process's writer lock; PostgreSQL: the advisory lock of
``serialize``). Two concurrent spends therefore never both see the history before the other:
a daily cap covering exactly N calls signs exactly N, whatever the concurrency. The mandate is
signed inside the same transaction, so a rolled-back spend never leaves a signed header behind
and a committed one is always in the history, the ledger and the audit log. The clock is read
after the lock is taken, so the history's order is the order of the decisions.

Intent-Pay. An agent drafts an intent (``pending_approval``); the owner approves it: the wallet
draws a fresh session key, signs the EIP-712 intent with the owner's key (``payer.create_intent``),
seals the session key bound to (intent, agent) with ``keys.Sealer``, allocates the budget in the
ledger and marks the intent ``active``. The agent never sees a key: it gets signed
``PAYMENT-SIGNATURE`` headers, built exactly as ``payer.AEP2Auth`` builds them (``Mandate``,
``request_hash``, ``build_payload``, ``encode_header``). Nonces count up per intent in the
intent's row: a nonce is consumed by the transaction that signs with it, so none is used twice.

Chain. Registration and revocation go through an :class:`IntentRegistry` (``payer.Escrow``
is one), always after the database transaction commits: a chain call never holds the write
lock. Registration at approval is best effort (the processor registers an intent when it
first settles one); revocation registers first when needed, then revokes. Every outcome,
failures included, is recorded in the audit trail.

Which spends count. Every signed mandate counts against the caps until it is released
(``release_payment``), settled or not: the conservative choice ``policy.SpendHistory`` asks
for. Decisions, with their inputs, are stored for every outcome (``decisions``).

Secrets. API keys are stored as ``keys.ApiKeyRecord`` digests and returned once, by
``add_agent``, in a ``repr``-hidden field; session keys exist unsealed only while a mandate is
signed; audit payloads carry ids, amounts, addresses and the URL's host and path (never its
query, which may carry credentials).

Errors::

    WalletError                 ``field`` names the argument at fault, ``reason`` says why
    ├── Unauthenticated         the API key is malformed, unknown or wrong
    ├── NotFound                no such agent, intent, review or payment
    ├── InvalidState            the object is not in a state that allows the operation
    │   └── ReviewExpired       the review waited longer than ``review_ttl_seconds``
    ├── InvalidRequest          a malformed argument (amount, address, requirement…)
    ├── NoMatchingIntent        no intent of the agent can pay this requirement
    ├── ChainFailure            the chain refused or failed a call (registration)
    └── IdempotencyConflict     the idempotency key was used for another request

Ledger errors (``ledger.InsufficientFunds`` when the owner's escrow cannot cover a budget)
propagate as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterator, Protocol

import httpx
from eth_utils import to_checksum_address
from pydantic import ValidationError
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
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from aep2.deployment import Deployment
from aep2.intent import SignedIntent
from aep2.mandate import MAX_AMOUNT as MAX_MANDATE_AMOUNT
from aep2.mandate import MAX_DEADLINE, Mandate, request_hash
from aep2.payees import MAX_PAYEES
from aep2.payload import build_payload, intent_json, parse_intent
from aep2.x402 import caip2, chain_id_of, encode_header
from aep2.x402.models import PaymentRequirements, PaymentRequirementsV1
from payer import create_intent, create_session_key
from payer.auth import DEFAULT_DEADLINE_SECONDS, SCHEME

from . import audit, ledger
from .council import COUNCIL_ACTOR, Council, InvalidContext, RecentSpend, SpendCase, SpendContext, Verdict, load_verdict, store_votes
from .db import Database, metadata, serialize, utc_now
from .keys import ApiKeyRecord, OwnerKeystore, Sealer, averify_api_key, issue_api_key, session_key_aad
from .ledger import AccountKind
from .policy import (
    Decision,
    IntentLimits,
    KillSwitch,
    Outcome,
    Rule,
    Rules,
    Spend,
    SpendHistory,
    SpendRequest,
    evaluate,
    history_since,
    mission_check,
)
from .webhooks import EventType, Webhooks

__all__ = [
    "WalletService",
    "IntentRegistry",
    "NewAgent",
    "Agent",
    "IntentRecord",
    "Authorization",
    "Review",
    "Payment",
    "IntentStatus",
    "PaymentStatus",
    "ReviewStatus",
    "WalletError",
    "Unauthenticated",
    "NotFound",
    "InvalidState",
    "ReviewExpired",
    "InvalidRequest",
    "NoMatchingIntent",
    "ChainFailure",
    "IdempotencyConflict",
    "wallet_agents",
    "wallet_intents",
    "wallet_payments",
    "wallet_reviews",
    "wallet_decisions",
    "wallet_kill_switch",
    "wallet_rules",
    "row_or_not_found",
]

#: The resource every spend serializes on (a PostgreSQL advisory lock; SQLite's write lock).
_SPEND_LOCK = "wallet.spend"
#: ``wallet_kill_switch.scope`` and ``wallet_rules.scope`` of the owner-wide row.
_ALL = "*"
_AUTO_APPROVE_ACTOR = "owner:auto-approve"
_OWNER_ACTOR = "owner"
#: How many of the agent's latest spends the council sees.
_RECENT_SPENDS = 20


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class WalletError(Exception):
    """A refused wallet operation; ``field`` names the argument at fault. See the module's tree."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unauthenticated(WalletError):
    """The API key is malformed, unknown or does not match (never says which)."""


class NotFound(WalletError):
    """No agent, intent, review or payment has this id."""


class InvalidState(WalletError):
    """The object exists but its state forbids the operation (approving an active intent…)."""


class ReviewExpired(InvalidState):
    """The review was not decided within ``review_ttl_seconds``: nothing will be signed for it;
    the agent asks again (a new call, with a new idempotency key)."""


class InvalidRequest(WalletError):
    """A malformed argument: an amount, an address, a URL or an x402 requirement."""


class NoMatchingIntent(WalletError):
    """None of the agent's intents can pay this requirement (network, asset, settlement,
    processor), or the agent has no approved intent at all."""


class ChainFailure(WalletError):
    """A chain call failed and the chain does not show its effect; ``reason`` carries the error."""


class IdempotencyConflict(WalletError):
    """The idempotency key was already used by this agent for another request."""


# ---------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------


class IntentStatus(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    DENIED = "denied"
    REVOKED = "revoked"
    EXPIRED = "expired"


class PaymentStatus(StrEnum):
    AUTHORIZED = "authorized"  # signed and reserved
    SETTLED = "settled"
    RELEASED = "released"  # never served or refused: the reservation went back to the intent


class ReviewStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # signed (``payment_id`` set)
    DENIED = "denied"  # by the reviewer, or by a deny rule when re-evaluated
    EXPIRED = "expired"  # undecided for review_ttl_seconds


# ---------------------------------------------------------------------------------------------
# Tables (on ``wallet.db.metadata``; created by ``Database.create()`` once this module is imported)
# ---------------------------------------------------------------------------------------------

wallet_agents = Table(
    "wallet_agents",
    metadata,
    Column("id", String(40), primary_key=True),  # agt_…
    Column("name", String(200), nullable=False),
    Column("api_key_id", String(16), nullable=False, unique=True),  # public part of the API key
    Column("api_key_digest", String(64), nullable=False),  # keys.ApiKeyRecord.digest
    Column("api_key_prefix", String(16), nullable=False),
    Column("created_at", String(32), nullable=False),
    # The key replaced by the latest rotation, accepted until previous_key_valid_until (unix s):
    Column("previous_key_id", String(16), nullable=True, unique=True),
    Column("previous_key_digest", String(64), nullable=True),
    Column("previous_key_prefix", String(16), nullable=True),
    Column("previous_key_valid_until", Float, nullable=True),
    CheckConstraint("name <> ''", name="wallet_agents_name_nonempty"),
)

wallet_intents = Table(
    "wallet_intents",
    metadata,
    Column("id", String(40), primary_key=True),  # int_…; the ledger's intent account ref
    Column("agent_id", String(40), ForeignKey("wallet_agents.id"), nullable=False),
    Column("status", String(20), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("budget", BigInteger, nullable=False),
    Column("per_payment_cap", BigInteger, nullable=False),
    Column("duration_seconds", BigInteger, nullable=False),
    Column("payees", Text, nullable=False),  # JSON list of checksummed addresses
    Column("hosts", Text, nullable=False),  # JSON list of host patterns
    Column("created_at", String(32), nullable=False),
    Column("decided_at", String(32), nullable=True),
    Column("decided_by", String(200), nullable=True),
    # Set at approval:
    Column("chain_intent_id", String(66), nullable=True, unique=True),  # 0x + EIP-712 digest
    Column("signed_intent", Text, nullable=True),  # aep2.payload.intent_json (public)
    Column("sealed_session_key", LargeBinary, nullable=True),  # keys.Sealer blob
    Column("valid_after", BigInteger, nullable=True),
    Column("valid_before", BigInteger, nullable=True),
    Column("next_nonce", BigInteger, nullable=False, server_default="0"),
    Column("registered_at", String(32), nullable=True),
    Column("revoked_at", String(32), nullable=True),
    Column("chain_revoked_at", String(32), nullable=True),
    CheckConstraint("budget > 0 AND per_payment_cap > 0", name="wallet_intents_amounts"),
    CheckConstraint(
        "status IN ('pending_approval', 'active', 'denied', 'revoked', 'expired')", name="wallet_intents_status"
    ),
)
Index("wallet_intents_by_agent", wallet_intents.c.agent_id, wallet_intents.c.status)

wallet_decisions = Table(
    "wallet_decisions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", String(32), nullable=False),
    Column("agent_id", String(40), nullable=False),
    Column("intent_id", String(40), nullable=True),
    Column("outcome", String(10), nullable=False),
    Column("rule", String(40), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payment_id", String(66), nullable=True),
    Column("review_id", String(40), nullable=True),
    Column("record", Text, nullable=False),  # JSON: Decision.to_json() plus the resource
)
Index("wallet_decisions_by_agent", wallet_decisions.c.agent_id, wallet_decisions.c.id)

wallet_payments = Table(
    "wallet_payments",
    metadata,
    Column("payment_id", String(66), primary_key=True),  # aep2.mandate.payment_id
    Column("agent_id", String(40), ForeignKey("wallet_agents.id"), nullable=False),
    Column("intent_id", String(40), ForeignKey("wallet_intents.id"), nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("payee", String(42), nullable=False),  # lower-case hex
    Column("host", String(253), nullable=True),
    # scheme://host[:port] of the paid URL: where its x402 receipt is read (wallet.settlements)
    Column("origin", String(300), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("at", Float, nullable=False),  # unix seconds of the decision (the policy's clock)
    Column("status", String(16), nullable=False),
    Column("header", Text, nullable=False),  # the PAYMENT-SIGNATURE value returned
    Column("decision_id", Integer, ForeignKey("wallet_decisions.id"), nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("receipt", Text, nullable=True),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    UniqueConstraint("intent_id", "nonce", name="wallet_payments_one_per_nonce"),
    UniqueConstraint("agent_id", "idempotency_key", name="wallet_payments_idempotency"),
    CheckConstraint("status IN ('authorized', 'settled', 'released')", name="wallet_payments_status"),
)
Index("wallet_payments_by_time", wallet_payments.c.at)
Index("wallet_payments_by_payee", wallet_payments.c.payee)

wallet_reviews = Table(
    "wallet_reviews",
    metadata,
    Column("id", String(40), primary_key=True),  # rev_…
    Column("agent_id", String(40), ForeignKey("wallet_agents.id"), nullable=False),
    Column("intent_id", String(40), ForeignKey("wallet_intents.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("rule", String(40), nullable=False),  # the review rule that asked for it
    Column("requirement", Text, nullable=False),  # the x402 accepts entry, JSON
    Column("url", Text, nullable=False),
    Column("method", String(16), nullable=False),
    Column("request_hash", String(80), nullable=False),  # decimal: the mandate's binding
    Column("decision_id", Integer, ForeignKey("wallet_decisions.id"), nullable=False),  # the latest
    Column("payment_id", String(66), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("decided_at", String(32), nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("expires_at", Float, nullable=True),  # unix seconds (the service's clock)
    UniqueConstraint("agent_id", "idempotency_key", name="wallet_reviews_idempotency"),
    CheckConstraint("status IN ('pending', 'approved', 'denied', 'expired')", name="wallet_reviews_status"),
)

wallet_kill_switch = Table(
    "wallet_kill_switch",
    metadata,
    Column("scope", String(40), primary_key=True),  # "*" (every agent) or an agent id
    Column("engaged", Boolean, nullable=False),
    Column("changed_at", String(32), nullable=False),
    Column("changed_by", String(200), nullable=False),
    Column("reason", Text, nullable=False),
)

wallet_rules = Table(
    "wallet_rules",
    metadata,
    Column("scope", String(40), primary_key=True),  # "*" (the owner's default) or an agent id
    Column("rules", Text, nullable=False),  # policy.Rules.to_json()
    Column("changed_at", String(32), nullable=False),
    Column("changed_by", String(200), nullable=False),
)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewAgent:
    """A new agent and its API key, returned once by ``add_agent``. ``api_key`` is kept out of
    ``repr``; unpack it as ``agent_id, api_key = await wallet.add_agent(name)``."""

    agent_id: str
    name: str
    key_id: str
    api_key: str = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return iter((self.agent_id, self.api_key))


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    key_id: str
    created_at: str


@dataclass(frozen=True, slots=True)
class IntentRecord:
    """An intent as the wallet keeps it. ``chain_intent_id`` (0x hex), the validity window and
    ``remaining`` (the unreserved budget, from the ledger) exist once it was approved."""

    id: str
    agent_id: str
    status: IntentStatus
    purpose: str
    budget: int
    per_payment_cap: int
    duration_seconds: int
    payees: tuple[str, ...]
    hosts: tuple[str, ...]
    created_at: str
    chain_intent_id: str | None = None
    valid_after: int | None = None
    valid_before: int | None = None
    remaining: int | None = None
    registered_at: str | None = None
    revoked_at: str | None = None
    chain_revoked_at: str | None = None


@dataclass(frozen=True, slots=True)
class Authorization:
    """The answer to ``authorize_payment`` (and ``approve_review``).

    ``outcome`` ``allow``: ``header`` is the ``PAYMENT-SIGNATURE`` value to send and
    ``payment_id`` the mandate's payment id. ``deny``: nothing was signed. ``review``: nothing
    was signed yet; ``review_id`` names the pending review. ``rule`` and ``reason`` come from
    the policy; ``replayed`` is true when an idempotency key returned an earlier answer.
    ``council``: the AI review council's verdict when the council decided the review.
    """

    outcome: Outcome
    rule: str
    reason: str
    decision_id: int
    intent_id: str | None = None
    amount: int = 0
    payment_id: str | None = None
    header: str | None = field(default=None, repr=False)
    review_id: str | None = None
    replayed: bool = False
    council: Verdict | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    agent_id: str
    intent_id: str
    status: ReviewStatus
    rule: str
    url: str
    method: str
    amount: int
    payee: str
    created_at: str
    payment_id: str | None = None
    decided_by: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    agent_id: str
    intent_id: str
    payee: str
    amount: int
    nonce: int
    status: PaymentStatus
    at: float
    created_at: str
    header: str = field(repr=False)


class IntentRegistry(Protocol):
    """The chain calls the wallet makes with the owner's key (``python -m wallet`` adapts
    ``payer.Escrow``). All are synchronous (web3.py) and run in a worker thread, outside any
    transaction. ``is_registered``: whether the Settlement contract knows the intent (32-byte id).
    """

    def register_intent(self, signed_intent: SignedIntent) -> bytes: ...

    def revoke_intent(self, intent_id: bytes) -> None: ...

    def is_registered(self, intent_id: bytes) -> bool: ...


@dataclass(frozen=True)
class _Offer:
    """An ``aep2`` accepts entry the wallet can pay, read once."""

    entry: dict[str, Any]
    payee: str  # lower-case hex
    amount: int
    min_deadline_seconds: int
    version: int  # 1: a v1 entry (``maxAmountRequired``), signed into an ``X-PAYMENT`` envelope


@dataclass(frozen=True)
class _Candidate:
    row: Any
    limits: IntentLimits


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


class WalletService:
    """The co-wallet of one owner on one deployment and settlement processor.

    ``db``: the wallet's database (created). ``owner``: the unlocked owner keystore; its
    address names the owner's ledger account. ``sealer``: seals session keys at rest.
    ``deployment`` and ``processor``: the chain, token, Settlement contract and the processor
    every intent names. ``webhooks``: the outbox events are enqueued into. ``chain``: where
    intents are registered and revoked (``payer.Escrow`` for the owner); None records
    revocations only in the wallet. ``clock``: unix seconds. ``deadline_seconds``: mandate
    lifetime unless a requirement asks for more (as ``payer.AEP2Auth``). ``review_ttl_seconds``:
    how long a review waits for the reviewer before it is ``expired``. ``council``: decides
    every review at once (``wallet.council``); None leaves reviews to the owner.

    ``spend_sources``: other spends the policy must count besides signed mandates (the
    single-use cards of ``wallet.cards`` add theirs): each is called as ``await
    source(conn, since)`` inside the spend's transaction and returns the ``Spend``s with
    ``at > since`` still counting.
    """

    def __init__(
        self,
        db: Database,
        *,
        owner: OwnerKeystore,
        sealer: Sealer,
        deployment: Deployment,
        processor: str,
        webhooks: Webhooks,
        chain: IntentRegistry | None = None,
        clock: Callable[[], float] = time.time,
        deadline_seconds: int = DEFAULT_DEADLINE_SECONDS,
        review_ttl_seconds: float = 3600.0,
        council: Council | None = None,
    ) -> None:
        if deadline_seconds <= 0:
            raise ValueError(f"deadline_seconds: {deadline_seconds} must be positive")
        if review_ttl_seconds <= 0:
            raise ValueError(f"review_ttl_seconds: {review_ttl_seconds} must be positive")
        self.db = db
        self.owner = owner
        self.sealer = sealer
        self.deployment = deployment
        self.processor = to_checksum_address(processor)
        self.webhooks = webhooks
        self.chain = chain
        self.deadline_seconds = deadline_seconds
        self.review_ttl_seconds = review_ttl_seconds
        self.council = council
        self._clock = clock
        self.spend_sources: list[Callable[[AsyncConnection, float], Awaitable[Sequence[Spend]]]] = []

    def __repr__(self) -> str:
        return f"WalletService(owner={self.owner.address!r}, processor={self.processor!r}, db={self.db!r})"

    @property
    def owner_ref(self) -> str:
        """The owner's ledger account ref: its address."""
        return self.owner.address

    # -- agents ---------------------------------------------------------------------------------

    async def add_agent(self, name: str, *, actor: str = _OWNER_ACTOR) -> NewAgent:
        """Register an agent; its API key is in the result and nowhere else (only a digest is kept)."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidRequest("name", "expected a non-empty name of at most 200 characters")
        api_key, record = issue_api_key()
        agent_id = _new_id("agt")
        async with self.db.transaction() as conn:
            await conn.execute(
                wallet_agents.insert().values(
                    id=agent_id,
                    name=name,
                    api_key_id=record.key_id,
                    api_key_digest=record.digest,
                    api_key_prefix=record.prefix,
                    created_at=utc_now(),
                )
            )
            await audit.append(conn, actor, "agent.added", {"agent_id": agent_id, "name": name, "key_id": record.key_id})
        return NewAgent(agent_id, name, record.key_id, api_key)

    async def authenticate(self, api_key: object) -> str:
        """The id of the agent holding ``api_key`` (its current key, or the key its latest
        rotation replaced while the grace period lasts); ``Unauthenticated`` otherwise."""
        found: dict[str, str] = {}

        async def lookup(key_id: str) -> ApiKeyRecord | None:
            a = wallet_agents
            async with self.db.snapshot() as conn:
                row = (
                    await conn.execute(select(a).where((a.c.api_key_id == key_id) | (a.c.previous_key_id == key_id)))
                ).first()
            if row is None:
                return None
            found["agent_id"] = row.id
            if row.api_key_id == key_id:
                return ApiKeyRecord(row.api_key_id, row.api_key_digest, row.api_key_prefix)
            if row.previous_key_valid_until is None or row.previous_key_valid_until <= self._clock():
                return None
            return ApiKeyRecord(row.previous_key_id, row.previous_key_digest, row.previous_key_prefix)

        if await averify_api_key(api_key, lookup) is None:
            raise Unauthenticated("api_key", "not a valid API key")
        return found["agent_id"]

    async def rotate_api_key(self, agent_id: str, *, grace_seconds: int = 0, actor: str = _OWNER_ACTOR) -> NewAgent:
        """Issue the agent a new API key (in the result, once). The old key stops working at
        once, or after ``grace_seconds`` (0 to 604800) so a running agent can switch over; a
        key replaced by an earlier rotation stops at once. Raises ``NotFound``, ``InvalidRequest``."""
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int) or not 0 <= grace_seconds <= 604_800:
            raise InvalidRequest("grace_seconds", f"expected an integer in 0..604800, got {grace_seconds!r}")
        api_key, record = issue_api_key()
        async with self.db.transaction() as conn:
            row = await self._agent_row(conn, agent_id)
            valid_until = self._clock() + grace_seconds if grace_seconds else None
            await conn.execute(
                update(wallet_agents).where(wallet_agents.c.id == agent_id).values(
                    api_key_id=record.key_id, api_key_digest=record.digest, api_key_prefix=record.prefix,
                    previous_key_id=row.api_key_id if grace_seconds else None,
                    previous_key_digest=row.api_key_digest if grace_seconds else None,
                    previous_key_prefix=row.api_key_prefix if grace_seconds else None,
                    previous_key_valid_until=valid_until,
                )
            )
            await audit.append(conn, actor, "agent.key_rotated", {
                "agent_id": agent_id, "key_id": record.key_id, "previous_key_id": row.api_key_id,
                "grace_seconds": grace_seconds,
            })
        return NewAgent(agent_id, row.name, record.key_id, api_key)

    async def agents(self) -> list[Agent]:
        async with self.db.snapshot() as conn:
            rows = await conn.execute(select(wallet_agents).order_by(wallet_agents.c.created_at))
            return [Agent(r.id, r.name, r.api_key_id, r.created_at) for r in rows]

    # -- funds and rules ------------------------------------------------------------------------

    async def record_deposit(self, amount: int, *, actor: str = _OWNER_ACTOR, idempotency_key: str | None = None) -> int:
        """Record in the ledger that the owner escrowed ``amount`` (the deposit itself is
        ``payer.Escrow.deposit``); the ledger transaction id."""
        async with self.db.transaction() as conn:
            tx = await ledger.deposit(conn, owner=self.owner_ref, amount=amount, idempotency_key=idempotency_key)
            await audit.append(conn, actor, "escrow.deposit", {"owner": self.owner_ref, "amount": amount, "tx": tx})
        return tx

    async def set_rules(self, rules: Rules, *, agent_id: str | None = None, actor: str = _OWNER_ACTOR) -> None:
        """The owner's rules for ``agent_id``, or the default for every agent without its own."""
        scope = _ALL if agent_id is None else agent_id
        body = json.dumps(rules.to_json(), sort_keys=True)
        async with self.db.transaction() as conn:
            if agent_id is not None:
                await self._agent_row(conn, agent_id)
            values = {"rules": body, "changed_at": utc_now(), "changed_by": actor}
            done = await conn.execute(update(wallet_rules).where(wallet_rules.c.scope == scope).values(**values))
            if done.rowcount == 0:
                await conn.execute(wallet_rules.insert().values(scope=scope, **values))
            await audit.append(conn, actor, "rules.set", {"scope": scope, "rules": rules.to_json()})

    async def rules(self, agent_id: str | None = None) -> Rules:
        """The rules that apply to ``agent_id`` (its own, else the owner's default, else none)."""
        async with self.db.snapshot() as conn:
            return await self._rules(conn, agent_id)

    # -- intents --------------------------------------------------------------------------------

    async def draft_intent(
        self,
        agent_id: str,
        *,
        budget: int,
        purpose: str,
        duration_seconds: int,
        per_payment_cap: int,
        payees: Sequence[str] = (),
        hosts: Sequence[str] = (),
    ) -> IntentRecord:
        """An agent asks for an intent; it waits as ``pending_approval`` for the owner, unless
        the owner's standing ``Rules.auto_approve`` covers it (and no kill switch is engaged
        for the agent): then it is approved at once, by ``owner:auto-approve``, as
        ``approve_intent`` would (an escrow that cannot cover it leaves it pending).

        ``budget`` and ``per_payment_cap`` in base units (``0 < cap <= budget``); ``payees``
        (at most 256 addresses, empty: any) are signed into the intent; ``hosts`` (empty: any)
        are enforced by the policy only.
        """
        _positive("budget", budget, ledger.MAX_AMOUNT)
        _positive("per_payment_cap", per_payment_cap, min(budget, MAX_MANDATE_AMOUNT))
        _positive("duration_seconds", duration_seconds, 2**32)
        if not isinstance(purpose, str) or len(purpose) > 2000:
            raise InvalidRequest("purpose", "expected text of at most 2000 characters")
        checked_payees = _payees(payees)
        try:
            limits = IntentLimits(remaining=0, per_payment_cap=0, valid_before=0, hosts=frozenset(hosts))
        except ValueError as exc:
            raise InvalidRequest("hosts", str(exc)) from None
        intent_id = _new_id("int")
        async with self.db.transaction() as conn:
            await self._agent_row(conn, agent_id)
            now = utc_now()
            await conn.execute(
                wallet_intents.insert().values(
                    id=intent_id,
                    agent_id=agent_id,
                    status=IntentStatus.PENDING_APPROVAL.value,
                    purpose=purpose,
                    budget=budget,
                    per_payment_cap=per_payment_cap,
                    duration_seconds=duration_seconds,
                    payees=json.dumps(checked_payees),
                    hosts=json.dumps(sorted(limits.hosts)),
                    created_at=now,
                )
            )
            event = {
                "intent_id": intent_id,
                "agent_id": agent_id,
                "budget": budget,
                "per_payment_cap": per_payment_cap,
                "duration_seconds": duration_seconds,
                "payees": checked_payees,
                "hosts": sorted(limits.hosts),
                "purpose": purpose,
            }
            await audit.append(conn, _agent_actor(agent_id), "intent.drafted", event)
            await self.webhooks.enqueue(conn, EventType.INTENT_REQUESTED, event)
            rules = await self._rules(conn, agent_id)
            switch = await self._kill_switch(conn)
            record = await self._intent_record(conn, intent_id)
        rule = rules.auto_approve
        if rule is None or switch.engaged or agent_id in switch.agents:
            return record
        if rule.refusal(budget=budget, duration_seconds=duration_seconds, per_payment_cap=per_payment_cap,
                        payees=checked_payees, hosts=limits.hosts) is not None:
            return record
        try:
            return await self.approve_intent(intent_id, actor=_AUTO_APPROVE_ACTOR)
        except ledger.InsufficientFunds:
            return record  # the owner's escrow cannot cover it: it waits for the owner

    async def approve_intent(self, intent_id: str, *, actor: str = _OWNER_ACTOR) -> IntentRecord:
        """Sign the intent with the owner's key for a fresh session key, seal the key, allocate
        the budget and mark the intent ``active``; then register it on chain (best effort).

        Raises ``InvalidState`` unless the intent is ``pending_approval`` and
        ``ledger.InsufficientFunds`` when the owner's unallocated escrow cannot cover the budget.
        """
        async with self.db.transaction() as conn:
            # The kill switch's lock: an approval racing an engage-and-revoke is revoked with
            # the rest or comes after it, on PostgreSQL too (SQLite serialises writers anyway).
            await serialize(conn, _SPEND_LOCK)
            row = await self._intent_row(conn, intent_id)
            _require_status(row, IntentStatus.PENDING_APPROVAL)
            now = int(self._clock())
            session_key = create_session_key()
            signed = create_intent(
                self.owner.account,
                session_key=session_key,
                asset=self.deployment.token,
                max_amount=row.budget,
                max_per_payment=row.per_payment_cap,
                valid_after=now - 60,  # clocks a little behind ours already see it valid
                valid_before=now + row.duration_seconds,
                chain_id=self.deployment.chain_id,
                settlement=self.deployment.settlement,
                processor=self.processor,
                payees=tuple(json.loads(row.payees)),
            )
            sealed = self.sealer.seal_session_key(session_key, aad=session_key_aad(intent_id=row.id, agent_id=row.agent_id))
            del session_key
            intent = signed.intent
            chain_id_hex = "0x" + intent.intent_id.hex()
            await ledger.allocate(conn, owner=self.owner_ref, intent=row.id, amount=row.budget, memo=chain_id_hex)
            await conn.execute(
                update(wallet_intents)
                .where(wallet_intents.c.id == row.id)
                .values(
                    status=IntentStatus.ACTIVE.value,
                    decided_at=utc_now(),
                    decided_by=actor,
                    chain_intent_id=chain_id_hex,
                    signed_intent=json.dumps(intent_json(signed), sort_keys=True),
                    sealed_session_key=sealed,
                    valid_after=intent.valid_after,
                    valid_before=intent.valid_before,
                )
            )
            event = {
                "intent_id": row.id,
                "agent_id": row.agent_id,
                "chain_intent_id": chain_id_hex,
                "budget": row.budget,
                "per_payment_cap": row.per_payment_cap,
                "valid_after": intent.valid_after,
                "valid_before": intent.valid_before,
            }
            await audit.append(conn, actor, "intent.approved", event)
            await self.webhooks.enqueue(conn, EventType.INTENT_APPROVED, event)
        if self.chain is not None:
            await self._register(row.id, signed)
        return await self.intent(row.id)

    async def deny_intent(self, intent_id: str, *, actor: str = _OWNER_ACTOR, reason: str = "") -> IntentRecord:
        """Refuse a pending intent: nothing is signed or allocated."""
        async with self.db.transaction() as conn:
            row = await self._intent_row(conn, intent_id)
            _require_status(row, IntentStatus.PENDING_APPROVAL)
            await conn.execute(
                update(wallet_intents)
                .where(wallet_intents.c.id == intent_id)
                .values(status=IntentStatus.DENIED.value, decided_at=utc_now(), decided_by=actor)
            )
            await audit.append(conn, actor, "intent.denied", {"intent_id": intent_id, "reason": reason})
            return await self._intent_record(conn, intent_id)

    async def revoke_intent(self, intent_id: str, *, actor: str = _OWNER_ACTOR, reason: str = "") -> IntentRecord:
        """Stop an active intent now: nothing more is signed under it, its unreserved budget
        goes back to the owner, and it is revoked on chain (after the commit) when a chain is set.
        Mandates already signed stay reserved until confirmed or released."""
        async with self.db.transaction() as conn:
            row = await self._intent_row(conn, intent_id)
            _require_status(row, IntentStatus.ACTIVE)
            await self._revoke_rows(conn, [row], actor, reason)
        await self._revoke_on_chain([row])
        return await self.intent(intent_id)

    async def expire_intents(self, *, actor: str = "wallet") -> list[str]:
        """Mark every active intent past its ``validBefore`` ``expired`` and return its unreserved
        budget to the owner; the ids. (An expired intent signs nothing even before this runs:
        the policy denies it with ``intent_expired``.)"""
        async with self.db.transaction() as conn:
            now = self._clock()
            rows = (
                await conn.execute(
                    select(wallet_intents).where(
                        wallet_intents.c.status == IntentStatus.ACTIVE.value, wallet_intents.c.valid_before <= now
                    )
                )
            ).all()
            for row in rows:
                await conn.execute(
                    update(wallet_intents).where(wallet_intents.c.id == row.id).values(status=IntentStatus.EXPIRED.value)
                )
                reclaimed = await self._reclaim(conn, row.id)
                await audit.append(conn, actor, "intent.expired", {"intent_id": row.id, "reclaimed": reclaimed})
        return [row.id for row in rows]

    async def retry_registration(self, intent_id: str, *, actor: str = _OWNER_ACTOR) -> IntentRecord:
        """Register an approved intent on chain whose registration at approval failed.

        Idempotent: an intent already recorded as registered is returned as is, and one the
        chain already knows (the processor registers an intent when it first settles it) is
        recorded as registered. Raises ``InvalidState`` (no chain configured, never approved,
        or no longer active) and ``ChainFailure`` when the chain refuses and does not know it.
        """
        async with self.db.snapshot() as conn:
            row = await self._intent_row(conn, intent_id)
        if self.chain is None:
            raise InvalidState("intent_id", "this wallet has no chain to register on")
        _require_status(row, IntentStatus.ACTIVE)
        if row.registered_at is not None:
            return await self.intent(intent_id)
        if not await self._register(row.id, parse_intent(json.loads(row.signed_intent)), actor=actor):
            chain_id = bytes.fromhex(row.chain_intent_id[2:])
            if not await asyncio.to_thread(self.chain.is_registered, chain_id):
                raise ChainFailure("intent_id", f"{intent_id!r}: registration failed; see the audit trail")
            await self._chain_outcome(intent_id, "intent.registered", {"found_on_chain": True}, actor=actor,
                                      registered_at=utc_now())
        return await self.intent(intent_id)

    async def intent(self, intent_id: str) -> IntentRecord:
        async with self.db.snapshot() as conn:
            return await self._intent_record(conn, intent_id)

    async def intents(self, *, agent_id: str | None = None) -> list[IntentRecord]:
        async with self.db.snapshot() as conn:
            query = select(wallet_intents.c.id).order_by(wallet_intents.c.created_at)
            if agent_id is not None:
                query = query.where(wallet_intents.c.agent_id == agent_id)
            ids = (await conn.execute(query)).scalars().all()
            return [await self._intent_record(conn, intent_id) for intent_id in ids]

    async def signed_intent(self, intent_id: str) -> SignedIntent:
        """The owner-signed intent of an approved intent (public: gateways see it in payloads)."""
        async with self.db.snapshot() as conn:
            row = await self._intent_row(conn, intent_id)
        if row.signed_intent is None:
            raise InvalidState("intent_id", f"{intent_id!r} was never approved")
        return parse_intent(json.loads(row.signed_intent))

    # -- kill switch ----------------------------------------------------------------------------

    async def engage_kill_switch(
        self, *, agent_id: str | None = None, actor: str = _OWNER_ACTOR, reason: str = "", revoke: bool = True
    ) -> list[str]:
        """Stop every agent (``agent_id`` None) or one: every later ``authorize_payment`` is
        denied with ``kill_switch_global`` / ``kill_switch_agent``. With ``revoke`` the affected
        active intents are revoked too (here, then on chain). Returns the revoked intent ids.

        The switch is written in the spend lock's transaction: a spend that returns after
        this call returned was decided after it, and is denied.
        """
        scope = _ALL if agent_id is None else agent_id
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            if agent_id is not None:
                await self._agent_row(conn, agent_id)
            await self._set_switch(conn, scope, True, actor, reason)
            rows: list[Any] = []
            if revoke:
                query = select(wallet_intents).where(wallet_intents.c.status == IntentStatus.ACTIVE.value)
                if agent_id is not None:
                    query = query.where(wallet_intents.c.agent_id == agent_id)
                rows = list((await conn.execute(query)).all())
                await self._revoke_rows(conn, rows, actor, f"kill switch: {reason}" if reason else "kill switch")
            event = {"scope": "global" if agent_id is None else "agent", "agent_id": agent_id, "reason": reason,
                     "revoked_intents": [row.id for row in rows]}
            await audit.append(conn, actor, "killswitch.engaged", event)
            await self.webhooks.enqueue(conn, EventType.KILLSWITCH_ENGAGED, event)
        await self._revoke_on_chain(rows)
        return [row.id for row in rows]

    async def disengage_kill_switch(self, *, agent_id: str | None = None, actor: str = _OWNER_ACTOR) -> None:
        """Let spending resume (intents revoked by the switch stay revoked: draft new ones)."""
        scope = _ALL if agent_id is None else agent_id
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            await self._set_switch(conn, scope, False, actor, "")
            await audit.append(conn, actor, "killswitch.disengaged", {"scope": scope})

    async def kill_switch(self) -> KillSwitch:
        async with self.db.snapshot() as conn:
            return await self._kill_switch(conn)

    # -- spending -------------------------------------------------------------------------------

    async def authorize_payment(
        self,
        agent_id: str,
        requirement: Mapping[str, Any],
        url: str,
        method: str = "GET",
        body: bytes = b"",
        idempotency_key: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Authorization:
        """Decide one spend and, on ``allow``, sign its mandate.

        ``requirement`` is the 402's ``aep2`` ``accepts`` entry; ``url``, ``method`` and
        ``body`` the request it pays for (the mandate is bound to them, as ``AEP2Auth`` binds
        it). With ``idempotency_key`` a repeated call (same agent, same request) returns the
        first call's answer, the same header included, and never signs twice; the same key
        with another request raises ``IdempotencyConflict``.

        ``context``: what the agent says of the spend (``council.SpendContext``: justification,
        expected ROI, urgency), stored with the decision. When the policy says ``review`` and a
        council is set, the council decides the review once this spend's transaction has
        committed, and the answer is the final ``allow`` or ``deny`` (``council`` set).

        Raises ``NotFound`` (agent), ``InvalidRequest`` (malformed requirement, URL or
        context), ``NoMatchingIntent`` (no intent of the agent can pay this requirement).
        """
        try:
            spend = SpendContext.from_mapping(context)
        except InvalidContext as exc:
            raise InvalidRequest(f"context.{exc.field}", exc.reason) from None
        auth = await self._decide(agent_id, requirement, url, method, body, idempotency_key, spend)
        if auth.outcome == "review" and self.council is not None and not auth.replayed:
            return await self._convene(auth, spend)
        return auth

    async def _decide(
        self,
        agent_id: str,
        requirement: Mapping[str, Any],
        url: str,
        method: str,
        body: bytes,
        idempotency_key: str | None,
        spend: SpendContext,
    ) -> Authorization:
        """The spend's one serialized transaction: allow (signed), deny, or a pending review."""
        offer = self._offer(requirement)
        path, host = _target(url)
        method = _method(method)
        if not isinstance(body, (bytes, bytearray)):
            raise InvalidRequest("body", "expected bytes")
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
            raise InvalidRequest("idempotency_key", "expected a non-empty string of at most 200 characters")
        binding = request_hash(method, path, bytes(body))
        digest = _request_digest(offer.entry, url, method, bytes(body))
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            await self._agent_row(conn, agent_id)
            if idempotency_key is not None:
                earlier = await self._replay(conn, agent_id, idempotency_key, digest)
                if earlier is not None:
                    return earlier
            now = self._clock()  # after the lock: decisions are timed in the order they are made
            candidate = await self._pick_intent(conn, agent_id, offer, now)
            rules = await self._rules(conn, agent_id)
            request = SpendRequest(agent_id, candidate.row.id, offer.payee, host, offer.amount, now, path=_path_only(path))
            decision = evaluate(
                request, await self._history(conn, request, rules), rules, candidate.limits, await self._kill_switch(conn)
            )
            context = {"url": url, "method": method, "requirement": offer.entry}
            if spend.to_json():
                context["spend"] = spend.to_json()
            if decision.outcome == "allow":
                return await self._sign(
                    conn, candidate.row, offer, binding, url, now, decision, context, idempotency_key, digest
                )
            decision_id = await self._store_decision(conn, agent_id, candidate.row.id, decision, context)
            if decision.outcome == "deny":
                event = _decision_event(agent_id, candidate.row.id, offer, decision, decision_id, url)
                await audit.append(conn, _agent_actor(agent_id), "payment.denied", event)
                await self.webhooks.enqueue(conn, EventType.PAYMENT_DENIED, event)
                return Authorization(
                    "deny", str(decision.rule), decision.reason, decision_id, candidate.row.id, offer.amount
                )
            review_id = _new_id("rev")
            await conn.execute(
                wallet_reviews.insert().values(
                    id=review_id,
                    agent_id=agent_id,
                    intent_id=candidate.row.id,
                    status=ReviewStatus.PENDING.value,
                    rule=str(decision.rule),
                    requirement=json.dumps(offer.entry, sort_keys=True),
                    url=url,
                    method=method,
                    request_hash=str(binding),
                    decision_id=decision_id,
                    idempotency_key=idempotency_key,
                    request_digest=digest,
                    created_at=utc_now(),
                    expires_at=now + self.review_ttl_seconds,
                )
            )
            await conn.execute(
                update(wallet_decisions).where(wallet_decisions.c.id == decision_id).values(review_id=review_id)
            )
            event = _decision_event(agent_id, candidate.row.id, offer, decision, decision_id, url) | {"review_id": review_id}
            await audit.append(conn, _agent_actor(agent_id), "payment.review_requested", event)
            return Authorization(
                "review", str(decision.rule), decision.reason, decision_id, candidate.row.id, offer.amount,
                review_id=review_id,
            )

    async def _convene(self, auth: Authorization, spend: SpendContext) -> Authorization:
        """The council decides the pending review ``auth`` names, outside any write transaction:
        read the case, ask the judges, store their votes, then approve or deny the review as
        actor ``council``. If the owner decided it meanwhile, the owner's decision stands."""
        assert self.council is not None and auth.review_id is not None
        async with self.db.snapshot() as conn:
            review = await self._review_row(conn, auth.review_id)
            intent = await self._intent_row(conn, review.intent_id)
            remaining = (await self._limits(conn, intent)).remaining
            record = json.loads(
                (await conn.execute(select(wallet_decisions.c.record).where(wallet_decisions.c.id == auth.decision_id))).scalar_one()
            )
            recent = (
                await conn.execute(
                    select(wallet_payments.c.at, wallet_payments.c.amount, wallet_payments.c.payee, wallet_payments.c.host)
                    .where(wallet_payments.c.agent_id == review.agent_id,
                           wallet_payments.c.status != PaymentStatus.RELEASED.value)
                    .order_by(wallet_payments.c.at.desc())
                    .limit(_RECENT_SPENDS)
                )
            ).all()
        request, usage = record["inputs"]["request"], record["inputs"]["usage"]
        case = SpendCase(
            review_id=review.id, agent_id=review.agent_id, intent_id=intent.id, amount=request["amount"],
            payee=request["payee"], host=request["host"], resource=_resource(review.url), method=review.method,
            rule=auth.rule, reason=auth.reason, purpose=intent.purpose, budget=intent.budget, remaining=remaining,
            per_payment_cap=intent.per_payment_cap,
            mission=mission_check(intent.purpose, request["host"], request.get("path")), context=spend,
            spent_24h=usage["rolling_24h"], payee_paid_before=usage["payee_paid_before"],
            recent=tuple(RecentSpend(r.at, r.amount, r.payee, r.host) for r in recent), now=request["at"],
        )
        verdict = await self.council.deliberate(case)
        async with self.db.transaction() as conn:
            await store_votes(conn, review.id, verdict)
            await audit.append(conn, COUNCIL_ACTOR, "council.voted", {
                "review_id": review.id, "agent_id": review.agent_id, "approved": verdict.approved,
                "approvals": verdict.approvals, "denials": verdict.denials, "abstentions": verdict.abstentions,
                "quorum": verdict.quorum,
            })
        try:
            if verdict.approved:
                await self.approve_review(review.id, actor=COUNCIL_ACTOR)
            else:
                await self.deny_review(review.id, actor=COUNCIL_ACTOR, reason=verdict.reason)
        except InvalidState:
            pass  # the owner decided first
        return await self.review_authorization(review.agent_id, review.id)

    async def approve_review(self, review_id: str, *, actor: str = _OWNER_ACTOR) -> Authorization:
        """The reviewer allows a spend that went to review. It is evaluated again on the
        history of now, with the review rules off: a deny rule that fires now (the cap filled
        up meanwhile, the kill switch, an expired intent) still denies, and the review is
        then ``denied``. On ``allow`` the mandate is signed as ``authorize_payment`` would;
        the agent fetches the header with ``review_authorization`` or by repeating its call
        with the same idempotency key. Raises ``ReviewExpired`` past ``review_ttl_seconds``."""
        await self.expire_reviews()
        async with self.db.transaction() as conn:
            await serialize(conn, _SPEND_LOCK)
            review = await self._pending_review(conn, review_id)
            entry = json.loads(review.requirement)
            offer = self._offer(entry)
            path, host = _target(review.url)
            now = self._clock()
            row = await self._intent_row(conn, review.intent_id)
            limits = await self._limits(conn, row)
            rules = (await self._rules(conn, review.agent_id)).without_review()
            request = SpendRequest(review.agent_id, row.id, offer.payee, host, offer.amount, now, path=_path_only(path))
            decision = evaluate(request, await self._history(conn, request, rules), rules, limits, await self._kill_switch(conn))
            context = {"url": review.url, "method": review.method, "requirement": entry, "review_id": review_id,
                       "reviewer": actor}
            decided = {"decided_at": utc_now(), "decided_by": actor}
            if decision.outcome == "allow":
                result = await self._sign(
                    conn, row, offer, int(review.request_hash), review.url, now, decision, context,
                    review.idempotency_key, review.request_digest, review_id=review_id, actor=actor,
                )
                await conn.execute(
                    update(wallet_reviews)
                    .where(wallet_reviews.c.id == review_id)
                    .values(status=ReviewStatus.APPROVED.value, payment_id=result.payment_id,
                            decision_id=result.decision_id, **decided)
                )
                return result
            decision_id = await self._store_decision(conn, review.agent_id, row.id, decision, context, review_id=review_id)
            await conn.execute(
                update(wallet_reviews)
                .where(wallet_reviews.c.id == review_id)
                .values(status=ReviewStatus.DENIED.value, decision_id=decision_id, **decided)
            )
            event = _decision_event(review.agent_id, row.id, offer, decision, decision_id, review.url)
            await audit.append(conn, actor, "payment.denied", event | {"review_id": review_id})
            await self.webhooks.enqueue(conn, EventType.PAYMENT_DENIED, event | {"review_id": review_id})
            return Authorization("deny", str(decision.rule), decision.reason, decision_id, row.id, offer.amount,
                                 review_id=review_id)

    async def deny_review(self, review_id: str, *, actor: str = _OWNER_ACTOR, reason: str = "") -> Review:
        """The reviewer refuses a spend that went to review: nothing is signed."""
        await self.expire_reviews()
        async with self.db.transaction() as conn:
            review = await self._pending_review(conn, review_id)
            entry = json.loads(review.requirement)
            why = f"denied by reviewer {actor}" + (f": {reason}" if reason else "")
            denial = Decision("deny", Rule(review.rule), why)
            decision_id = await self._store_decision(
                conn, review.agent_id, review.intent_id, denial,
                {"url": review.url, "method": review.method, "requirement": entry, "reviewer": actor}, review_id=review_id,
            )
            await conn.execute(
                update(wallet_reviews)
                .where(wallet_reviews.c.id == review_id)
                .values(status=ReviewStatus.DENIED.value, decision_id=decision_id, decided_at=utc_now(), decided_by=actor)
            )
            event = {"review_id": review_id, "agent_id": review.agent_id, "intent_id": review.intent_id,
                     "decision_id": decision_id, "rule": review.rule, "reason": denial.reason}
            await audit.append(conn, actor, "payment.denied", event)
            await self.webhooks.enqueue(conn, EventType.PAYMENT_DENIED, event)
            return await self._review(conn, review_id)

    async def expire_reviews(self, *, actor: str = "wallet") -> list[str]:
        """Mark every pending review past its ``expires_at`` ``expired`` (nothing was reserved
        for it, so nothing is released); audit ``payment.review_expired`` each; the ids."""
        r = wallet_reviews
        async with self.db.transaction() as conn:
            due = (r.c.status == ReviewStatus.PENDING.value) & (r.c.expires_at <= self._clock())
            rows = (await conn.execute(select(r.c.id, r.c.agent_id, r.c.intent_id, r.c.expires_at).where(due))).all()
            if rows:
                await conn.execute(
                    update(r).where(r.c.id.in_([row.id for row in rows]), due)
                    .values(status=ReviewStatus.EXPIRED.value, decided_at=utc_now(), decided_by=actor)
                )
            for row in rows:
                await audit.append(conn, actor, "payment.review_expired", {
                    "review_id": row.id, "agent_id": row.agent_id, "intent_id": row.intent_id,
                    "expires_at": row.expires_at,
                })
        return [row.id for row in rows]

    async def review(self, review_id: str) -> Review:
        await self.expire_reviews()
        async with self.db.snapshot() as conn:
            return await self._review(conn, review_id)

    async def reviews(self, *, status: ReviewStatus | None = ReviewStatus.PENDING) -> list[Review]:
        """Reviews in ``status`` (None: all), oldest first, after expiring the overdue ones."""
        await self.expire_reviews()
        async with self.db.snapshot() as conn:
            query = select(wallet_reviews.c.id).order_by(wallet_reviews.c.created_at)
            if status is not None:
                query = query.where(wallet_reviews.c.status == status.value)
            return [await self._review(conn, rid) for rid in (await conn.execute(query)).scalars().all()]

    async def review_authorization(self, agent_id: str, review_id: str) -> Authorization:
        """The agent's view of its review: the latest decision, with the header once approved.
        Raises ``ReviewExpired`` once it expired undecided."""
        await self.expire_reviews()
        async with self.db.snapshot() as conn:
            review = await self._review_row(conn, review_id)
            if review.agent_id != agent_id:
                raise NotFound("review_id", f"no review {review_id!r} for this agent")
            return await self._from_review(conn, review, replayed=False)

    # -- settlement feedback --------------------------------------------------------------------

    async def confirm(self, payment_id: str, receipt: Mapping[str, Any] | None = None, *, actor: str = "gateway") -> Payment:
        """The payment was served and accepted: ``reserved → payee`` in the ledger.

        ``receipt`` is the decoded ``PAYMENT-RESPONSE`` (x402 ``SettleResponse``): if it names
        a payment id or an amount they must be this payment's; ``success: false`` is refused
        (call ``release_payment``). Confirming a settled payment again returns it unchanged.
        """
        receipt = dict(receipt or {})
        if receipt.get("success") is False:
            raise InvalidRequest("receipt.success", "the receipt reports a failure: release the payment instead")
        extra = receipt.get("extra") if isinstance(receipt.get("extra"), dict) else {}
        named = receipt.get("paymentId", extra.get("paymentId"))
        if named is not None and str(named).lower() != payment_id.lower():
            raise InvalidRequest("receipt.paymentId", f"{named!r} is not {payment_id!r}")
        async with self.db.transaction() as conn:
            row = await self._payment_row(conn, payment_id)
            if row.status == PaymentStatus.SETTLED.value:
                return _payment(row)
            if row.status != PaymentStatus.AUTHORIZED.value:
                raise InvalidState("payment_id", f"{payment_id!r} is {row.status}")
            if "amount" in receipt and str(receipt["amount"]) != str(row.amount):
                raise InvalidRequest("receipt.amount", f"{receipt['amount']!r} is not the mandate's {row.amount}")
            tx = await ledger.settle(conn, payment_id=payment_id, payee=row.payee, memo="receipt")
            await self._set_payment_status(conn, payment_id, PaymentStatus.SETTLED, receipt=json.dumps(receipt, sort_keys=True))
            event = {"payment_id": payment_id, "agent_id": row.agent_id, "intent_id": row.intent_id,
                     "payee": row.payee, "amount": row.amount, "tx": tx}
            await audit.append(conn, actor, "payment.settled", event)
            await self.webhooks.enqueue(conn, EventType.PAYMENT_SETTLED, event)
            return _payment(await self._payment_row(conn, payment_id))

    async def release_payment(self, payment_id: str, *, actor: str = "gateway", reason: str = "") -> Payment:
        """The payment was refused or never served: its reservation goes back to the intent
        (and on to the owner when the intent is no longer active), and it stops counting
        against the caps."""
        async with self.db.transaction() as conn:
            row = await self._payment_row(conn, payment_id)
            if row.status != PaymentStatus.AUTHORIZED.value:
                raise InvalidState("payment_id", f"{payment_id!r} is {row.status}")
            tx = await ledger.release(conn, payment_id=payment_id, memo=reason)
            await self._set_payment_status(conn, payment_id, PaymentStatus.RELEASED)
            intent = await self._intent_row(conn, row.intent_id)
            reclaimed = await self._reclaim(conn, row.intent_id) if intent.status != IntentStatus.ACTIVE.value else 0
            await audit.append(conn, actor, "payment.released", {
                "payment_id": payment_id, "agent_id": row.agent_id, "intent_id": row.intent_id,
                "amount": row.amount, "tx": tx, "reclaimed": reclaimed, "reason": reason,
            })
            return _payment(await self._payment_row(conn, payment_id))

    async def payment(self, payment_id: str) -> Payment:
        async with self.db.snapshot() as conn:
            return _payment(await self._payment_row(conn, payment_id))

    async def payments(self, *, agent_id: str | None = None) -> list[Payment]:
        async with self.db.snapshot() as conn:
            query = select(wallet_payments).order_by(wallet_payments.c.at)
            if agent_id is not None:
                query = query.where(wallet_payments.c.agent_id == agent_id)
            return [_payment(row) for row in await conn.execute(query)]

    async def decisions(self, *, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored decision, oldest first: its id, outcome, rule, reason and the full
        record it was made on (``Decision.to_json()`` plus the request)."""
        async with self.db.snapshot() as conn:
            query = select(wallet_decisions).order_by(wallet_decisions.c.id)
            if agent_id is not None:
                query = query.where(wallet_decisions.c.agent_id == agent_id)
            return [
                {"id": row.id, "at": row.at, "agent_id": row.agent_id, "intent_id": row.intent_id,
                 "outcome": row.outcome, "rule": row.rule, "reason": row.reason, "payment_id": row.payment_id,
                 "review_id": row.review_id, "record": json.loads(row.record)}
                for row in await conn.execute(query)
            ]

    # -- steps of a spend -----------------------------------------------------------------------

    def _offer(self, requirement: Mapping[str, Any]) -> _Offer:
        """Read an ``aep2`` accepts entry; ``NoMatchingIntent`` if it is for another chain,
        token, Settlement contract or processor than this wallet's intents."""
        if not isinstance(requirement, Mapping):
            raise InvalidRequest("requirement", "expected an x402 accepts entry (an object)")
        entry = json.loads(json.dumps(dict(requirement)))  # a plain JSON copy, stored as given
        version = 1 if "maxAmountRequired" in entry else 2
        try:
            model: PaymentRequirements | PaymentRequirementsV1 = (
                PaymentRequirementsV1 if version == 1 else PaymentRequirements
            ).model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in ("requirement", *error["loc"]))
            raise InvalidRequest(where, error["msg"]) from None
        if model.scheme != SCHEME:
            raise InvalidRequest("requirement.scheme", f"{model.scheme!r}: the wallet signs {SCHEME!r} only")
        extra = model.extra or {}
        try:
            network = caip2(chain_id_of(model.network))  # a v1 name or a CAIP-2 id
        except ValueError:
            network = model.network
        wanted = {
            "network": (network, self.deployment.network),
            "asset": (model.asset, self.deployment.token),
            "extra.settlement": (extra.get("settlement"), self.deployment.settlement),
        }
        if extra.get("processor") is not None:
            wanted["extra.processor"] = (extra["processor"], self.processor)
        for name, (offered, ours) in wanted.items():
            if str(offered).lower() != ours.lower():
                raise NoMatchingIntent(f"requirement.{name}", f"{offered!r}: this wallet's intents use {ours}")
        try:
            payee = to_checksum_address(model.pay_to).lower()
        except (ValueError, TypeError):
            raise InvalidRequest("requirement.payTo", f"{model.pay_to!r} is not an address") from None
        amount = int(model.max_amount_required if isinstance(model, PaymentRequirementsV1) else model.amount)
        _positive("requirement.amount", amount, MAX_MANDATE_AMOUNT)
        minimum = extra.get("minDeadlineSeconds", 0)
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
            raise InvalidRequest("requirement.extra.minDeadlineSeconds", f"{minimum!r} is not a non-negative integer")
        return _Offer(entry, payee, amount, minimum, version)

    async def _pick_intent(self, conn: AsyncConnection, agent_id: str, offer: _Offer, now: float) -> _Candidate:
        """The agent's intent to spend from: a usable one (active, in its window, this payee
        allowed, budget left) expiring first; failing that the latest approved one, so the
        policy names why it cannot pay (revoked, expired, payee, budget)."""
        rows = (
            await conn.execute(
                select(wallet_intents)
                .where(
                    wallet_intents.c.agent_id == agent_id,
                    wallet_intents.c.status.in_(
                        [IntentStatus.ACTIVE.value, IntentStatus.REVOKED.value, IntentStatus.EXPIRED.value]
                    ),
                )
                .order_by(wallet_intents.c.valid_before)
            )
        ).all()
        if not rows:
            raise NoMatchingIntent("agent_id", f"agent {agent_id} has no approved intent")
        candidates = [_Candidate(row, await self._limits(conn, row)) for row in rows]
        for candidate in candidates:
            limits = candidate.limits
            if (
                not limits.revoked
                and limits.valid_after <= now < limits.valid_before
                and (not limits.payees or offer.payee in limits.payees)
                and offer.amount <= min(limits.remaining, limits.per_payment_cap)
            ):
                return candidate
        return max(candidates, key=lambda c: (not c.limits.revoked, c.row.valid_before))

    async def _limits(self, conn: AsyncConnection, row: Any) -> IntentLimits:
        account_id = await ledger.find_account(conn, AccountKind.INTENT, row.id)
        remaining = 0 if account_id is None else await ledger.balance(conn, account_id)
        return IntentLimits(
            remaining=remaining,
            per_payment_cap=row.per_payment_cap,
            valid_before=row.valid_before,
            valid_after=row.valid_after,
            payees=frozenset(json.loads(row.payees)),
            hosts=frozenset(json.loads(row.hosts)),
            revoked=row.status == IntentStatus.REVOKED.value,
            purpose=row.purpose,
        )

    async def _history(self, conn: AsyncConnection, request: SpendRequest, rules: Rules) -> SpendHistory:
        """Every spend still counting since ``history_since``, in one query (plus, only when
        ``review_new_payee`` is on, who ever paid this payee)."""
        rows = await conn.execute(
            select(
                wallet_payments.c.agent_id,
                wallet_payments.c.at,
                wallet_payments.c.amount,
                wallet_payments.c.payee,
                wallet_payments.c.host,
            ).where(
                wallet_payments.c.at > history_since(request.at, rules),
                wallet_payments.c.status != PaymentStatus.RELEASED.value,
            )
        )
        spends = tuple(Spend(r.agent_id, r.at, r.amount, r.payee, r.host) for r in rows)
        for source in self.spend_sources:
            spends += tuple(await source(conn, history_since(request.at, rules)))
        paid_by: frozenset[str] = frozenset()
        if rules.review_new_payee:
            paid_by = frozenset(
                (
                    await conn.execute(
                        select(wallet_payments.c.agent_id)
                        .where(wallet_payments.c.payee == request.payee)
                        .distinct()
                    )
                ).scalars()
            )
        return SpendHistory(spends, paid_by)

    async def _sign(
        self,
        conn: AsyncConnection,
        row: Any,
        offer: _Offer,
        binding: int,
        url: str,
        now: float,
        decision: Decision,
        context: dict[str, Any],
        idempotency_key: str | None,
        digest: str,
        *,
        review_id: str | None = None,
        actor: str | None = None,
    ) -> Authorization:
        """Take a nonce, sign the mandate with the unsealed session key, reserve, record."""
        nonce = int(row.next_nonce)
        await conn.execute(
            update(wallet_intents).where(wallet_intents.c.id == row.id).values(next_nonce=wallet_intents.c.next_nonce + 1)
        )
        signed = parse_intent(json.loads(row.signed_intent))
        lifetime = max(self.deadline_seconds, offer.min_deadline_seconds)
        mandate = Mandate(
            intent_id=signed.intent.intent_id,
            payee=offer.payee,
            amount=offer.amount,
            nonce=nonce,
            deadline=min(int(now) + lifetime, MAX_DEADLINE),
            request_hash=binding,
        )
        key = self.sealer.open_session_key(
            row.sealed_session_key, aad=session_key_aad(intent_id=row.id, agent_id=row.agent_id)
        )
        signature = mandate.sign(key)
        del key
        payload = build_payload(mandate, signature, signed)
        if offer.version == 1:
            envelope = {"x402Version": 1, "scheme": SCHEME, "network": offer.entry["network"], "payload": payload}
        else:
            envelope = {"x402Version": 2, "accepted": offer.entry, "resource": {"url": url}, "payload": payload}
        header = encode_header(envelope)
        payment_id = mandate.payment_id
        await ledger.reserve(conn, intent=row.id, payment_id=payment_id, amount=offer.amount, memo=f"nonce {nonce}")
        decision_id = await self._store_decision(
            conn, row.agent_id, row.id, decision, context, payment_id=payment_id, review_id=review_id
        )
        stamp = utc_now()
        _path, host = _target(url)
        await conn.execute(
            wallet_payments.insert().values(
                payment_id=payment_id,
                agent_id=row.agent_id,
                intent_id=row.id,
                nonce=nonce,
                payee=offer.payee,
                host=host,
                origin=_origin(url),
                amount=offer.amount,
                at=now,
                status=PaymentStatus.AUTHORIZED.value,
                header=header,
                decision_id=decision_id,
                idempotency_key=idempotency_key,
                request_digest=digest,
                created_at=stamp,
                updated_at=stamp,
            )
        )
        event = _decision_event(row.agent_id, row.id, offer, decision, decision_id, url) | {
            "payment_id": payment_id,
            "chain_intent_id": row.chain_intent_id,
            "nonce": nonce,
            "deadline": mandate.deadline,
        }
        if review_id is not None:
            event["review_id"] = review_id
        await audit.append(conn, actor or _agent_actor(row.agent_id), "payment.authorized", event)
        await self.webhooks.enqueue(conn, EventType.PAYMENT_AUTHORIZED, event)
        return Authorization(
            "allow", str(decision.rule), decision.reason, decision_id, row.id, offer.amount, payment_id, header,
            review_id=review_id,
        )

    async def _replay(self, conn: AsyncConnection, agent_id: str, key: str, digest: str) -> Authorization | None:
        """The earlier answer to ``key`` (a signed payment or a review), or None."""
        payment = (
            await conn.execute(
                select(wallet_payments, wallet_decisions.c.rule, wallet_decisions.c.reason)
                .join(wallet_decisions, wallet_decisions.c.id == wallet_payments.c.decision_id)
                .where(wallet_payments.c.agent_id == agent_id, wallet_payments.c.idempotency_key == key)
            )
        ).first()
        if payment is not None:
            _same_request(key, payment.request_digest, digest)
            return Authorization(
                "allow", payment.rule, payment.reason, payment.decision_id, payment.intent_id, payment.amount,
                payment.payment_id, payment.header, replayed=True,
            )
        review = (
            await conn.execute(
                select(wallet_reviews).where(wallet_reviews.c.agent_id == agent_id, wallet_reviews.c.idempotency_key == key)
            )
        ).first()
        if review is None:
            return None
        _same_request(key, review.request_digest, digest)
        return await self._from_review(conn, review, replayed=True)

    async def _from_review(self, conn: AsyncConnection, review: Any, *, replayed: bool) -> Authorization:
        if review.status == ReviewStatus.EXPIRED.value:
            raise ReviewExpired("review_id", f"{review.id!r} expired undecided; ask again with a new idempotency key")
        decision = (await conn.execute(select(wallet_decisions).where(wallet_decisions.c.id == review.decision_id))).one()
        amount = int(json.loads(review.requirement)["amount"])
        council = await load_verdict(conn, review.id) if review.decided_by == COUNCIL_ACTOR else None
        if review.status == ReviewStatus.APPROVED.value:
            header = (
                await conn.execute(select(wallet_payments.c.header).where(wallet_payments.c.payment_id == review.payment_id))
            ).scalar_one()
            return Authorization("allow", decision.rule, decision.reason, decision.id, review.intent_id, amount,
                                 review.payment_id, header, review_id=review.id, replayed=replayed, council=council)
        outcome: Outcome = "review" if review.status == ReviewStatus.PENDING.value else "deny"
        return Authorization(outcome, decision.rule, decision.reason, decision.id, review.intent_id, amount,
                             review_id=review.id, replayed=replayed, council=council)

    async def _store_decision(
        self,
        conn: AsyncConnection,
        agent_id: str,
        intent_id: str | None,
        decision: Decision,
        context: Mapping[str, Any],
        *,
        payment_id: str | None = None,
        review_id: str | None = None,
    ) -> int:
        record = decision.to_json() | {"context": dict(context)}
        result = await conn.execute(
            wallet_decisions.insert().values(
                at=utc_now(),
                agent_id=agent_id,
                intent_id=intent_id,
                outcome=decision.outcome,
                rule=str(decision.rule),
                reason=decision.reason,
                payment_id=payment_id,
                review_id=review_id,
                record=json.dumps(record, sort_keys=True),
            )
        )
        return int(result.inserted_primary_key[0])

    # -- internals ------------------------------------------------------------------------------

    async def _agent_row(self, conn: AsyncConnection, agent_id: str) -> Any:
        return await row_or_not_found(conn, wallet_agents.c.id, agent_id, "agent_id", "agent")

    async def _intent_row(self, conn: AsyncConnection, intent_id: str) -> Any:
        return await row_or_not_found(conn, wallet_intents.c.id, intent_id, "intent_id", "intent")

    async def _review_row(self, conn: AsyncConnection, review_id: str) -> Any:
        return await row_or_not_found(conn, wallet_reviews.c.id, review_id, "review_id", "review")

    async def _pending_review(self, conn: AsyncConnection, review_id: str) -> Any:
        """The review row if a reviewer may still decide it; ``ReviewExpired`` or ``InvalidState``."""
        review = await self._review_row(conn, review_id)
        overdue = review.expires_at is not None and review.expires_at <= self._clock()
        if review.status == ReviewStatus.EXPIRED.value or (review.status == ReviewStatus.PENDING.value and overdue):
            raise ReviewExpired("review_id", f"{review_id!r} expired undecided")
        if review.status != ReviewStatus.PENDING.value:
            raise InvalidState("review_id", f"{review_id!r} is {review.status}, not pending")
        return review

    async def _payment_row(self, conn: AsyncConnection, payment_id: str) -> Any:
        return await row_or_not_found(conn, wallet_payments.c.payment_id, payment_id, "payment_id", "payment")

    async def _intent_record(self, conn: AsyncConnection, intent_id: str) -> IntentRecord:
        row = await self._intent_row(conn, intent_id)
        remaining = None
        if row.chain_intent_id is not None:
            account_id = await ledger.find_account(conn, AccountKind.INTENT, row.id)
            remaining = 0 if account_id is None else await ledger.balance(conn, account_id)
        return IntentRecord(
            id=row.id,
            agent_id=row.agent_id,
            status=IntentStatus(row.status),
            purpose=row.purpose,
            budget=row.budget,
            per_payment_cap=row.per_payment_cap,
            duration_seconds=row.duration_seconds,
            payees=tuple(json.loads(row.payees)),
            hosts=tuple(json.loads(row.hosts)),
            created_at=row.created_at,
            chain_intent_id=row.chain_intent_id,
            valid_after=row.valid_after,
            valid_before=row.valid_before,
            remaining=remaining,
            registered_at=row.registered_at,
            revoked_at=row.revoked_at,
            chain_revoked_at=row.chain_revoked_at,
        )

    async def _review(self, conn: AsyncConnection, review_id: str) -> Review:
        row = await self._review_row(conn, review_id)
        entry = json.loads(row.requirement)
        return Review(
            id=row.id, agent_id=row.agent_id, intent_id=row.intent_id, status=ReviewStatus(row.status),
            rule=row.rule, url=row.url, method=row.method, amount=int(entry["amount"]),
            payee=to_checksum_address(entry["payTo"]), created_at=row.created_at, payment_id=row.payment_id,
            decided_by=row.decided_by, expires_at=row.expires_at,
        )

    async def _rules(self, conn: AsyncConnection, agent_id: str | None) -> Rules:
        scopes = [_ALL] if agent_id is None else [agent_id, _ALL]
        rows = {r.scope: r.rules for r in await conn.execute(select(wallet_rules).where(wallet_rules.c.scope.in_(scopes)))}
        for scope in scopes:
            if scope in rows:
                return _rules_from_json(json.loads(rows[scope]))
        return Rules()

    async def _kill_switch(self, conn: AsyncConnection) -> KillSwitch:
        rows = (await conn.execute(select(wallet_kill_switch.c.scope).where(wallet_kill_switch.c.engaged))).scalars().all()
        return KillSwitch(engaged=_ALL in rows, agents=frozenset(s for s in rows if s != _ALL))

    async def _set_switch(self, conn: AsyncConnection, scope: str, engaged: bool, actor: str, reason: str) -> None:
        values = {"engaged": engaged, "changed_at": utc_now(), "changed_by": actor, "reason": reason}
        done = await conn.execute(update(wallet_kill_switch).where(wallet_kill_switch.c.scope == scope).values(**values))
        if done.rowcount == 0:
            await conn.execute(wallet_kill_switch.insert().values(scope=scope, **values))

    async def _set_payment_status(
        self, conn: AsyncConnection, payment_id: str, status: PaymentStatus, **values: Any
    ) -> None:
        await conn.execute(
            update(wallet_payments)
            .where(wallet_payments.c.payment_id == payment_id)
            .values(status=status.value, updated_at=utc_now(), **values)
        )

    async def _reclaim(self, conn: AsyncConnection, intent_id: str) -> int:
        """Return an intent's unreserved budget to the owner; the amount (0: nothing left)."""
        account_id = await ledger.find_account(conn, AccountKind.INTENT, intent_id)
        amount = 0 if account_id is None else await ledger.balance(conn, account_id)
        if amount > 0:
            await ledger.reclaim(conn, intent=intent_id, amount=amount)
        return amount

    async def _revoke_rows(self, conn: AsyncConnection, rows: Sequence[Any], actor: str, reason: str) -> None:
        for row in rows:
            await conn.execute(
                update(wallet_intents)
                .where(wallet_intents.c.id == row.id)
                .values(status=IntentStatus.REVOKED.value, revoked_at=utc_now())
            )
            reclaimed = await self._reclaim(conn, row.id)
            await audit.append(conn, actor, "intent.revoked", {
                "intent_id": row.id, "agent_id": row.agent_id, "chain_intent_id": row.chain_intent_id,
                "reclaimed": reclaimed, "reason": reason,
            })

    async def _register(self, intent_id: str, signed: SignedIntent, *, actor: str = "wallet") -> bool:
        """Register on chain, then record the outcome; never raises for a chain failure."""
        assert self.chain is not None
        try:
            await asyncio.to_thread(self.chain.register_intent, signed)
        except Exception as exc:  # the chain's errors vary (EscrowError, RPC); record, go on
            await self._chain_outcome(intent_id, "intent.register_failed", {"error": _short(exc)}, actor=actor)
            return False
        await self._chain_outcome(intent_id, "intent.registered", {}, actor=actor, registered_at=utc_now())
        return True

    async def _revoke_on_chain(self, rows: Sequence[Any]) -> None:
        """Revoke each intent on chain (registering it first if the wallet never did)."""
        if self.chain is None:
            return
        for row in rows:
            if row.chain_intent_id is None:
                continue
            intent_id = bytes.fromhex(row.chain_intent_id[2:])
            if row.registered_at is None:
                await self._register(row.id, parse_intent(json.loads(row.signed_intent)))
            try:
                await asyncio.to_thread(self.chain.revoke_intent, intent_id)
            except Exception as exc:
                await self._chain_outcome(row.id, "intent.chain_revoke_failed", {"error": _short(exc)})
                continue
            await self._chain_outcome(row.id, "intent.chain_revoked", {}, chain_revoked_at=utc_now())

    async def _chain_outcome(
        self, intent_id: str, action: str, payload: dict[str, Any], *, actor: str = "wallet", **values: Any
    ) -> None:
        async with self.db.transaction() as conn:
            if values:
                await conn.execute(update(wallet_intents).where(wallet_intents.c.id == intent_id).values(**values))
            await audit.append(conn, actor, action, {"intent_id": intent_id, **payload})


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


async def row_or_not_found(
    conn: AsyncConnection, column: Any, value: str, field: str, what: str, *, lock: bool = False
) -> Any:
    """The row of ``column``'s table whose ``column`` equals ``value`` (``SELECT … FOR UPDATE``
    with ``lock``); ``NotFound`` naming ``field`` (``"no <what> '<value>'"``) when there is none."""
    query = select(column.table).where(column == value)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound(field, f"no {what} {value!r}")
    return row


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _agent_actor(agent_id: str) -> str:
    return f"agent:{agent_id}"


def _positive(name: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise InvalidRequest(name, f"expected an integer in 1..{maximum}, got {value!r}")


def _payees(payees: Sequence[str]) -> list[str]:
    if isinstance(payees, str):
        raise InvalidRequest("payees", "expected a list of addresses, got one string")
    try:
        checked = sorted({to_checksum_address(p) for p in payees}, key=lambda a: int(a, 16))
    except (ValueError, TypeError):
        raise InvalidRequest("payees", "every payee must be a 0x-prefixed 20-byte address") from None
    if len(checked) > MAX_PAYEES or (checked and int(checked[0], 16) == 0):
        raise InvalidRequest("payees", f"at most {MAX_PAYEES} non-zero addresses")
    return checked


def _target(url: str) -> tuple[str, str | None]:
    """``(raw path and query, host or None)`` of the paid URL, as ``AEP2Auth`` binds it."""
    try:
        parsed = httpx.URL(url)
        path = parsed.raw_path.decode("ascii")
    except (httpx.InvalidURL, TypeError, UnicodeDecodeError):
        raise InvalidRequest("url", "not a URL (absolute, or a path starting with '/')") from None
    if not path.startswith("/"):
        raise InvalidRequest("url", "not a URL (absolute, or a path starting with '/')")
    return path, (parsed.host or None)


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL (no credentials), else None."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"


def _path_only(path: str) -> str:
    """The path of a ``_target`` path and query: the query may carry credentials."""
    return path.split("?", 1)[0]


def _method(method: str) -> str:
    if not isinstance(method, str) or not method.isalpha() or len(method) > 16:
        raise InvalidRequest("method", f"{method!r} is not an HTTP method")
    return method.upper()


def _request_digest(entry: Mapping[str, Any], url: str, method: str, body: bytes) -> str:
    text = audit.canonical_json(
        {"requirement": entry, "url": url, "method": method, "body": hashlib.sha256(body).hexdigest()}
    )
    return hashlib.sha256(text).hexdigest()


def _same_request(key: str, stored: str, digest: str) -> None:
    if stored != digest:
        raise IdempotencyConflict("idempotency_key", f"{key!r} was used for another request")


def _require_status(row: Any, status: IntentStatus) -> None:
    if row.status != status.value:
        raise InvalidState("intent_id", f"{row.id!r} is {row.status}, not {status.value}")


def _resource(url: str) -> str:
    """The URL without its query or fragment (which may carry credentials), for the audit log."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(query=None, fragment=None)) if parsed.host else parsed.path


def _decision_event(
    agent_id: str, intent_id: str, offer: _Offer, decision: Decision, decision_id: int, url: str
) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "intent_id": intent_id,
        "decision_id": decision_id,
        "outcome": decision.outcome,
        "rule": str(decision.rule),
        "reason": decision.reason,
        "payee": to_checksum_address(offer.payee),
        "amount": offer.amount,
        "resource": _resource(url),
    }


def _rules_from_json(data: Mapping[str, Any]) -> Rules:
    values = dict(data)
    if values.get("active_hours") is not None:
        values["active_hours"] = tuple(values["active_hours"])
    return Rules(**values)


def _payment(row: Any) -> Payment:
    return Payment(
        payment_id=row.payment_id, agent_id=row.agent_id, intent_id=row.intent_id,
        payee=to_checksum_address(row.payee), amount=row.amount, nonce=row.nonce,
        status=PaymentStatus(row.status), at=row.at, created_at=row.created_at, header=row.header,
    )


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
