"""The co-wallet's double-entry ledger: every unit of the owner's escrow, where it sits and why.

Balanced by construction. A posting is a row of ``entries``: ``(transaction_id,
debit_account, credit_account, amount)`` moves ``amount`` (> 0, integer token base units)
out of the debit account into the credit account. A transaction has one or more such rows,
so the database cannot hold an unbalanced one, and CHECK constraints refuse a non-positive
amount or a row whose two sides are the same account. Entries and transactions are
append-only (triggers refuse UPDATE and DELETE, see ``wallet.db``): a correction is a new
transaction.

Sign convention: ``balance(account) = Σ credits − Σ debits``. Money an account holds is
positive; ``external`` (the world outside the escrow) goes negative by everything deposited
and not yet withdrawn or paid out, and the balances of all accounts always sum to zero.
No balance is stored: each is derived from the entries when asked.

Accounts are ``(kind, ref)`` pairs:

============  =====================  ===================================================
kind          ref                    holds
============  =====================  ===================================================
``owner``     owner id               escrow not yet given to any intent
``intent``    intent id              an approved intent's unspent, unreserved budget
``reserved``  payment id             what was reserved when the payment's mandate was signed
``payee``     payee address          what was paid to the payee (left the escrow)
``external``  ``"world"``            the outside world (negative)
``agent``     agent id               no flow yet: per-agent allowances, later
``card``      card id                what is held for a single-use card (``wallet.cards``)
``merchant``  merchant id            what card captures paid to a merchant (left the escrow)
============  =====================  ===================================================

The flows, each one ledger transaction (one entry) returning its id:

=============  ==========================  ==============================  ======================
operation      debit (from)                credit (to)                     when
=============  ==========================  ==============================  ======================
``deposit``    ``external``                ``owner``                       owner funds the escrow
``allocate``   ``owner``                   ``intent``                      intent approved
``reserve``    ``intent``                  ``reserved:<payment_id>``       mandate signed
``settle``     ``reserved:<payment_id>``   ``payee``                       settlement confirmed
``release``    ``reserved:<payment_id>``   ``intent``                      never settled
``reclaim``    ``intent``                  ``owner``                       intent expired/revoked
``withdraw``   ``owner``                   ``external``                    owner withdraws
=============  ==========================  ==============================  ======================

Single-use cards (``wallet.cards``) have four more, keyed by the card id (``payment_id``):

================  ===============================================  ==========================
operation         entries (debit → credit)                         when
================  ===============================================  ==========================
``card_hold``     ``intent → card:<id>``                           card minted
``card_capture``  ``card → merchant``, rest ``card → intent``      authorization captured
``card_release``  ``card → intent`` (all that is held)             expired, cancelled, reversed
``card_refund``   ``merchant → card``, ``card → intent``           merchant refunds a capture
================  ===============================================  ==========================

A card is held once, captured at most once and released at most once (a capture releases its
own remainder, so a captured card has nothing left to release); refunds, any number, never
exceed what was captured. The card account passes a refund straight through, so its balance is
what is still held for it, and a refund returns to the intent's budget like a release.

So an owner's escrow on chain is ``escrow(owner)``: its own account plus its intents' and their
reservations'; an intent's settled total is ``settled(intent)``, what its reservations paid
out. Those two are what the reconciliation command compares with the chain.

Rules. No account inside the escrow (owner, intent, reserved) ever goes below zero: an
operation that would overdraw raises ``InsufficientFunds`` (the debited account is locked
first, ``SELECT … FOR UPDATE`` on PostgreSQL, the SQLite write lock otherwise, so concurrent
reservations cannot both pass the check). A payment is reserved once, settled at most once
and released at most once, together never more than was reserved (a payment may be settled
for less and the rest released). With an ``idempotency_key`` a retried call returns the first
call's transaction id without posting again; the same key with other arguments raises.

Every function takes the caller's ``AsyncConnection``: run it inside
``Database.transaction()`` together with the audit record and the service's own rows. A
raised ``LedgerError`` leaves the transaction for the caller to roll back (leaving the
``async with`` block by the exception does that).

Limits: one asset per ledger (the escrow's token); amounts and every balance below 2^63.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, func, literal, or_, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import ColumnElement, Select

from .db import accounts, statement_guard, transactions, utc_now
from .db import entries as entry_rows

__all__ = [
    "AccountKind",
    "TxKind",
    "Entry",
    "LedgerError",
    "InsufficientFunds",
    "EXTERNAL_REF",
    "MAX_AMOUNT",
    "account",
    "find_account",
    "deposit",
    "withdraw",
    "allocate",
    "reclaim",
    "reserve",
    "settle",
    "release",
    "balance",
    "balances",
    "reserved",
    "entries",
    "escrow",
    "settled",
    "hold_card",
    "capture_card",
    "release_card",
    "refund_card",
    "card_held",
]

#: The one ``external`` account's ref.
EXTERNAL_REF = "world"
#: Largest amount one entry can carry (BIGINT).
MAX_AMOUNT = 2**63 - 1


class AccountKind(StrEnum):
    OWNER = "owner"
    AGENT = "agent"
    INTENT = "intent"
    RESERVED = "reserved"
    PAYEE = "payee"
    CARD = "card"
    MERCHANT = "merchant"
    EXTERNAL = "external"


class TxKind(StrEnum):
    DEPOSIT = "deposit"
    ALLOCATE = "allocate"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    RECLAIM = "reclaim"
    WITHDRAW = "withdraw"
    CARD_HOLD = "card_hold"
    CARD_CAPTURE = "card_capture"
    CARD_RELEASE = "card_release"
    CARD_REFUND = "card_refund"


class LedgerError(Exception):
    """A refused ledger operation; ``field`` names the argument at fault.

    The hierarchy::

        LedgerError              bad argument, unknown account or payment, repeated
        │                        settle/release, idempotency key reused with other arguments
        └── InsufficientFunds    the debited account holds less than ``amount``
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InsufficientFunds(LedgerError):
    """The operation would overdraw an escrow account (``field`` is ``"amount"``)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One posting row with its transaction's kind, payment and time."""

    id: int
    transaction_id: int
    kind: TxKind
    payment_id: str | None
    debit_account: int
    credit_account: int
    amount: int
    created_at: str


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------


async def find_account(conn: AsyncConnection, kind: AccountKind | str, ref: str) -> int | None:
    """The id of account ``(kind, ref)``, or None if it was never created."""
    return (
        await conn.execute(select(accounts.c.id).where(accounts.c.kind == kind, accounts.c.ref == ref))
    ).scalar_one_or_none()


async def account(conn: AsyncConnection, kind: AccountKind | str, ref: str, *, parent: int | None = None) -> int:
    """The id of account ``(kind, ref)``, created if missing.

    ``intent``, ``reserved`` and ``card`` accounts belong to a parent (the owner, the intent)
    given when they are created; an existing account given another parent raises.
    """
    kind = _kind(kind)
    _ref("ref", ref)
    if kind in (AccountKind.INTENT, AccountKind.RESERVED, AccountKind.CARD) and parent is None:
        existing = await find_account(conn, kind, ref)
        if existing is None:
            raise LedgerError("parent", f"a new {kind} account needs its parent account")
        return existing
    for _attempt in range(2):
        row = (
            await conn.execute(
                select(accounts.c.id, accounts.c.parent_id).where(accounts.c.kind == kind, accounts.c.ref == ref)
            )
        ).first()
        if row is not None:
            if parent is not None and row.parent_id != parent:
                raise LedgerError("ref", f"{kind} {ref!r} belongs to account {row.parent_id}, not {parent}")
            return int(row.id)
        try:
            async with statement_guard(conn):  # a concurrent creator (PostgreSQL) makes this fail
                result = await conn.execute(accounts.insert().values(kind=kind, ref=ref, parent_id=parent))
            return int(result.inserted_primary_key[0])
        except IntegrityError:
            continue
    raise LedgerError("ref", f"could not create {kind} {ref!r}")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


async def deposit(
    conn: AsyncConnection, *, owner: str, amount: int, memo: str = "", idempotency_key: str | None = None
) -> int:
    """The owner funded its escrow: ``external → owner``."""
    _ref("owner", owner)
    _amount(amount)
    request = {"owner": owner, "amount": amount}
    if (replayed := await _replay(conn, TxKind.DEPOSIT, idempotency_key, request)) is not None:
        return replayed
    world = await account(conn, AccountKind.EXTERNAL, EXTERNAL_REF)
    owner_id = await account(conn, AccountKind.OWNER, owner)
    return await _post(conn, TxKind.DEPOSIT, [(world, owner_id, amount)], memo, idempotency_key, request)


async def withdraw(
    conn: AsyncConnection, *, owner: str, amount: int, memo: str = "", idempotency_key: str | None = None
) -> int:
    """The owner withdrew unallocated escrow: ``owner → external``."""
    _ref("owner", owner)
    _amount(amount)
    request = {"owner": owner, "amount": amount}
    if (replayed := await _replay(conn, TxKind.WITHDRAW, idempotency_key, request)) is not None:
        return replayed
    owner_id = await _locked(conn, AccountKind.OWNER, owner)
    await _cover(conn, owner_id, amount, f"owner {owner!r}")
    world = await account(conn, AccountKind.EXTERNAL, EXTERNAL_REF)
    return await _post(conn, TxKind.WITHDRAW, [(owner_id, world, amount)], memo, idempotency_key, request)


async def allocate(
    conn: AsyncConnection,
    *,
    owner: str,
    intent: str,
    amount: int,
    memo: str = "",
    idempotency_key: str | None = None,
) -> int:
    """An intent was approved with budget ``amount``: ``owner → intent``."""
    _ref("owner", owner)
    _ref("intent", intent)
    _amount(amount)
    request = {"owner": owner, "intent": intent, "amount": amount}
    if (replayed := await _replay(conn, TxKind.ALLOCATE, idempotency_key, request)) is not None:
        return replayed
    owner_id = await _locked(conn, AccountKind.OWNER, owner)
    try:
        intent_id = await account(conn, AccountKind.INTENT, intent, parent=owner_id)
    except LedgerError as exc:
        raise LedgerError("intent", f"{intent!r} belongs to another owner") from exc
    await _cover(conn, owner_id, amount, f"owner {owner!r}")
    return await _post(conn, TxKind.ALLOCATE, [(owner_id, intent_id, amount)], memo, idempotency_key, request)


async def reclaim(
    conn: AsyncConnection,
    *,
    intent: str,
    amount: int | None = None,
    memo: str = "",
    idempotency_key: str | None = None,
) -> int:
    """Unreserved budget goes back to the owner (all of it by default): ``intent → owner``."""
    _ref("intent", intent)
    if amount is not None:
        _amount(amount)
    request = {"intent": intent, "amount": amount}
    if (replayed := await _replay(conn, TxKind.RECLAIM, idempotency_key, request)) is not None:
        return replayed
    intent_row = await _lock_row(conn, AccountKind.INTENT, intent)
    if intent_row is None:
        raise LedgerError("intent", f"no intent {intent!r} was allocated")
    intent_id, owner_id = intent_row
    if amount is None:
        amount = await balance(conn, intent_id)
        if amount == 0:
            raise LedgerError("intent", f"{intent!r} has no unreserved budget to reclaim")
    await _cover(conn, intent_id, amount, f"intent {intent!r}")
    return await _post(conn, TxKind.RECLAIM, [(intent_id, owner_id, amount)], memo, idempotency_key, request)


async def reserve(
    conn: AsyncConnection,
    *,
    intent: str,
    payment_id: str,
    amount: int,
    memo: str = "",
    idempotency_key: str | None = None,
) -> int:
    """A mandate was signed: ``intent → reserved:<payment_id>``, refused beyond the budget."""
    _ref("intent", intent)
    _ref("payment_id", payment_id)
    _amount(amount)
    request = {"intent": intent, "payment_id": payment_id, "amount": amount}
    if (replayed := await _replay(conn, TxKind.RESERVE, idempotency_key, request)) is not None:
        return replayed
    intent_row = await _lock_row(conn, AccountKind.INTENT, intent)
    if intent_row is None:
        raise LedgerError("intent", f"no intent {intent!r} was allocated")
    intent_id, _owner = intent_row
    if await find_account(conn, AccountKind.RESERVED, payment_id) is not None:
        raise LedgerError("payment_id", f"{payment_id!r} is already reserved")
    await _cover(conn, intent_id, amount, f"intent {intent!r}")
    hold = await account(conn, AccountKind.RESERVED, payment_id, parent=intent_id)
    return await _post(
        conn, TxKind.RESERVE, [(intent_id, hold, amount)], memo, idempotency_key, request, payment_id=payment_id
    )


async def settle(
    conn: AsyncConnection,
    *,
    payment_id: str,
    payee: str,
    amount: int | None = None,
    memo: str = "",
    idempotency_key: str | None = None,
) -> int:
    """The payment was confirmed: ``reserved:<payment_id> → payee`` (all that is held by default)."""
    _ref("payment_id", payment_id)
    _ref("payee", payee)
    if amount is not None:
        _amount(amount)
    request = {"payment_id": payment_id, "payee": payee, "amount": amount}
    if (replayed := await _replay(conn, TxKind.SETTLE, idempotency_key, request)) is not None:
        return replayed
    hold, amount = await _take_from_hold(conn, TxKind.SETTLE, payment_id, amount)
    payee_id = await account(conn, AccountKind.PAYEE, payee)
    return await _post(
        conn, TxKind.SETTLE, [(hold, payee_id, amount)], memo, idempotency_key, request, payment_id=payment_id
    )


async def release(
    conn: AsyncConnection,
    *,
    payment_id: str,
    amount: int | None = None,
    memo: str = "",
    idempotency_key: str | None = None,
) -> int:
    """Reserved but never settled: ``reserved:<payment_id> → intent`` (all that is held by default)."""
    _ref("payment_id", payment_id)
    if amount is not None:
        _amount(amount)
    request = {"payment_id": payment_id, "amount": amount}
    if (replayed := await _replay(conn, TxKind.RELEASE, idempotency_key, request)) is not None:
        return replayed
    hold, amount = await _take_from_hold(conn, TxKind.RELEASE, payment_id, amount)
    intent_id = (await conn.execute(select(accounts.c.parent_id).where(accounts.c.id == hold))).scalar_one()
    return await _post(
        conn, TxKind.RELEASE, [(hold, intent_id, amount)], memo, idempotency_key, request, payment_id=payment_id
    )


# ---------------------------------------------------------------------------------------------
# Single-use cards (wallet.cards)
# ---------------------------------------------------------------------------------------------


async def hold_card(
    conn: AsyncConnection, *, intent: str, card: str, amount: int, memo: str = "", idempotency_key: str | None = None
) -> int:
    """A card was minted for ``amount``: ``intent → card:<card>``, refused beyond the budget.

    Raises ``LedgerError`` (unknown intent, card already held) or ``InsufficientFunds``.
    """
    _ref("intent", intent)
    _ref("card", card)
    _amount(amount)
    request = {"intent": intent, "card": card, "amount": amount}
    if (replayed := await _replay(conn, TxKind.CARD_HOLD, idempotency_key, request)) is not None:
        return replayed
    intent_row = await _lock_row(conn, AccountKind.INTENT, intent)
    if intent_row is None:
        raise LedgerError("intent", f"no intent {intent!r} was allocated")
    if await find_account(conn, AccountKind.CARD, card) is not None:
        raise LedgerError("card", f"{card!r} is already held")
    await _cover(conn, intent_row[0], amount, f"intent {intent!r}")
    hold = await account(conn, AccountKind.CARD, card, parent=intent_row[0])
    return await _post(conn, TxKind.CARD_HOLD, [(intent_row[0], hold, amount)], memo, idempotency_key, request,
                       payment_id=card)


async def capture_card(
    conn: AsyncConnection, *, card: str, merchant: str, amount: int, memo: str = "", idempotency_key: str | None = None
) -> int:
    """The card's authorization was captured for ``amount`` (at most what is held): one
    transaction of ``card → merchant:<merchant>`` and, for a partial capture, ``card → intent``
    for the rest, so a captured card holds nothing.

    Raises ``LedgerError`` (never held, already captured or released) or ``InsufficientFunds``.
    """
    _ref("card", card)
    _ref("merchant", merchant)
    _amount(amount)
    request = {"card": card, "merchant": merchant, "amount": amount}
    if (replayed := await _replay(conn, TxKind.CARD_CAPTURE, idempotency_key, request)) is not None:
        return replayed
    hold, intent_id, held = await _open_card(conn, card)
    if amount > held:
        raise InsufficientFunds("amount", f"{amount} exceeds the {held} held for card {card!r}")
    merchant_id = await account(conn, AccountKind.MERCHANT, merchant)
    postings = [(hold, merchant_id, amount)] + ([(hold, intent_id, held - amount)] if held > amount else [])
    return await _post(conn, TxKind.CARD_CAPTURE, postings, memo, idempotency_key, request, payment_id=card)


async def release_card(conn: AsyncConnection, *, card: str, memo: str = "", idempotency_key: str | None = None) -> int:
    """The card expired, was cancelled or its authorization reversed: ``card → intent``, all
    that is held. Raises ``LedgerError`` (never held, already captured or released)."""
    _ref("card", card)
    request = {"card": card}
    if (replayed := await _replay(conn, TxKind.CARD_RELEASE, idempotency_key, request)) is not None:
        return replayed
    hold, intent_id, held = await _open_card(conn, card)
    return await _post(conn, TxKind.CARD_RELEASE, [(hold, intent_id, held)], memo, idempotency_key, request,
                       payment_id=card)


async def refund_card(
    conn: AsyncConnection, *, card: str, merchant: str, amount: int, memo: str = "", idempotency_key: str | None = None
) -> int:
    """The merchant refunded ``amount`` of the card's capture: ``merchant → card → intent``.

    Raises ``LedgerError`` (never held) or ``InsufficientFunds`` when ``amount`` exceeds what
    the card paid ``merchant`` less what was refunded already.
    """
    _ref("card", card)
    _ref("merchant", merchant)
    _amount(amount)
    request = {"card": card, "merchant": merchant, "amount": amount}
    if (replayed := await _replay(conn, TxKind.CARD_REFUND, idempotency_key, request)) is not None:
        return replayed
    row = await _lock_row(conn, AccountKind.CARD, card)
    merchant_id = await find_account(conn, AccountKind.MERCHANT, merchant)
    if row is None or merchant_id is None:
        raise LedgerError("card", f"card {card!r} never paid merchant {merchant!r}")
    hold, intent_id = row
    paid = await _flow(conn, hold, merchant_id) - await _flow(conn, merchant_id, hold)
    if amount > paid:
        raise InsufficientFunds("amount", f"{amount} exceeds the {paid} card {card!r} paid and was not refunded")
    return await _post(conn, TxKind.CARD_REFUND, [(merchant_id, hold, amount), (hold, intent_id, amount)], memo,
                       idempotency_key, request)


async def card_held(conn: AsyncConnection, card: str) -> int:
    """What is still held for ``card`` (0 if it was never held)."""
    hold = await find_account(conn, AccountKind.CARD, card)
    return 0 if hold is None else await balance(conn, hold)


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


async def balance(conn: AsyncConnection, account_id: int) -> int:
    """``Σ credits − Σ debits`` of one account (0 for an account with no entries)."""
    return await _sum(conn, accounts.c.id == account_id)


async def balances(conn: AsyncConnection, kind: AccountKind | str) -> dict[str, int]:
    """Every account of ``kind``: ``{ref: balance}``, accounts without entries included."""
    moves = _moves()
    rows = await conn.execute(
        select(accounts.c.ref, func.coalesce(func.sum(moves.c.delta), 0))
        .select_from(accounts.outerjoin(moves, moves.c.account == accounts.c.id))
        .where(accounts.c.kind == _kind(kind))
        .group_by(accounts.c.id, accounts.c.ref)
    )
    return {ref: int(total) for ref, total in rows}


async def reserved(conn: AsyncConnection, payment_id: str) -> int:
    """What is still held for ``payment_id`` (0 if it was never reserved)."""
    hold = await find_account(conn, AccountKind.RESERVED, payment_id)
    return 0 if hold is None else await balance(conn, hold)


async def entries(conn: AsyncConnection, account_id: int) -> list[Entry]:
    """Every entry that debits or credits ``account_id``, oldest first."""
    rows = await conn.execute(
        select(entry_rows, transactions.c.kind, transactions.c.payment_id, transactions.c.created_at)
        .join(transactions, transactions.c.id == entry_rows.c.transaction_id)
        .where(or_(entry_rows.c.debit_account == account_id, entry_rows.c.credit_account == account_id))
        .order_by(entry_rows.c.id)
    )
    return [
        Entry(
            id=row.id,
            transaction_id=row.transaction_id,
            kind=TxKind(row.kind),
            payment_id=row.payment_id,
            debit_account=row.debit_account,
            credit_account=row.credit_account,
            amount=int(row.amount),
            created_at=row.created_at,
        )
        for row in rows
    ]


async def escrow(conn: AsyncConnection, owner: str) -> int:
    """What the owner's on-chain escrow should hold: its account, its intents', their reservations'."""
    owner_id = await find_account(conn, AccountKind.OWNER, owner)
    if owner_id is None:
        return 0
    intents = select(accounts.c.id).where(accounts.c.parent_id == owner_id)
    holds = select(accounts.c.id).where(accounts.c.parent_id.in_(intents))
    return await _sum(conn, or_(accounts.c.id == owner_id, accounts.c.id.in_(intents), accounts.c.id.in_(holds)))


async def settled(conn: AsyncConnection, intent: str) -> int:
    """What the intent's payments paid out to payees (its spent total on chain)."""
    intent_id = await find_account(conn, AccountKind.INTENT, intent)
    if intent_id is None:
        return 0
    holds = select(accounts.c.id).where(accounts.c.parent_id == intent_id)
    total = await conn.execute(
        select(func.coalesce(func.sum(entry_rows.c.amount), 0))
        .join_from(entry_rows, transactions, transactions.c.id == entry_rows.c.transaction_id)
        .where(transactions.c.kind == TxKind.SETTLE, entry_rows.c.debit_account.in_(holds))
    )
    return int(total.scalar_one())


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _kind(kind: AccountKind | str) -> AccountKind:
    try:
        return AccountKind(kind)
    except ValueError:
        raise LedgerError("kind", f"unknown account kind {kind!r}") from None


def _ref(field: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise LedgerError(field, f"expected a non-empty string of at most 200 characters, got {value!r}")


def _amount(amount: object) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise LedgerError("amount", f"expected an integer number of base units, got {amount!r}")
    if not 0 < amount <= MAX_AMOUNT:
        raise LedgerError("amount", f"must be in 1..2^63-1 base units, got {amount}")


def _moves() -> Any:
    """Each entry twice: ``(account, +amount)`` for its credit side, ``(account, −amount)`` for its debit."""
    credits = select(entry_rows.c.credit_account.label("account"), entry_rows.c.amount.label("delta"))
    debits = select(entry_rows.c.debit_account.label("account"), (literal(0) - entry_rows.c.amount).label("delta"))
    return union_all(credits, debits).subquery("moves")


async def _sum(conn: AsyncConnection, which: ColumnElement[bool]) -> int:
    """The summed balance of the accounts matched by ``which``."""
    ids = select(accounts.c.id).where(which)
    credited = select(func.coalesce(func.sum(entry_rows.c.amount), 0)).where(entry_rows.c.credit_account.in_(ids))
    debited = select(func.coalesce(func.sum(entry_rows.c.amount), 0)).where(entry_rows.c.debit_account.in_(ids))
    total = await conn.execute(select(credited.scalar_subquery() - debited.scalar_subquery()))
    return int(total.scalar_one())


def _lock(query: Select[Any]) -> Select[Any]:
    """``FOR UPDATE`` where the dialect has it (PostgreSQL); SQLite's writer already holds the lock."""
    return query.with_for_update()


async def _lock_row(conn: AsyncConnection, kind: AccountKind, ref: str) -> tuple[int, int] | None:
    """Lock account ``(kind, ref)``; its ``(id, parent_id)``, or None if it does not exist."""
    row = (
        await conn.execute(
            _lock(select(accounts.c.id, accounts.c.parent_id).where(accounts.c.kind == kind, accounts.c.ref == ref))
        )
    ).first()
    return None if row is None else (int(row.id), row.parent_id)


async def _locked(conn: AsyncConnection, kind: AccountKind, ref: str) -> int:
    """Lock account ``(kind, ref)``, creating it first if needed; its id."""
    await account(conn, kind, ref)
    row = await _lock_row(conn, kind, ref)
    assert row is not None
    return row[0]


async def _cover(conn: AsyncConnection, account_id: int, amount: int, what: str) -> None:
    """Raise ``InsufficientFunds`` unless the (locked) account holds at least ``amount``."""
    available = await balance(conn, account_id)
    if amount > available:
        raise InsufficientFunds("amount", f"{amount} exceeds the {available} available in {what}")


async def _take_from_hold(
    conn: AsyncConnection, kind: TxKind, payment_id: str, amount: int | None
) -> tuple[int, int]:
    """Check that ``payment_id`` can be settled or released once more; its hold and the amount."""
    row = await _lock_row(conn, AccountKind.RESERVED, payment_id)
    if row is None:
        raise LedgerError("payment_id", f"{payment_id!r} was never reserved")
    hold, _intent = row
    done = await conn.execute(
        select(exists().where(transactions.c.kind == kind, transactions.c.payment_id == payment_id))
    )
    past = "settled" if kind is TxKind.SETTLE else "released"
    if done.scalar_one():
        raise LedgerError("payment_id", f"{payment_id!r} was already {past}")
    held = await balance(conn, hold)
    if amount is None:
        if held == 0:
            raise LedgerError("payment_id", f"{payment_id!r} has nothing left reserved")
        return hold, held
    if amount > held:
        raise InsufficientFunds("amount", f"{amount} exceeds the {held} still reserved for {payment_id!r}")
    return hold, amount


async def _open_card(conn: AsyncConnection, card: str) -> tuple[int, int, int]:
    """Lock ``card``'s account and check it was neither captured nor released; its account,
    its intent's account and what it holds."""
    row = await _lock_row(conn, AccountKind.CARD, card)
    if row is None:
        raise LedgerError("card", f"{card!r} was never held")
    hold, intent_id = row
    done = await conn.execute(
        select(exists().where(
            transactions.c.kind.in_([TxKind.CARD_CAPTURE, TxKind.CARD_RELEASE]), transactions.c.payment_id == card
        ))
    )
    if done.scalar_one():
        raise LedgerError("card", f"{card!r} was already captured or released")
    return hold, intent_id, await balance(conn, hold)


async def _flow(conn: AsyncConnection, debit: int, credit: int) -> int:
    """Everything ever moved from account ``debit`` to account ``credit``."""
    total = await conn.execute(
        select(func.coalesce(func.sum(entry_rows.c.amount), 0)).where(
            entry_rows.c.debit_account == debit, entry_rows.c.credit_account == credit
        )
    )
    return int(total.scalar_one())


def _digest(kind: TxKind, request: dict[str, Any]) -> str:
    body = json.dumps({"kind": kind.value, **request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


async def _replay(conn: AsyncConnection, kind: TxKind, key: str | None, request: dict[str, Any]) -> int | None:
    """The transaction an earlier call with ``key`` posted, or None if the key is new."""
    if key is None:
        return None
    _ref("idempotency_key", key)
    row = (
        await conn.execute(
            select(transactions.c.id, transactions.c.request_digest).where(transactions.c.idempotency_key == key)
        )
    ).first()
    if row is None:
        return None
    if row.request_digest != _digest(kind, request):
        raise LedgerError("idempotency_key", f"{key!r} was used for another request")
    return int(row.id)


async def _post(
    conn: AsyncConnection,
    kind: TxKind,
    postings: list[tuple[int, int, int]],
    memo: str,
    key: str | None,
    request: dict[str, Any],
    *,
    payment_id: str | None = None,
) -> int:
    """Insert one transaction and its entries ``(debit, credit, amount)``; its id."""
    values = {
        "kind": kind.value,
        "payment_id": payment_id,
        "created_at": utc_now(),
        "memo": memo,
        "idempotency_key": key,
        "request_digest": None if key is None else _digest(kind, request),
    }
    try:
        async with statement_guard(conn):  # a concurrent call with the same key (PostgreSQL)
            result = await conn.execute(transactions.insert().values(**values))
    except IntegrityError:
        if key is not None and (replayed := await _replay(conn, kind, key, request)) is not None:
            return replayed
        if payment_id is not None:
            raise LedgerError("payment_id", f"{payment_id!r} already has a {kind} transaction") from None
        raise
    tx_id = int(result.inserted_primary_key[0])
    await conn.execute(
        entry_rows.insert(),
        [
            {"transaction_id": tx_id, "debit_account": debit, "credit_account": credit, "amount": amount}
            for debit, credit, amount in postings
        ],
    )
    return tx_id

