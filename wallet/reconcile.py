"""Reconciliation: the wallet's ledger against the chain, difference by difference.

What is compared (all amounts in token base units):

==========================  ============================================  ==========================
check                       ledger                                        chain (``Settlement``)
==========================  ============================================  ==========================
``escrow``                  ``ledger.escrow(owner)``                      ``balanceOf(owner, token, processor)``
``intent_spent``            ``ledger.settled(intent)``                    ``getIntent(id).spent``
``intent_registration``     an approved intent                            ``getIntent(id).payer`` is the owner
``intent_revocation``       a revoked intent                              ``getIntent(id).revokedAt`` set
``payment`` per mandate     its status (authorized, settled, released)    its nonce's bit in ``settledNonces``
==========================  ============================================  ==========================

A payment's kinds of difference:

- ``settled_on_chain_only``: authorized in the wallet (no receipt came back) but settled on
  chain; ``settle_from_chain=True`` books it as settled (the ledger learns it from the chain).
- ``awaiting_settlement``: settled from the gateway's receipt but not yet on chain. Normal
  until the processor's next batch; after the contract's settlement window it is a loss to
  chase.
- ``released_but_settled``: released in the wallet, yet paid on chain. The ledger says the
  budget came back when it did not: always investigate.

An ``escrow`` or ``intent_spent`` difference with no payment difference to explain it means
money moved outside the wallet (a deposit or withdrawal it did not record, a mandate it did
not sign). Zero differences means the ledger, the chain and (through the receipts) the
gateway agree to the base unit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import ledger
from .service import IntentStatus, PaymentStatus, WalletService

__all__ = ["ChainLedger", "Difference", "Reconciliation", "reconcile"]

_ZERO_ADDRESS = "0x" + "00" * 20


class ChainLedger(Protocol):
    """The chain reads reconciliation needs; ``payer.Escrow`` (for the owner and the
    processor) is one. Synchronous (web3.py): run in a worker thread."""

    def balance(self) -> int: ...

    def intent(self, intent_id: bytes) -> dict[str, Any]: ...

    def settled_nonces(self, intent_id: bytes, window: int) -> int: ...


@dataclass(frozen=True)
class Difference:
    """One disagreement: ``check`` (see the module table), ``subject`` (the owner, an intent
    id or a payment id), the ``ledger`` and ``chain`` values, and what it means."""

    check: str
    subject: str
    ledger: int | str
    chain: int | str
    detail: str = ""


@dataclass(frozen=True)
class Reconciliation:
    """The outcome: every difference, what was compared, and the payments booked from the
    chain (``settle_from_chain``)."""

    differences: list[Difference]
    ledger_escrow: int
    chain_escrow: int
    intents: int
    payments: int
    booked_from_chain: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ledgerEscrow": self.ledger_escrow,
            "chainEscrow": self.chain_escrow,
            "intents": self.intents,
            "payments": self.payments,
            "bookedFromChain": self.booked_from_chain,
            "differences": [
                {"check": d.check, "subject": d.subject, "ledger": d.ledger, "chain": d.chain, "detail": d.detail}
                for d in self.differences
            ],
        }


async def reconcile(service: WalletService, chain: ChainLedger, *, settle_from_chain: bool = False) -> Reconciliation:
    """Compare ``service``'s ledger with ``chain`` and return every difference.

    With ``settle_from_chain`` a payment the chain settled but the wallet never heard of is
    confirmed in the ledger first (``actor`` ``chain``) and then no longer differs. Reads the
    chain in a worker thread; raises what the chain client raises when the node is unreachable.
    """
    booked: list[str] = []
    differences: list[Difference] = []
    bitmaps: dict[tuple[bytes, int], int] = {}

    async def settled_on_chain(intent_id: bytes, nonce: int) -> bool:
        window = nonce // 128
        if (intent_id, window) not in bitmaps:
            bitmaps[(intent_id, window)] = await asyncio.to_thread(chain.settled_nonces, intent_id, window)
        return bool(bitmaps[(intent_id, window)] >> (nonce % 128) & 1)

    intents = [r for r in await service.intents() if r.chain_intent_id is not None]
    payments = await service.payments()
    by_intent: dict[str, list[Any]] = {}
    for payment in payments:
        by_intent.setdefault(payment.intent_id, []).append(payment)
    owner = service.owner_ref.lower()
    for record in intents:
        chain_id = bytes.fromhex(record.chain_intent_id[2:])
        on_chain = await asyncio.to_thread(chain.intent, chain_id)
        registered = str(on_chain["payer"]).lower() != _ZERO_ADDRESS
        if not registered:
            if record.status is IntentStatus.ACTIVE:
                differences.append(Difference("intent_registration", record.id, "active", "unregistered",
                                              "approved in the wallet, unknown to the contract: gateways refuse it"))
            continue
        if str(on_chain["payer"]).lower() != owner:
            differences.append(Difference("intent_registration", record.id, owner, str(on_chain["payer"]),
                                          "registered for another payer"))
        if record.status is IntentStatus.REVOKED and not on_chain["revokedAt"]:
            differences.append(Difference("intent_revocation", record.id, "revoked", "not revoked",
                                          "gateways still accept its mandates"))
        for payment in by_intent.get(record.id, []):
            on = await settled_on_chain(chain_id, payment.nonce)
            if payment.status is PaymentStatus.AUTHORIZED and on:
                if settle_from_chain:
                    await service.confirm(payment.payment_id, None, actor="chain")
                    booked.append(payment.payment_id)
                else:
                    differences.append(Difference("payment", payment.payment_id, "authorized", "settled",
                                                  "settled_on_chain_only: the receipt never reached the wallet"))
            elif payment.status is PaymentStatus.SETTLED and not on:
                differences.append(Difference("payment", payment.payment_id, "settled", "unsettled",
                                              "awaiting_settlement: the processor has not settled it yet"))
            elif payment.status is PaymentStatus.RELEASED and on:
                differences.append(Difference("payment", payment.payment_id, "released", "settled",
                                              "released_but_settled: the budget was returned but the payee was paid"))
        async with service.db.snapshot() as conn:
            spent = await ledger.settled(conn, record.id)
        if spent != int(on_chain["spent"]):
            differences.append(Difference("intent_spent", record.id, spent, int(on_chain["spent"])))
    async with service.db.snapshot() as conn:
        ledger_escrow = await ledger.escrow(conn, service.owner_ref)
    chain_escrow = await asyncio.to_thread(chain.balance)
    if ledger_escrow != chain_escrow:
        differences.insert(0, Difference("escrow", service.owner_ref, ledger_escrow, chain_escrow))
    return Reconciliation(differences, ledger_escrow, chain_escrow, len(intents), len(payments), booked)
