"""The payment store's interface, shared by the gateway (writer of accepted payments) and the
settlement processor (which batches and settles them).

Mandate lifecycle: ``accepted`` (reserved by the gateway, request served) → ``batched``
(sealed into a batch) → ``settled`` (the
batch's transaction succeeded) or ``failed`` (diagnosed as unsettleable, with a reason).
A batch is ``proving`` → ``submitted`` (signed transaction recorded, then broadcast) →
``settled`` / ``failed``.

Implementations (``aep2.stores``): ``SQLiteStore``, one file, the zero-configuration default;
``PostgresStore``, one server shared by several gateway replicas and the processor.
``aep2.stores.create_store(location)`` picks one by its location.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, Sequence

from .eddsa import Signature
from .intent import SignedIntent
from .mandate import Mandate

__all__ = [
    "MandateStatus",
    "BatchStatus",
    "ExactStatus",
    "MandateRecord",
    "BatchRecord",
    "ExactPaymentRecord",
    "Reservation",
    "PaymentStore",
]


class MandateStatus(StrEnum):
    """Where a mandate is in its lifecycle (the module docstring draws it)."""

    ACCEPTED = "accepted"
    BATCHED = "batched"
    SETTLED = "settled"
    FAILED = "failed"


class BatchStatus(StrEnum):
    """Where a settlement batch is: ``proving`` → ``submitted`` → ``settled`` / ``failed``."""

    PROVING = "proving"
    SUBMITTED = "submitted"
    SETTLED = "settled"
    FAILED = "failed"


class ExactStatus(StrEnum):
    """An ``exact`` payment: ``accepted`` (being settled) → ``settled`` / ``failed``."""

    ACCEPTED = "accepted"
    SETTLED = "settled"
    FAILED = "failed"


@dataclass(frozen=True)
class MandateRecord:
    """A stored mandate. Amounts in token base units, times in unix seconds."""

    payment_id: str
    mandate: Mandate
    signature: Signature
    payer: str
    asset: str
    status: MandateStatus
    accepted_at: float
    batch_id: int | None = None
    tx_hash: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """A settlement batch: its mandates' payment ids and, once submitted, the transaction.

    ``raw_tx`` (the signed bytes) and ``tx_nonce`` (the processor account's nonce it uses)
    are recorded with ``tx_hash`` when the batch is submitted, so the transaction can be
    broadcast again, or shown never to be mined, after a restart. ``prove_seconds`` (wall
    seconds the Groth16 proof took) is recorded with the submission; ``block`` and
    ``gas_used`` (the receipt's ``blockNumber`` and ``gasUsed``) when the batch settles.
    Each is ``None`` until then, and for batches settled before the store kept them.
    """

    batch_id: int
    status: BatchStatus
    payment_ids: tuple[str, ...]
    time_ref: int
    tx_hash: str | None = None
    reason: str | None = None
    raw_tx: bytes | None = None
    tx_nonce: int | None = None
    block: int | None = None
    prove_seconds: float | None = None
    gas_used: int | None = None


#: ``reason`` of an ``exact`` payment whose settlement call failed without an answer: the
#: transfer may or may not be mined; a retry of the same payment settles it (idempotently).
SETTLEMENT_UNKNOWN = "settlement outcome unknown"


@dataclass(frozen=True)
class ExactPaymentRecord:
    """An x402 ``exact`` (EIP-3009) payment the gateway settles as its own facilitator."""

    nonce: str
    payer: str
    payee: str
    asset: str
    amount: int
    authorization: dict
    signature: str
    status: ExactStatus
    tx_hash: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CachedResponse:
    """A paid response as it was sent, kept for x402 ``payment-identifier`` retries:
    ``status``, ``headers`` (latin-1 name/value pairs) and ``body``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Reservation:
    """Limits a reservation is checked against, read by the caller before reserving.

    ``escrow_balance`` is the payer's escrowed balance on chain as of ``escrow_block``
    (base units); mandates settled in later blocks are already out of it.
    """

    max_amount: int
    max_per_payment: int
    escrow_balance: int
    escrow_block: int


class PaymentStore(Protocol):
    """Durable state of payments. Every method is atomic; reservations are serialised."""

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None:
        """Release the connection."""

    async def save_intent(self, signed_intent: SignedIntent) -> None:
        """Record a verified intent (idempotent)."""

    async def get_intent(self, intent_id: bytes) -> SignedIntent | None:
        """A previously saved intent, or ``None``."""

    async def reserve(
        self, mandate: Mandate, signature: Signature, payer: str, asset: str, limits: Reservation, now: float
    ) -> str:
        """Atomically check and record an accepted mandate; returns its payment id.

        Raises ``PaymentError`` with ``nonce_used`` (nonce of the intent already reserved:
        nonces are one-time, in any order, docs/PROTOCOL.md §3), ``budget_exceeded``
        (accepted + batched + settled + amount > max_amount), ``per_payment_cap_exceeded``
        or ``insufficient_escrow`` (outstanding for the payer and asset + amount > escrow).
        Committed durably before it returns.
        """

    async def release(self, payment_id: str) -> None:
        """Undo an accepted reservation whose request was not served (status ≥ 400)."""

    async def get_mandate(self, payment_id: str) -> MandateRecord | None:
        """One mandate by payment id."""

    async def mandates(self, status: MandateStatus | None = None) -> list[MandateRecord]:
        """All mandates, or those in one status, ordered by intent then nonce."""

    async def accepted_mandates(self) -> list[MandateRecord]:
        """All ``accepted`` mandates, ordered by intent then nonce."""

    async def seal_batch(self, payment_ids: Sequence[str], time_ref: int) -> BatchRecord:
        """Create a ``proving`` batch of ``accepted`` mandates and mark them ``batched``,
        atomically. Raises ``ValueError`` if one of them is no longer ``accepted``."""

    async def open_batches(self) -> list[BatchRecord]:
        """Batches neither ``settled`` nor ``failed`` (what a restarted processor resumes)."""

    async def get_batch(self, batch_id: int) -> BatchRecord:
        """One batch with its payment ids; raises ``KeyError`` for an unknown id."""

    async def batches(self) -> list[BatchRecord]:
        """Every batch with its payment ids, oldest first."""

    async def batch_mandates(self, batch_id: int) -> list[MandateRecord]:
        """The mandates of a batch, ordered by intent then nonce."""

    async def mark_batch_submitted(
        self, batch_id: int, tx_hash: str, raw_tx: bytes, tx_nonce: int, *, prove_seconds: float | None = None
    ) -> None:
        """Record the signed transaction (hash, raw bytes, account nonce) before it is
        broadcast, and how long its proof took (seconds)."""

    async def mark_batch_settled(self, batch_id: int, tx_hash: str, block: int, *, gas_used: int | None = None) -> None:
        """The batch's transaction succeeded in ``block``, using ``gas_used`` gas: its mandates
        become ``settled``."""

    async def fail_batch(self, batch_id: int, reason: str, *, retry: bool) -> None:
        """The batch did not settle: with ``retry`` its mandates go back to ``accepted``,
        otherwise they are ``failed`` with ``reason``."""

    async def fail_mandates(self, payment_ids: Sequence[str], reason: str) -> None:
        """Mark ``accepted`` mandates ``failed`` (they can never settle)."""

    async def save_exact_payment(self, record: ExactPaymentRecord) -> None:
        """Record an ``exact`` payment; raises ``PaymentError(authorization_used)`` on a reused nonce."""

    async def delete_exact_payment(self, nonce: str) -> None:
        """Forget an ``accepted`` ``exact`` payment whose request was not served."""

    async def update_exact_payment(self, nonce: str, status: ExactStatus, tx_hash: str | None, reason: str | None) -> None:
        """Move an ``exact`` payment to ``settled`` / ``failed``."""

    async def resume_exact_payment(self, nonce: str, signature: str, now: float, stale_after: float) -> bool:
        """Take over an ``accepted`` ``exact`` payment carrying this very ``signature`` whose
        settlement outcome is unknown (marked ``SETTLEMENT_UNKNOWN``, or accepted more than
        ``stale_after`` seconds ago by a request that died); returns whether the caller now owns
        it (and should settle it: the facilitator's settle is idempotent). Atomic: of two
        concurrent retries one wins."""

    async def exact_payments(self, status: ExactStatus | None = None) -> list[ExactPaymentRecord]:
        """``exact`` payments, all or in one status, oldest first."""

    async def claim_payment_identifier(
        self, payment_identifier: str, payload_hash: str, now: float, stale_after: float
    ) -> CachedResponse | None:
        """Start the request of x402 ``payment-identifier`` ``payment_identifier`` (bound to
        ``payload_hash``, a digest of the exact ``PaymentPayload``); returns ``None`` when the
        caller is to process it, or the response cached for the identical payload.

        Raises ``PaymentError`` with ``payment_identifier_conflict`` for another payload under
        the same identifier, or ``payment_in_progress`` while the first request is still being
        processed (a claim older than ``stale_after`` seconds is taken over: its request died).
        """

    async def complete_payment_identifier(self, payment_identifier: str, response: CachedResponse) -> None:
        """Keep the paid response of a claimed identifier for its retries."""

    async def drop_payment_identifier(self, payment_identifier: str) -> None:
        """Forget a claim whose request was refused or not charged: a retry is processed anew."""

    async def totals(self) -> dict:
        """Expected figures for reconciliation: settled totals per payer and per payee."""
