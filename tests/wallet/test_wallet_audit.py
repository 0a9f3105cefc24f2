"""The hash-chained audit log: appends, refusals, and tampering done behind the triggers' back,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet import audit, ledger
from wallet.audit import GENESIS, AuditFault
from wallet.db import Database

N = 12


async def _fill(db: Database, n: int = N) -> list[audit.AuditRecord]:
    out = []
    for i in range(1, n + 1):
        async with db.transaction() as conn:
            out.append(await audit.append(conn, f"agent:a{i % 3}", "payment.authorized", {"i": i, "amount": 10 * i}))
    return out


@contextlib.asynccontextmanager
async def _behind_the_triggers(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction of someone with direct access to the database: an attacker's view.

    The append-only triggers are out of their way: dropped on SQLite (the file is theirs),
    bypassed on PostgreSQL with ``session_replication_role = replica`` (what a superuser can
    set; ordinary triggers do not fire, and ``SET LOCAL`` leaves no trace after the commit).
    """
    async with db.transaction() as conn:
        if db.dialect == "sqlite":
            await conn.execute(text("DROP TRIGGER audit_log_no_update"))
            await conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        yield conn


# ---------------------------------------------------------------------------------------------
# Appending and verifying
# ---------------------------------------------------------------------------------------------


async def test_appended_records_form_a_chain_that_verifies(wallet_db: Database) -> None:
    records = await _fill(wallet_db)
    assert [r.seq for r in records] == list(range(1, N + 1))
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:]))
    # the documented formula, recomputed by hand for the first record
    body = json.dumps(
        {
            "seq": 1,
            "at": records[0].at,
            "actor": "agent:a1",
            "action": "payment.authorized",
            "payload": {"i": 1, "amount": 10},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert records[0].hash == hashlib.sha256(bytes(32) + body).hexdigest()

    report = await audit.verify(wallet_db)
    assert report.ok, report
    assert (report.records, report.head_seq, report.head_hash) == (N, N, records[-1].hash)
    async with wallet_db.snapshot() as conn:
        assert await audit.head(conn) == (N, records[-1].hash)
        assert await audit.records(conn, after=N - 2) == records[-2:]


async def test_an_empty_log_verifies(wallet_db: Database) -> None:
    report = await audit.verify(wallet_db)
    assert report.ok and (report.records, report.head_seq, report.head_hash) == (0, 0, GENESIS)


async def test_a_record_commits_with_its_state_change_or_not_at_all(wallet_db: Database) -> None:
    with pytest.raises(ledger.InsufficientFunds):
        async with wallet_db.transaction() as conn:
            await audit.append(conn, "owner:o", "funds.withdrawn", {"amount": 5})
            await ledger.withdraw(conn, owner="o", amount=5)
    async with wallet_db.transaction() as conn:
        await ledger.deposit(conn, owner="o", amount=5)
        await audit.append(conn, "owner:o", "funds.deposited", {"amount": 5})
    async with wallet_db.snapshot() as conn:
        assert [r.action for r in await audit.records(conn)] == ["funds.deposited"]
    assert (await audit.verify(wallet_db)).ok


async def test_concurrent_appends_never_share_a_prev_hash(wallet_db: Database) -> None:
    async def one(i: int) -> audit.AuditRecord:
        async with wallet_db.transaction() as conn:
            return await audit.append(conn, "system", "tick", {"i": i})

    records = await asyncio.gather(*(one(i) for i in range(40)))
    assert sorted(r.seq for r in records) == list(range(1, 41))
    assert len({r.prev_hash for r in records}) == 40
    assert (await audit.verify(wallet_db)).ok


@pytest.mark.parametrize(
    ("actor", "action", "payload", "error"),
    [
        ("", "x", {}, ValueError),
        ("a", "", {}, ValueError),
        ("a", "x", {"f": float("nan")}, ValueError),
        ("a", "x", {"b": b"bytes"}, TypeError),
    ],
)
async def test_RevertIf_a_record_is_not_serialisable(
    wallet_db: Database, actor: str, action: str, payload: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        async with wallet_db.transaction() as conn:
            await audit.append(conn, actor, action, payload)


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log WHERE seq = 2"])
async def test_RevertIf_the_log_is_updated_or_deleted_through_the_database(wallet_db: Database, statement: str) -> None:
    await _fill(wallet_db, 3)
    with pytest.raises(IntegrityError, match="append-only"):
        async with wallet_db.transaction() as conn:
            await conn.execute(text(statement))


# ---------------------------------------------------------------------------------------------
# Tampering with direct access to the database
# ---------------------------------------------------------------------------------------------


Tamper = Callable[[AsyncConnection], Awaitable[object]]


async def _sql(conn: AsyncConnection, statement: str, **params: object) -> Any:
    return await conn.execute(text(statement), params)


def _edit_payload(conn: AsyncConnection) -> Awaitable[object]:
    return _sql(conn, "UPDATE audit_log SET payload = :payload WHERE seq = 5", payload='{"amount":1,"i":5}')


def _edit_actor(conn: AsyncConnection) -> Awaitable[object]:
    return _sql(conn, "UPDATE audit_log SET actor = 'owner:o' WHERE seq = 5")


def _delete_row(conn: AsyncConnection) -> Awaitable[object]:
    return _sql(conn, "DELETE FROM audit_log WHERE seq = 5")


def _delete_first_row(conn: AsyncConnection) -> Awaitable[object]:
    return _sql(conn, "DELETE FROM audit_log WHERE seq = 1")


def _swap_seq(a: int, b: int) -> Tamper:
    async def swap(conn: AsyncConnection) -> None:
        await _sql(conn, "UPDATE audit_log SET seq = -1 WHERE seq = :a", a=a)
        await _sql(conn, "UPDATE audit_log SET seq = :a WHERE seq = :b", a=a, b=b)
        await _sql(conn, "UPDATE audit_log SET seq = :b WHERE seq = -1", b=b)

    return swap


async def _delete_and_renumber(conn: AsyncConnection) -> None:
    await _sql(conn, "DELETE FROM audit_log WHERE seq = 5")
    for seq in range(6, N + 1):
        await _sql(conn, "UPDATE audit_log SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)


async def _rewrite_with_a_fresh_hash(conn: AsyncConnection) -> None:
    """Edit record 5 and give it the hash its new content deserves: record 6 still links to the old one."""
    row = (await _sql(conn, "SELECT seq, at, actor, action, prev_hash FROM audit_log WHERE seq = 5")).one()
    payload = {"amount": 1, "i": 5}
    new_hash = audit.chain_hash(row.prev_hash, row.seq, row.at, row.actor, row.action, payload)
    await _sql(
        conn,
        "UPDATE audit_log SET payload = :payload, hash = :hash WHERE seq = 5",
        payload=audit.canonical_json(payload).decode(),
        hash=new_hash,
    )


@pytest.mark.parametrize(
    ("tamper", "seq", "fault"),
    [
        (_edit_payload, 5, AuditFault.EDITED),
        (_edit_actor, 5, AuditFault.EDITED),
        (_delete_row, 5, AuditFault.MISSING),
        (_delete_first_row, 1, AuditFault.MISSING),
        (_swap_seq(4, 9), 4, AuditFault.REORDERED),
        (_swap_seq(5, 6), 5, AuditFault.REORDERED),
        (_delete_and_renumber, 5, AuditFault.BROKEN_LINK),
        (_rewrite_with_a_fresh_hash, 6, AuditFault.BROKEN_LINK),
    ],
)
async def test_tampering_behind_the_triggers_is_detected_at_its_seq(
    wallet_db: Database, tamper: Tamper, seq: int, fault: AuditFault
) -> None:
    await _fill(wallet_db)
    async with _behind_the_triggers(wallet_db) as conn:
        await tamper(conn)

    report = await audit.verify(wallet_db)
    assert not report.ok
    assert (report.seq, report.fault) == (seq, fault), report.detail
    assert report.head_seq == seq - 1  # everything before the break verified


async def test_a_cut_off_tail_is_detected_against_a_published_anchor(wallet_db: Database) -> None:
    records = await _fill(wallet_db)
    anchor = (records[-1].seq, records[-1].hash)
    assert (await audit.verify(wallet_db, anchor=anchor)).ok

    async with _behind_the_triggers(wallet_db) as conn:
        await _sql(conn, "DELETE FROM audit_log WHERE seq >= :seq", seq=N - 1)

    assert (await audit.verify(wallet_db)).ok  # the chain alone cannot tell
    report = await audit.verify(wallet_db, anchor=anchor)
    assert (report.seq, report.fault) == (N - 1, AuditFault.TRUNCATED)


async def test_a_chain_rewritten_from_some_record_on_is_detected_against_an_anchor(wallet_db: Database) -> None:
    records = await _fill(wallet_db)
    anchor = (8, records[7].hash)
    async with _behind_the_triggers(wallet_db) as conn:
        await _sql(conn, "DELETE FROM audit_log WHERE seq >= 5")
        prev = records[3].hash
        for seq in range(5, N + 1):  # a forger's chain, valid on its own
            at, payload = records[seq - 1].at, {"forged": seq}
            digest = audit.chain_hash(prev, seq, at, "system", "tick", payload)
            await _sql(
                conn,
                "INSERT INTO audit_log (seq, at, actor, action, payload, prev_hash, hash) "
                "VALUES (:seq, :at, 'system', 'tick', :payload, :prev, :digest)",
                seq=seq, at=at, payload=audit.canonical_json(payload).decode(), prev=prev, digest=digest,
            )
            prev = digest

    assert (await audit.verify(wallet_db)).ok
    report = await audit.verify(wallet_db, anchor=anchor)
    assert (report.seq, report.fault) == (8, AuditFault.ANCHOR_MISMATCH)


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------


def test_redact_replaces_secret_looking_values_at_any_depth() -> None:
    payload = {
        "private_key": "0xdead",
        "headers": {"X-API-Key": "wk_live_abc", "Authorization": "Bearer x", "accept": "json"},
        "keys": [{"clientSecret": "s"}, {"sessionKey": "0xpub"}],
        "amount": 5,
        "tokenAddress": "0xtoken",
    }
    assert audit.redact(payload) == {
        "private_key": audit.REDACTED,
        "headers": {"X-API-Key": audit.REDACTED, "Authorization": audit.REDACTED, "accept": "json"},
        "keys": [{"clientSecret": audit.REDACTED}, {"sessionKey": "0xpub"}],
        "amount": 5,
        "tokenAddress": "0xtoken",
    }
    assert payload["private_key"] == "0xdead"  # a copy, the input untouched
