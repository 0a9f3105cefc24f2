"""Settlement on chain of the payments the wallet booked: accepted → in batch → settled.

A payment the wallet booked (``PaymentStatus.SETTLED``: the payee served the call and its x402
receipt reached the wallet) is, on the payee's side, only *accepted*: its gateway's settlement
processor later seals the mandate into a batch, proves the batch (Groth16) and settles it in
one transaction. ``SettlementWatcher`` follows every booked ``aep2`` payment until then. It reads
the gateway's receipt, ``GET <origin>/payments/<paymentId>`` (docs/PROTOCOL.md §4), at the
origin of the URL that was paid, and records the stage the receipt names:

- ``accepted``: the gateway holds the mandate for a coming batch (again, if a batch let it go);
- ``in_batch``: sealed into batch ``batch_id`` (``batch_status`` ``proving`` or ``submitted``;
  the transaction once signed, the proof's seconds once proved);
- ``settled_on_chain``: the batch's transaction succeeded (transaction, block, gas);
- ``failed``: the gateway will never settle the mandate (``reason``, the gateway's words).

The last two are final: the payment is not asked about again. A change of what the receipt
says is one write transaction: the ``wallet_settlements`` row, an audit record
``payment.<stage>`` (the dashboard's event stream follows the audit head, so the page updates
live) and, for the final stages, a webhook event (``payment.settled_on_chain``,
``payment.settlement_failed``). The ledger is not changed: a booked payment moved its amount to
the payee when the receipt came; ``reconcile`` compares that with the chain.

Hostile or broken gateways. The wallet asks only hosts its owner named for the payment's agent
(``execute.allowed_hosts``, plus the hosts of the payment's own intent), follows no redirect,
bounds each request by ``timeout`` seconds and reads at most ``max_bytes`` of the answer. An
answer that is not the JSON ``aep2`` receipt of this very payment (its id, amount and payee)
books nothing and is logged with the reason. A poll that fails or finds nothing new backs off:
the next one waits ``interval · 2^misses`` seconds, at most ``max_interval`` (kept in memory:
a restarted watcher asks about every open payment at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import BigInteger, CheckConstraint, Column, Float, ForeignKey, Index, String, Table, Text, select

from . import audit
from .db import Database, metadata, utc_now
from .execute import allowed_hosts
from .policy import host_matches
from .rounds import run_rounds
from .service import PaymentStatus, WalletService, wallet_intents, wallet_payments
from .webhooks import EventType

__all__ = ["Settlement", "SettlementStage", "SettlementWatcher", "settlement_rows", "wallet_settlements"]

logger = logging.getLogger(__name__)

_ACTOR = "wallet:settlements"
_MAX_INT = 2**63 - 1


class SettlementStage(StrEnum):
    ACCEPTED = "accepted"
    IN_BATCH = "in_batch"
    SETTLED_ON_CHAIN = "settled_on_chain"
    FAILED = "failed"


_FINAL = (SettlementStage.SETTLED_ON_CHAIN.value, SettlementStage.FAILED.value)
#: The gateway's mandate status → the stage.
_STAGES = {"accepted": SettlementStage.ACCEPTED, "batched": SettlementStage.IN_BATCH,
           "settled": SettlementStage.SETTLED_ON_CHAIN, "failed": SettlementStage.FAILED}
_EVENTS = {SettlementStage.SETTLED_ON_CHAIN: EventType.PAYMENT_SETTLED_ON_CHAIN,
           SettlementStage.FAILED: EventType.PAYMENT_SETTLEMENT_FAILED}

wallet_settlements = Table(
    "wallet_settlements",
    metadata,
    Column("payment_id", String(66), ForeignKey("wallet_payments.payment_id"), primary_key=True),
    Column("stage", String(20), nullable=False),
    Column("batch_id", BigInteger, nullable=True),  # the gateway processor's batch id
    Column("batch_status", String(16), nullable=True),  # proving | submitted | settled | failed
    Column("tx_hash", String(66), nullable=True),
    Column("block", BigInteger, nullable=True),
    Column("prove_seconds", Float, nullable=True),
    Column("gas_used", BigInteger, nullable=True),
    Column("reason", Text, nullable=True),  # the gateway's, when failed
    Column("updated_at", String(32), nullable=False),
    CheckConstraint("stage IN ('accepted', 'in_batch', 'settled_on_chain', 'failed')", name="wallet_settlements_stage"),
    CheckConstraint("stage <> 'in_batch' OR batch_id IS NOT NULL", name="wallet_settlements_batch"),
    CheckConstraint("block >= 0 AND gas_used >= 0 AND prove_seconds >= 0", name="wallet_settlements_figures"),
)
Index("wallet_settlements_by_stage", wallet_settlements.c.stage)


@dataclass(frozen=True, slots=True)
class Settlement:
    """Where a booked payment is on its way to the chain (the module docstring's stages).
    ``prove_seconds`` is the batch's proving wall time; ``gas_used`` its transaction's gas."""

    payment_id: str
    stage: SettlementStage
    batch_id: int | None = None
    batch_status: str | None = None
    tx_hash: str | None = None
    block: int | None = None
    prove_seconds: float | None = None
    gas_used: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "stage": self.stage.value, "batch_id": self.batch_id,
                "batch_status": self.batch_status, "tx": self.tx_hash, "block": self.block,
                "prove_seconds": self.prove_seconds, "gas_used": self.gas_used, "reason": self.reason}


# -- the gateway's receipt (docs/PROTOCOL.md §4), as far as the wallet relies on it ---------------

_Count = Annotated[int, Field(strict=True, ge=0, le=_MAX_INT)]
_TxHash = Annotated[str, Field(pattern=r"^(0x[0-9a-fA-F]{64})?$")]


class _Batch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Annotated[int, Field(strict=True, ge=1, le=_MAX_INT)]
    status: Literal["proving", "submitted", "settled", "failed"]
    transaction: _TxHash
    block: _Count | None = None
    proveSeconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    gasUsed: _Count | None = None


class _Receipt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    paymentId: str
    scheme: Literal["aep2"]
    status: Literal["accepted", "batched", "settled", "failed"]
    payee: str
    amount: str
    transaction: _TxHash = ""
    reason: Annotated[str, Field(max_length=1000)] | None = None
    batch: _Batch | None = None


class _Refused(Exception):
    """The answer is not this payment's receipt: nothing is booked (the message says why)."""


@dataclass(frozen=True, slots=True)
class _Open:
    payment_id: str
    agent_id: str
    origin: str
    amount: int
    payee: str
    intent_hosts: frozenset[str]


class SettlementWatcher:
    """Follows the booked payments of ``service`` to the chain (module docstring).

    ``http``: the client to ask gateways with (default: one of its own, closed by ``aclose``);
    redirects are never followed. ``timeout``: seconds per request. ``max_bytes``: the largest
    receipt read. ``interval`` and ``max_interval``: the first and the longest wait between
    polls of one payment, in seconds. ``batch``: payments asked at once. ``clock``: unix
    seconds (tests). Raises ``ValueError`` naming the option that is out of range.
    """

    def __init__(
        self,
        service: WalletService,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_bytes: int = 64 * 1024,
        interval: float = 2.0,
        max_interval: float = 300.0,
        batch: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0 or max_bytes < 1 or batch < 1:
            raise ValueError(f"timeout, max_bytes, batch: expected > 0, got {timeout}, {max_bytes}, {batch}")
        if interval < 0 or max_interval < interval:
            raise ValueError(f"interval: expected 0 ≤ interval ≤ max_interval, got {interval}, {max_interval}")
        self.service = service
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.interval = interval
        self.max_interval = max_interval
        self.batch = batch
        self._clock = clock
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        # payment id -> (polls in a row that failed or found nothing new, when to poll next)
        self._backoff: dict[str, tuple[int, float]] = {}

    async def aclose(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._owns_http:
            await self._http.aclose()

    async def watch_once(self) -> list[Settlement]:
        """Ask about every open payment that is due once; return the settlements that changed.

        A gateway that cannot be reached or answers badly is logged and backed off, never
        raised; a database error propagates.
        """
        now = self._clock()
        open_payments = await self._open()
        # Forget the waits of payments that are no longer open (final, or released).
        self._backoff = {p.payment_id: self._backoff[p.payment_id]
                         for p in open_payments if p.payment_id in self._backoff}
        due = [p for p in open_payments if self._backoff.get(p.payment_id, (0, 0.0))[1] <= now]
        hosts: dict[str, frozenset[str]] = {}
        changed: list[Settlement] = []
        for start in range(0, len(due), self.batch):
            chunk = due[start:start + self.batch]
            for payment in chunk:
                if payment.agent_id not in hosts:
                    hosts[payment.agent_id] = await allowed_hosts(self.service, payment.agent_id)
            found = await asyncio.gather(*(self._ask(p, hosts[p.agent_id] | p.intent_hosts) for p in chunk))
            for payment, settlement in zip(chunk, found):
                recorded = settlement is not None and await self._record(settlement)
                self._reschedule(payment.payment_id, recorded, now)
                if settlement is not None and recorded:
                    changed.append(settlement)
        return changed

    async def run(self, stop: asyncio.Event, *, interval: float = 1.0) -> None:
        """``watch_once`` every ``interval`` seconds until ``stop`` is set; a failed round is
        logged and the loop goes on."""
        await run_rounds(self.watch_once, stop, interval, logger, "settlement watch")

    # -- internals ------------------------------------------------------------------------------

    async def _open(self) -> list[_Open]:
        p, s, i = wallet_payments, wallet_settlements, wallet_intents
        query = (
            select(p.c.payment_id, p.c.agent_id, p.c.origin, p.c.amount, p.c.payee, i.c.hosts)
            .join(i, i.c.id == p.c.intent_id)
            .outerjoin(s, s.c.payment_id == p.c.payment_id)
            .where(p.c.status == PaymentStatus.SETTLED.value, p.c.origin.is_not(None))
            .where(s.c.stage.is_(None) | s.c.stage.not_in(_FINAL))
            .order_by(p.c.at)
        )
        async with self.service.db.snapshot() as conn:
            rows = (await conn.execute(query)).all()
        return [_Open(r.payment_id, r.agent_id, r.origin, int(r.amount), r.payee, frozenset(json.loads(r.hosts)))
                for r in rows]

    async def _ask(self, payment: _Open, hosts: frozenset[str]) -> Settlement | None:
        """The payment's settlement as its gateway's receipt says, or None (logged)."""
        url = f"{payment.origin}/payments/{payment.payment_id}"
        host = (httpx.URL(payment.origin).host or "").lower()
        if not host_matches(host, hosts):
            logger.warning("payment %s: host %r is not among the hosts the owner named for agent %s; "
                           "its receipt is not asked for", payment.payment_id, host, payment.agent_id)
            return None
        try:
            body = await self._get(url)
            return _settlement(payment, _parse(body))
        except _Refused as exc:
            logger.warning("payment %s: GET %s: %s; nothing booked", payment.payment_id, url, exc)
        except httpx.HTTPError as exc:
            logger.warning("payment %s: GET %s failed: %s", payment.payment_id, url, type(exc).__name__)
        return None

    async def _get(self, url: str) -> bytes:
        async with self._http.stream("GET", url, timeout=self.timeout, follow_redirects=False,
                                     headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise _Refused(f"answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise _Refused(f"answer over {self.max_bytes} bytes")
        return bytes(body)

    async def _record(self, settlement: Settlement) -> bool:
        """Store ``settlement`` if it differs from the stored one (re-read under the write lock,
        so two watchers record one change once); returns whether it did."""
        values = {"stage": settlement.stage.value, "batch_id": settlement.batch_id,
                  "batch_status": settlement.batch_status, "tx_hash": settlement.tx_hash, "block": settlement.block,
                  "prove_seconds": settlement.prove_seconds, "gas_used": settlement.gas_used,
                  "reason": settlement.reason}
        async with self.service.db.transaction() as conn:
            row = (await conn.execute(
                select(wallet_settlements).where(wallet_settlements.c.payment_id == settlement.payment_id)
            )).first()
            if row is not None and _settlement_of(row) == settlement:
                return False
            if row is not None and row.stage in _FINAL:
                return False  # final: a later answer cannot undo the chain's
            stamped = values | {"updated_at": utc_now()}
            if row is None:
                await conn.execute(wallet_settlements.insert().values(payment_id=settlement.payment_id, **stamped))
            else:
                await conn.execute(wallet_settlements.update()
                                   .where(wallet_settlements.c.payment_id == settlement.payment_id).values(**stamped))
            event = settlement.to_json()
            await audit.append(conn, _ACTOR, f"payment.{settlement.stage.value}", event)
            if settlement.stage in _EVENTS:
                await self.service.webhooks.enqueue(conn, _EVENTS[settlement.stage], event)
        return True

    def _reschedule(self, payment_id: str, changed: bool, now: float) -> None:
        misses = 0 if changed else self._backoff.get(payment_id, (0, 0.0))[0] + 1
        self._backoff[payment_id] = (misses, now + min(self.interval * 2**misses, self.max_interval))


def _parse(body: bytes) -> _Receipt:
    try:
        data = json.loads(body)
    except ValueError:
        raise _Refused("not JSON") from None
    try:
        return _Receipt.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        raise _Refused(f"not an aep2 receipt ({where})") from None


def _settlement(payment: _Open, receipt: _Receipt) -> Settlement:
    """What ``receipt`` says of ``payment``; raises ``_Refused`` for another payment's."""
    if receipt.paymentId.lower() != payment.payment_id.lower():
        raise _Refused(f"a receipt of payment {receipt.paymentId[:80]!r}, not of this one")
    if receipt.amount != str(payment.amount) or receipt.payee.lower() != payment.payee.lower():
        raise _Refused(f"the receipt's amount or payee is not the payment's ({receipt.amount[:40]!r}, "
                       f"{receipt.payee[:42]!r})")
    stage = _STAGES[receipt.status]
    batch = receipt.batch
    if stage is SettlementStage.IN_BATCH and batch is None:
        raise _Refused("a batched receipt without its batch")
    return Settlement(
        payment_id=payment.payment_id,
        stage=stage,
        batch_id=batch.id if batch else None,
        batch_status=batch.status if batch else None,
        tx_hash=receipt.transaction or (batch.transaction if batch else "") or None,
        block=batch.block if batch else None,
        prove_seconds=batch.proveSeconds if batch else None,
        gas_used=batch.gasUsed if batch else None,
        reason=receipt.reason if stage is SettlementStage.FAILED else None,
    )


def _settlement_of(row: Any) -> Settlement:
    return Settlement(row.payment_id, SettlementStage(row.stage), row.batch_id, row.batch_status, row.tx_hash,
                      row.block, row.prove_seconds, row.gas_used, row.reason)


async def settlement_rows(db: Database, payment_ids: list[str]) -> dict[str, Settlement]:
    """The recorded settlements of ``payment_ids`` (those with none are absent)."""
    if not payment_ids:
        return {}
    async with db.snapshot() as conn:
        rows = (await conn.execute(
            select(wallet_settlements).where(wallet_settlements.c.payment_id.in_(payment_ids))
        )).all()
    return {row.payment_id: _settlement_of(row) for row in rows}
