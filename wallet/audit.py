"""The wallet's audit trail: an append-only, hash-chained log of every state change.

Each record is ``(seq, at, actor, action, payload, prev_hash, hash)`` with::

    hash = sha256(bytes.fromhex(prev_hash) ‖ canonical_json({"seq", "at", "actor", "action", "payload"}))

where canonical JSON is UTF-8, sorted keys, ``(",", ":")`` separators, no NaN; ``seq`` counts
from 1 and the first record's ``prev_hash`` is ``GENESIS`` (32 zero bytes, hex). ``seq`` and
``prev_hash`` are unique, so two appends can never both extend the same record.

``append`` writes inside the caller's transaction, so a record commits with the state change
it describes or not at all. Triggers refuse UPDATE and DELETE (``wallet.db``), which stops the
application, not someone with the database file; ``verify`` catches that: it walks the chain
and names the first broken ``seq`` and why (``AuditFault``). A chain cut at its end, or
rewritten from some record on, still verifies on its own: publish ``head()`` somewhere the
database's writer cannot reach (a log line, a webhook) and pass it back as ``anchor``.

Payloads are stored as given. Keep key material and full API keys out of them: pass anything
that may hold them through ``redact`` first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database, audit_log, serialize, utc_now

__all__ = [
    "GENESIS",
    "AuditRecord",
    "AuditFault",
    "AuditReport",
    "append",
    "head",
    "records",
    "verify",
    "redact",
    "SECRET_KEYS",
    "REDACTED",
    "canonical_json",
    "chain_hash",
]

#: ``prev_hash`` of the first record.
GENESIS = "00" * 32
#: Resource name the PostgreSQL advisory lock is taken on (see ``wallet.db.serialize``).
_LOCK = "wallet.audit_log"


def canonical_json(value: Any) -> bytes:
    """The one byte encoding hashed for ``value``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def chain_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, payload: Any) -> str:
    """The hash a record with these fields must carry after ``prev_hash``."""
    body = canonical_json({"seq": seq, "at": at, "actor": actor, "action": action, "payload": payload})
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: str
    actor: str
    action: str
    payload: Any
    prev_hash: str
    hash: str


class AuditFault(StrEnum):
    """Why the chain breaks at ``AuditReport.seq``."""

    #: the record's fields no longer give its hash: it was edited
    EDITED = "edited"
    #: no record carries this seq though later ones exist: it was deleted
    MISSING = "missing"
    #: the record follows another record than the one it was chained to: rows were moved
    REORDERED = "reordered"
    #: the record was chained to a hash no record carries: the one before it was deleted
    #: (and the rest renumbered) or rewritten
    BROKEN_LINK = "broken_link"
    #: the anchor's seq is beyond the end of the chain: records were cut off the end
    TRUNCATED = "truncated"
    #: the record at the anchor's seq does not carry the anchor's hash: rewritten since
    ANCHOR_MISMATCH = "anchor_mismatch"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of ``verify``: ``ok``, or the first broken ``seq`` with its ``fault``."""

    records: int
    head_seq: int
    head_hash: str
    seq: int | None = None
    fault: AuditFault | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.fault is None


async def append(conn: AsyncConnection, actor: str, action: str, payload: Mapping[str, Any]) -> AuditRecord:
    """Chain one record after the current head, inside the caller's transaction."""
    for field, value in (("actor", actor), ("action", action)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    body = json.loads(canonical_json(dict(payload)))  # refuses what JSON cannot carry; a plain copy
    await serialize(conn, _LOCK)
    last = (
        await conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1))
    ).first()
    seq, prev_hash = (1, GENESIS) if last is None else (int(last.seq) + 1, last.hash)
    at = utc_now()
    record = AuditRecord(seq, at, actor, action, body, prev_hash, chain_hash(prev_hash, seq, at, actor, action, body))
    await conn.execute(
        audit_log.insert().values(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            payload=canonical_json(body).decode(),
            prev_hash=prev_hash,
            hash=record.hash,
        )
    )
    return record


async def head(conn: AsyncConnection) -> tuple[int, str]:
    """``(seq, hash)`` of the last record; ``(0, GENESIS)`` for an empty log."""
    last = (
        await conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1))
    ).first()
    return (0, GENESIS) if last is None else (int(last.seq), last.hash)


async def records(conn: AsyncConnection, *, after: int = 0, limit: int = 100) -> list[AuditRecord]:
    """Records with ``seq > after``, oldest first."""
    rows = await conn.execute(select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit))
    return [_record(row) for row in rows]


async def verify(db: Database, *, anchor: tuple[int, str] | None = None) -> AuditReport:
    """Walk the whole chain in one snapshot; the first break, or ok.

    ``anchor``: a ``head()`` published earlier. The chain must still contain it, which also
    catches records cut off the end and a chain rewritten from some record on.
    """
    async with db.snapshot() as conn:
        count, prev_seq, prev_hash = 0, 0, GENESIS
        anchor_hash: str | None = None
        stream = await conn.stream(select(audit_log).order_by(audit_log.c.seq))
        async for row in stream:
            fault = await _check(conn, row, prev_seq + 1, prev_hash)
            if fault is not None:
                await stream.close()
                return AuditReport(count, prev_seq, prev_hash, *fault)
            count, prev_seq, prev_hash = count + 1, int(row.seq), row.hash
            if anchor is not None and prev_seq == anchor[0]:
                anchor_hash = row.hash
    if anchor is not None:
        anchor_seq, expected = anchor
        if anchor_seq > prev_seq:
            detail = f"the anchor names seq {anchor_seq}, the chain ends at {prev_seq}"
            return AuditReport(count, prev_seq, prev_hash, prev_seq + 1, AuditFault.TRUNCATED, detail)
        if anchor_seq > 0 and anchor_hash != expected:
            detail = f"seq {anchor_seq} carries {anchor_hash}, the anchor {expected}"
            return AuditReport(count, prev_seq, prev_hash, anchor_seq, AuditFault.ANCHOR_MISMATCH, detail)
    return AuditReport(count, prev_seq, prev_hash)


async def _check(conn: AsyncConnection, row: Any, seq: int, prev_hash: str) -> tuple[int, AuditFault, str] | None:
    """``(seq, fault, detail)`` if ``row`` cannot be record ``seq`` following ``prev_hash``."""
    if row.seq != seq:
        return seq, AuditFault.MISSING, f"the chain jumps from seq {seq - 1} to {row.seq}"
    if row.prev_hash != prev_hash:
        linked = (await conn.execute(select(audit_log.c.seq).where(audit_log.c.hash == row.prev_hash))).scalar()
        if linked is not None:
            return seq, AuditFault.REORDERED, f"seq {seq} is chained to the record now at seq {linked}"
        return seq, AuditFault.BROKEN_LINK, f"seq {seq} is chained to {row.prev_hash}, which no record carries"
    try:
        payload = json.loads(row.payload)
        computed = chain_hash(row.prev_hash, int(row.seq), row.at, row.actor, row.action, payload)
    except (ValueError, TypeError) as exc:
        return seq, AuditFault.EDITED, f"seq {seq} no longer parses: {exc}"
    if computed != row.hash:
        return seq, AuditFault.EDITED, f"seq {seq} hashes to {computed}, stored {row.hash}"
    return None


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        int(row.seq), row.at, row.actor, row.action, json.loads(row.payload), row.prev_hash, row.hash
    )


#: Key fragments (lower case, without ``_`` and ``-``) whose values ``redact`` replaces.
SECRET_KEYS = frozenset(
    {
        "privatekey",
        "secret",
        "password",
        "apikey",
        "accesstoken",
        "authtoken",
        "bearer",
        "authorization",
        "keystore",
        "mnemonic",
        "seed",
    }
)
REDACTED = "[redacted]"


def redact(value: Any, *, keys: frozenset[str] = SECRET_KEYS) -> Any:
    """A copy of ``value`` with every mapping value under a secret-looking key replaced.

    A key matches when, lower-cased and stripped of ``_`` and ``-``, it contains one of
    ``keys`` (``private_key``, ``X-API-Key``, ``clientSecret``…). Lists and nested mappings
    are walked; other values are returned as they are.
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            norm = str(key).lower().replace("_", "").replace("-", "")
            out[key] = REDACTED if any(k in norm for k in keys) else redact(item, keys=keys)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, keys=keys) for item in value]
    return value
