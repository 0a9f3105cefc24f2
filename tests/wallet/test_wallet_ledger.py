"""The double-entry ledger: flows, refusals, idempotency, concurrency, and a model-checked property."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from wallet import ledger
from wallet.db import Database
from wallet.ledger import AccountKind, InsufficientFunds, LedgerError, TxKind


async def _fund(db: Database, *, owner: str = "o", intent: str = "i", deposit: int = 100, budget: int = 20) -> None:
    async with db.transaction() as conn:
        await ledger.deposit(conn, owner=owner, amount=deposit)
        await ledger.allocate(conn, owner=owner, intent=intent, amount=budget)


async def _all_balances(conn: Any) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for kind in AccountKind:
        for ref, value in (await ledger.balances(conn, kind)).items():
            out[(kind.value, ref)] = value
    return out


# ---------------------------------------------------------------------------------------------
# Flows
# ---------------------------------------------------------------------------------------------


async def test_each_operation_moves_money_between_the_accounts_of_the_flow_table(wallet_db: Database) -> None:
    async with wallet_db.transaction() as conn:
        await ledger.deposit(conn, owner="o", amount=100)
        await ledger.allocate(conn, owner="o", intent="i", amount=30)
        await ledger.reserve(conn, intent="i", payment_id="p1", amount=10)
        await ledger.reserve(conn, intent="i", payment_id="p2", amount=5)
        await ledger.settle(conn, payment_id="p1", payee="0xpayee", amount=7)
        await ledger.release(conn, payment_id="p1")
        await ledger.release(conn, payment_id="p2", amount=2)
        await ledger.reclaim(conn, intent="i", amount=4)
        await ledger.withdraw(conn, owner="o", amount=50)

    async with wallet_db.snapshot() as conn:
        assert await _all_balances(conn) == {
            ("owner", "o"): 100 - 30 + 4 - 50,
            ("intent", "i"): 30 - 10 - 5 + 3 + 2 - 4,
            ("reserved", "p1"): 0,
            ("reserved", "p2"): 3,
            ("payee", "0xpayee"): 7,
            ("external", ledger.EXTERNAL_REF): -100 + 50,
        }
        assert await ledger.reserved(conn, "p2") == 3
        assert await ledger.reserved(conn, "never") == 0
        # what the reconciliation compares with the chain
        assert await ledger.escrow(conn, "o") == 100 - 50 - 7
        assert await ledger.settled(conn, "i") == 7
        kinds = [e.kind for e in await ledger.entries(conn, await ledger.find_account(conn, "reserved", "p1"))]
        assert kinds == [TxKind.RESERVE, TxKind.SETTLE, TxKind.RELEASE]


async def test_settle_defaults_to_everything_reserved(wallet_db: Database) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        await ledger.reserve(conn, intent="i", payment_id="p", amount=6)
        await ledger.settle(conn, payment_id="p", payee="y")
        assert await ledger.reserved(conn, "p") == 0
        assert (await ledger.balances(conn, "payee")) == {"y": 6}


async def test_a_raised_error_rolls_back_everything_the_transaction_wrote(wallet_db: Database) -> None:
    await _fund(wallet_db)
    with pytest.raises(InsufficientFunds):
        async with wallet_db.transaction() as conn:
            await ledger.reserve(conn, intent="i", payment_id="p1", amount=15)
            await ledger.reserve(conn, intent="i", payment_id="p2", amount=15)
    async with wallet_db.snapshot() as conn:
        assert await ledger.reserved(conn, "p1") == 0
        assert (await ledger.balances(conn, "intent")) == {"i": 20}


# ---------------------------------------------------------------------------------------------
# Refusals name the field
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field", "error"),
    [
        (lambda c: ledger.deposit(c, owner="o", amount=0), "amount", LedgerError),
        (lambda c: ledger.deposit(c, owner="o", amount=-1), "amount", LedgerError),
        (lambda c: ledger.deposit(c, owner="o", amount=True), "amount", LedgerError),
        (lambda c: ledger.deposit(c, owner="o", amount=2**63), "amount", LedgerError),
        (lambda c: ledger.deposit(c, owner="", amount=1), "owner", LedgerError),
        (lambda c: ledger.withdraw(c, owner="o", amount=81), "amount", InsufficientFunds),
        (lambda c: ledger.allocate(c, owner="o", intent="j", amount=81), "amount", InsufficientFunds),
        (lambda c: ledger.allocate(c, owner="o2", intent="i", amount=1), "intent", LedgerError),
        (lambda c: ledger.reserve(c, intent="i", payment_id="p", amount=21), "amount", InsufficientFunds),
        (lambda c: ledger.reserve(c, intent="nope", payment_id="p", amount=1), "intent", LedgerError),
        (lambda c: ledger.settle(c, payment_id="nope", payee="y"), "payment_id", LedgerError),
        (lambda c: ledger.settle(c, payment_id="held", payee=""), "payee", LedgerError),
        (lambda c: ledger.settle(c, payment_id="held", payee="y", amount=6), "amount", InsufficientFunds),
        (lambda c: ledger.release(c, payment_id="held", amount=6), "amount", InsufficientFunds),
        (lambda c: ledger.release(c, payment_id="nope"), "payment_id", LedgerError),
        (lambda c: ledger.reclaim(c, intent="nope"), "intent", LedgerError),
        (lambda c: ledger.reclaim(c, intent="i", amount=16), "amount", InsufficientFunds),
        (lambda c: ledger.account(c, "nope", "x"), "kind", LedgerError),
    ],
)
async def test_RevertIf_an_operation_is_invalid(
    wallet_db: Database, call: Callable[[Any], Awaitable[int]], field: str, error: type[LedgerError]
) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        await ledger.reserve(conn, intent="i", payment_id="held", amount=5)
    with pytest.raises(error) as raised:
        async with wallet_db.transaction() as conn:
            await call(conn)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


async def test_RevertIf_a_payment_is_reserved_settled_or_released_twice(wallet_db: Database) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        await ledger.reserve(conn, intent="i", payment_id="p", amount=5)
        await ledger.settle(conn, payment_id="p", payee="y", amount=2)
        await ledger.release(conn, payment_id="p", amount=1)
    for call in (
        lambda c: ledger.reserve(c, intent="i", payment_id="p", amount=1),
        lambda c: ledger.settle(c, payment_id="p", payee="y", amount=1),
        lambda c: ledger.release(c, payment_id="p", amount=1),
    ):
        with pytest.raises(LedgerError) as raised:
            async with wallet_db.transaction() as conn:
                await call(conn)
        assert raised.value.field == "payment_id"
    async with wallet_db.snapshot() as conn:
        assert await ledger.reserved(conn, "p") == 2  # settled 2 + released 1 of 5


async def test_RevertIf_settling_what_was_fully_released(wallet_db: Database) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        await ledger.reserve(conn, intent="i", payment_id="p", amount=5)
        await ledger.release(conn, payment_id="p")
    with pytest.raises(LedgerError, match="^payment_id: 'p' has nothing left reserved"):
        async with wallet_db.transaction() as conn:
            await ledger.settle(conn, payment_id="p", payee="y")


# ---------------------------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------------------------


async def test_a_retried_operation_with_its_key_returns_the_first_transaction(wallet_db: Database) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        first = await ledger.reserve(conn, intent="i", payment_id="p", amount=5, idempotency_key="k1")
    async with wallet_db.transaction() as conn:
        again = await ledger.reserve(conn, intent="i", payment_id="p", amount=5, idempotency_key="k1")
        settled = await ledger.settle(conn, payment_id="p", payee="y", idempotency_key="k2")
        assert await ledger.settle(conn, payment_id="p", payee="y", idempotency_key="k2") == settled
    assert again == first
    async with wallet_db.snapshot() as conn:
        assert (await ledger.balances(conn, "intent")) == {"i": 15}
        assert (await ledger.balances(conn, "payee")) == {"y": 5}


async def test_RevertIf_a_key_is_reused_for_another_request(wallet_db: Database) -> None:
    await _fund(wallet_db)
    async with wallet_db.transaction() as conn:
        await ledger.reserve(conn, intent="i", payment_id="p", amount=5, idempotency_key="k")
    with pytest.raises(LedgerError) as raised:
        async with wallet_db.transaction() as conn:
            await ledger.reserve(conn, intent="i", payment_id="p", amount=6, idempotency_key="k")
    assert raised.value.field == "idempotency_key"


# ---------------------------------------------------------------------------------------------
# The database itself refuses
# ---------------------------------------------------------------------------------------------


_INSERT_ENTRY = (
    "INSERT INTO entries (transaction_id, debit_account, credit_account, amount) VALUES (:t, :d, {credit}, {amount})"
)


async def _raw_ids(db: Database) -> tuple[int, int, int]:
    await _fund(db)
    async with db.snapshot() as conn:
        owner = await ledger.find_account(conn, "owner", "o")
        intent = await ledger.find_account(conn, "intent", "i")
        tx = (await conn.execute(text("SELECT max(id) FROM transactions"))).scalar_one()
    assert owner is not None and intent is not None
    return owner, intent, tx


@pytest.mark.parametrize("amount", [0, -5])
async def test_RevertIf_an_entry_amount_is_not_positive(wallet_db: Database, amount: int) -> None:
    owner, intent, tx = await _raw_ids(wallet_db)
    with pytest.raises(IntegrityError, match="entries_amount_positive"):
        async with wallet_db.transaction() as conn:
            await conn.execute(
                text(_INSERT_ENTRY.format(credit=":c", amount=":a")),
                {"t": tx, "d": owner, "c": intent, "a": amount},
            )


async def test_RevertIf_an_entry_debits_and_credits_one_account(wallet_db: Database) -> None:
    owner, _intent, tx = await _raw_ids(wallet_db)
    with pytest.raises(IntegrityError, match="entries_two_accounts"):
        async with wallet_db.transaction() as conn:
            await conn.execute(
                text(_INSERT_ENTRY.format(credit=":d", amount="1")),
                {"t": tx, "d": owner},
            )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = amount + 1",
        "UPDATE entries SET credit_account = debit_account + 0 WHERE id = 1",
        "DELETE FROM entries",
        "UPDATE transactions SET kind = 'deposit'",
        "DELETE FROM transactions",
    ],
)
async def test_RevertIf_entries_or_transactions_are_updated_or_deleted(wallet_db: Database, statement: str) -> None:
    await _raw_ids(wallet_db)
    with pytest.raises(IntegrityError, match="append-only"):
        async with wallet_db.transaction() as conn:
            await conn.execute(text(statement))
    # and with the plain driver (sqlite3, asyncpg), outside SQLAlchemy
    if wallet_db.dialect == "sqlite":
        path = wallet_db.engine.url.database
        assert path is not None
        raw = sqlite3.connect(path)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute(statement)
        finally:
            raw.close()
        return
    dsn = wallet_db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    pg = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
            await pg.execute(statement)
    finally:
        await pg.close()


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


async def _race(dbs: list[Database], attempts: int) -> list[bool]:
    async def one(n: int) -> bool:
        try:
            async with dbs[n % len(dbs)].transaction() as conn:
                await ledger.reserve(conn, intent="i", payment_id=f"p{n}", amount=1)
        except InsufficientFunds:
            return False
        return True

    return await asyncio.gather(*(one(n) for n in range(attempts)))


async def test_50_concurrent_reservations_against_a_20_unit_budget_exactly_20_succeed(wallet_db: Database) -> None:
    await _fund(wallet_db, budget=20)
    results = await _race([wallet_db], 50)
    assert results.count(True) == 20
    async with wallet_db.snapshot() as conn:
        assert (await ledger.balances(conn, "intent")) == {"i": 0}
        held = await ledger.balances(conn, "reserved")
        assert sorted(held.values()) == [1] * 20
        assert sum((await _all_balances(conn)).values()) == 0


async def test_two_processes_on_one_file_are_serialized_by_sqlite_itself(
    wallet_db: Database, wallet_backend: str
) -> None:
    """Two ``Database``s share no asyncio lock, as two processes would not: BEGIN IMMEDIATE decides."""
    if wallet_backend != "sqlite":
        pytest.skip("SQLite's file lock")
    await _fund(wallet_db, budget=20)
    other = Database(str(wallet_db.engine.url))
    try:
        results = await _race([wallet_db, other], 50)
    finally:
        await other.aclose()
    assert results.count(True) == 20
    async with wallet_db.snapshot() as conn:
        assert (await ledger.balances(conn, "intent")) == {"i": 0}


# ---------------------------------------------------------------------------------------------
# Property: any sequence of operations, checked against a model
# ---------------------------------------------------------------------------------------------

OWNERS = ["o0", "o1"]
INTENTS = ["i0", "i1", "i2"]
PAYMENTS = ["p0", "p1", "p2", "p3", "p4"]
PAYEES = ["y0", "y1"]

amounts = st.integers(min_value=-2, max_value=40)
maybe_amounts = st.none() | amounts
keys = st.none() | st.none() | st.sampled_from(["k0", "k1", "k2"])

operations = st.one_of(
    st.tuples(st.just("deposit"), st.fixed_dictionaries({"owner": st.sampled_from(OWNERS), "amount": amounts})),
    st.tuples(st.just("withdraw"), st.fixed_dictionaries({"owner": st.sampled_from(OWNERS), "amount": amounts})),
    st.tuples(
        st.just("allocate"),
        st.fixed_dictionaries(
            {"owner": st.sampled_from(OWNERS), "intent": st.sampled_from(INTENTS), "amount": amounts}
        ),
    ),
    st.tuples(st.just("reclaim"), st.fixed_dictionaries({"intent": st.sampled_from(INTENTS), "amount": maybe_amounts})),
    st.tuples(
        st.just("reserve"),
        st.fixed_dictionaries(
            {"intent": st.sampled_from(INTENTS), "payment_id": st.sampled_from(PAYMENTS), "amount": amounts}
        ),
    ),
    st.tuples(
        st.just("settle"),
        st.fixed_dictionaries(
            {"payment_id": st.sampled_from(PAYMENTS), "payee": st.sampled_from(PAYEES), "amount": maybe_amounts}
        ),
    ),
    st.tuples(
        st.just("release"),
        st.fixed_dictionaries({"payment_id": st.sampled_from(PAYMENTS), "amount": maybe_amounts}),
    ),
)


class Refused(Exception):
    def __init__(self, field: str, insufficient: bool = False) -> None:
        self.field, self.insufficient = field, insufficient


@dataclass
class Model:
    """The ledger's rules, written again in plain Python."""

    owner: Counter[str] = field(default_factory=Counter)
    intent: Counter[str] = field(default_factory=Counter)
    intent_owner: dict[str, str] = field(default_factory=dict)
    hold: Counter[str] = field(default_factory=Counter)
    hold_intent: dict[str, str] = field(default_factory=dict)
    reserved_amount: dict[str, int] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    payee: Counter[str] = field(default_factory=Counter)
    world: int = 0
    keys: dict[str, tuple[str, dict[str, Any], int]] = field(default_factory=dict)

    def replayed(self, op: str, args: dict[str, Any], key: str | None) -> int | None:
        amount = args.get("amount")
        if amount is not None and amount <= 0:
            raise Refused("amount")
        if key is None or key not in self.keys:
            return None
        first_op, first_args, tx = self.keys[key]
        if (first_op, first_args) != (op, args):
            raise Refused("idempotency_key")
        return tx

    def apply(self, op: str, a: dict[str, Any]) -> None:
        """Apply a fresh (unkeyed or new-keyed) operation, or raise ``Refused`` as the ledger must."""
        amount = a.get("amount")
        if op == "deposit":
            self.world -= amount
            self.owner[a["owner"]] += amount
        elif op == "withdraw":
            self._cover(self.owner[a["owner"]], amount)
            self.owner[a["owner"]] -= amount
            self.world += amount
        elif op == "allocate":
            if self.intent_owner.get(a["intent"], a["owner"]) != a["owner"]:
                raise Refused("intent")
            self._cover(self.owner[a["owner"]], amount)
            self.intent_owner[a["intent"]] = a["owner"]
            self.owner[a["owner"]] -= amount
            self.intent[a["intent"]] += amount
        elif op == "reclaim":
            if a["intent"] not in self.intent_owner:
                raise Refused("intent")
            if amount is None:
                amount = self.intent[a["intent"]]
                if amount == 0:
                    raise Refused("intent")
            self._cover(self.intent[a["intent"]], amount)
            self.intent[a["intent"]] -= amount
            self.owner[self.intent_owner[a["intent"]]] += amount
        elif op == "reserve":
            if a["intent"] not in self.intent_owner:
                raise Refused("intent")
            if a["payment_id"] in self.hold_intent:
                raise Refused("payment_id")
            self._cover(self.intent[a["intent"]], amount)
            self.intent[a["intent"]] -= amount
            self.hold[a["payment_id"]] += amount
            self.hold_intent[a["payment_id"]] = a["intent"]
            self.reserved_amount[a["payment_id"]] = amount
        else:  # settle, release
            p = a["payment_id"]
            done = self.settled if op == "settle" else self.released
            if p not in self.hold_intent or p in done:
                raise Refused("payment_id")
            if amount is None:
                amount = self.hold[p]
                if amount == 0:
                    raise Refused("payment_id")
            self._cover(self.hold[p], amount)
            self.hold[p] -= amount
            done[p] = amount
            if op == "settle":
                self.payee[a["payee"]] += amount
            else:
                self.intent[self.hold_intent[p]] += amount

    @staticmethod
    def _cover(available: int, amount: int) -> None:
        if amount > available:
            raise Refused("amount", insufficient=True)

    def balances(self) -> dict[tuple[str, str], int]:
        out = {("external", ledger.EXTERNAL_REF): self.world}
        out |= {("owner", k): v for k, v in self.owner.items()}
        out |= {("intent", k): v for k, v in self.intent.items()}
        out |= {("reserved", k): v for k, v in self.hold.items()}
        out |= {("payee", k): v for k, v in self.payee.items()}
        return out


async def _check_invariants(conn: Any, model: Model) -> None:
    actual = await _all_balances(conn)
    # the model's balances, account by account (empty accounts aside)
    assert {k: v for k, v in actual.items() if v} == {k: v for k, v in model.balances().items() if v}
    # zero-sum over every account, the outside world included
    assert sum(actual.values()) == 0
    # every derived balance is the sum of its entries, recomputed here
    for (kind, ref), value in actual.items():
        account_id = await ledger.find_account(conn, kind, ref)
        assert account_id is not None
        rows = await ledger.entries(conn, account_id)
        recomputed = sum(e.amount for e in rows if e.credit_account == account_id) - sum(
            e.amount for e in rows if e.debit_account == account_id
        )
        assert recomputed == value
        if kind != "external":
            assert value >= 0, (kind, ref)
        if kind == "reserved":
            reserved = sum(e.amount for e in rows if e.kind is TxKind.RESERVE)
            paid_or_back = sum(e.amount for e in rows if e.kind in (TxKind.SETTLE, TxKind.RELEASE))
            assert paid_or_back <= reserved
            assert Counter(e.kind for e in rows)[TxKind.SETTLE] <= 1
            assert Counter(e.kind for e in rows)[TxKind.RELEASE] <= 1


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(operations, keys), max_size=30))
async def testFuzz_any_sequence_of_operations_keeps_the_ledger_balanced(
    make_wallet_db: Callable[[], Awaitable[Database]], steps: list[tuple[tuple[str, dict[str, Any]], str | None]]
) -> None:
    db = await make_wallet_db()
    model = Model()
    try:
        for (op, args), key in steps:
            call = getattr(ledger, op)
            expected_tx: int | None = None
            refused: Refused | None = None
            try:
                expected_tx = model.replayed(op, args, key)
                if expected_tx is None:
                    trial = Model(**{k: _copy(v) for k, v in vars(model).items()})
                    trial.apply(op, args)
            except Refused as exc:
                refused = exc
            try:
                async with db.transaction() as conn:
                    tx = await call(conn, **args, idempotency_key=key)
            except LedgerError as exc:
                assert refused is not None, f"{op}{args} key={key} refused: {exc}"
                assert exc.field == refused.field, str(exc)
                assert isinstance(exc, InsufficientFunds) == refused.insufficient, str(exc)
                continue
            assert refused is None, f"{op}{args} key={key} should raise on {refused.field}"
            if expected_tx is not None:
                assert tx == expected_tx
                continue
            model = trial
            if key is not None:
                model.keys[key] = (op, args, tx)
            async with db.snapshot() as conn:
                await _check_invariants(conn, model)
    finally:
        await db.aclose()


def _copy(value: Any) -> Any:
    return value.copy() if hasattr(value, "copy") else value
