"""Rows to records: every column read by name, so a reordered query cannot swap fields."""

from __future__ import annotations

import itertools
import json

from ..eddsa import Signature
from ..mandate import Mandate
from ..store import BatchRecord, BatchStatus, ExactPaymentRecord, ExactStatus, MandateRecord, MandateStatus
from .database import Row

__all__ = ["MANDATE_COLUMNS", "EXACT_COLUMNS", "BATCH_COLUMNS", "mandate_record", "exact_record", "batch_records"]

MANDATE_COLUMNS = (
    "payment_id, intent_id, nonce, payee, amount, deadline, request_hash, r8x, r8y, s, "
    "payer, asset, status, accepted_at, batch_id, tx_hash, reason"
)
EXACT_COLUMNS = 'nonce, payer, payee, asset, amount, "authorization", signature, status, tx_hash, reason'
#: A batch's columns (table alias ``b``) and one of its payment ids per row (``m``).
BATCH_COLUMNS = (
    "b.batch_id, b.status, b.time_ref, b.tx_hash, b.reason, b.raw_tx, b.tx_nonce, b.settled_block, "
    "b.prove_seconds, b.gas_used, m.payment_id"
)


def mandate_record(row: Row) -> MandateRecord:
    """A ``MandateRecord`` from a row of ``MANDATE_COLUMNS``."""
    mandate = Mandate(
        intent_id=bytes(row["intent_id"]),
        payee=row["payee"],
        amount=row["amount"],
        nonce=row["nonce"],
        deadline=row["deadline"],
        request_hash=int(row["request_hash"]),
    )
    return MandateRecord(
        payment_id=row["payment_id"],
        mandate=mandate,
        signature=Signature(int(row["r8x"]), int(row["r8y"]), int(row["s"])),
        payer=row["payer"],
        asset=row["asset"],
        status=MandateStatus(row["status"]),
        accepted_at=row["accepted_at"],
        batch_id=row["batch_id"],
        tx_hash=row["tx_hash"],
        reason=row["reason"],
    )


def exact_record(row: Row) -> ExactPaymentRecord:
    """An ``ExactPaymentRecord`` from a row of ``EXACT_COLUMNS``."""
    return ExactPaymentRecord(
        nonce=row["nonce"],
        payer=row["payer"],
        payee=row["payee"],
        asset=row["asset"],
        amount=row["amount"],
        authorization=json.loads(row["authorization"]),
        signature=row["signature"],
        status=ExactStatus(row["status"]),
        tx_hash=row["tx_hash"],
        reason=row["reason"],
    )


def batch_records(rows: list[Row]) -> list[BatchRecord]:
    """Batches from rows of ``BATCH_COLUMNS`` ordered by batch (a batch without mandates has
    one row whose ``payment_id`` is ``NULL``), in that order."""
    batches = []
    for _, group in itertools.groupby(rows, key=lambda row: row["batch_id"]):
        members = list(group)
        first = members[0]
        batches.append(
            BatchRecord(
                batch_id=first["batch_id"],
                status=BatchStatus(first["status"]),
                payment_ids=tuple(row["payment_id"] for row in members if row["payment_id"] is not None),
                time_ref=first["time_ref"],
                tx_hash=first["tx_hash"],
                reason=first["reason"],
                raw_tx=bytes(first["raw_tx"]) if first["raw_tx"] is not None else None,
                tx_nonce=first["tx_nonce"],
                block=first["settled_block"],
                prove_seconds=first["prove_seconds"],
                gas_used=first["gas_used"],
            )
        )
    return batches
