"""Settlement batches: what the processor seals, submits and settles.

A batch and its payment ids come from one query (batches joined with their mandates), for
one batch or for all of them.
"""

from __future__ import annotations

import time
from typing import Sequence

from ..store import BatchRecord, BatchStatus, MandateRecord
from .database import StoreBase
from .records import BATCH_COLUMNS, MANDATE_COLUMNS, batch_records, mandate_record

__all__ = ["Batches"]

_SELECT_BATCHES = (
    f"SELECT {BATCH_COLUMNS} FROM batches AS b LEFT JOIN mandates AS m ON m.batch_id = b.batch_id "
    "{where} ORDER BY b.batch_id, m.intent_id, m.nonce"
)


class Batches(StoreBase):
    """Batches and their mandates (part of ``SQLStore``)."""

    async def seal_batch(self, payment_ids: Sequence[str], time_ref: int) -> BatchRecord:
        """Create a ``proving`` batch of ``accepted`` mandates and mark them ``batched``,
        atomically. Raises ``ValueError`` if one of them is no longer ``accepted``."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "INSERT INTO batches (status, time_ref, created_at) VALUES ('proving', :time_ref, :now) "
                "RETURNING batch_id",
                {"time_ref": time_ref, "now": time.time()},
            )
            assert row is not None  # RETURNING always answers one row
            batch_id = row["batch_id"]
            if payment_ids:
                await tx.executemany(
                    "UPDATE mandates SET status = 'batched', batch_id = :batch_id "
                    "WHERE payment_id = :payment_id AND status = 'accepted'",
                    [{"batch_id": batch_id, "payment_id": payment_id} for payment_id in payment_ids],
                )
            sealed = await tx.fetchrow("SELECT COUNT(*) AS n FROM mandates WHERE batch_id = :batch_id", {"batch_id": batch_id})
            if sealed is None or sealed["n"] != len(payment_ids):
                raise ValueError("payment_ids: every mandate of a batch must be 'accepted'")
        return BatchRecord(batch_id, BatchStatus.PROVING, tuple(payment_ids), time_ref)

    async def get_batch(self, batch_id: int) -> BatchRecord:
        """One batch with its payment ids; raises ``KeyError`` for an unknown id."""
        batches = batch_records(
            await self.db.fetch(_SELECT_BATCHES.format(where="WHERE b.batch_id = :batch_id"), {"batch_id": batch_id})
        )
        if not batches:
            raise KeyError(batch_id)
        return batches[0]

    async def batches(self) -> list[BatchRecord]:
        """Every batch with its payment ids, oldest first."""
        return batch_records(await self.db.fetch(_SELECT_BATCHES.format(where="")))

    async def open_batches(self) -> list[BatchRecord]:
        """Batches neither ``settled`` nor ``failed`` (what a restarted processor resumes)."""
        return batch_records(
            await self.db.fetch(_SELECT_BATCHES.format(where="WHERE b.status IN ('proving', 'submitted')"))
        )

    async def batch_mandates(self, batch_id: int) -> list[MandateRecord]:
        """The mandates of a batch, ordered by intent then nonce."""
        rows = await self.db.fetch(
            f"SELECT {MANDATE_COLUMNS} FROM mandates WHERE batch_id = :batch_id ORDER BY intent_id, nonce",
            {"batch_id": batch_id},
        )
        return [mandate_record(row) for row in rows]

    async def mark_batch_submitted(
        self, batch_id: int, tx_hash: str, raw_tx: bytes, tx_nonce: int, *, prove_seconds: float | None = None
    ) -> None:
        """Record the signed transaction (hash, raw bytes, account nonce) before it is
        broadcast, and how long its proof took (seconds)."""
        await self.db.execute(
            "UPDATE batches SET status = 'submitted', tx_hash = :tx_hash, raw_tx = :raw_tx, tx_nonce = :tx_nonce, "
            "prove_seconds = :prove_seconds WHERE batch_id = :batch_id",
            {"batch_id": batch_id, "tx_hash": tx_hash, "raw_tx": raw_tx, "tx_nonce": tx_nonce,
             "prove_seconds": prove_seconds},
        )

    async def mark_batch_settled(
        self, batch_id: int, tx_hash: str, block: int, *, gas_used: int | None = None
    ) -> None:
        """The batch's transaction succeeded in ``block``, using ``gas_used`` gas: it and its
        mandates become ``settled``."""
        params = {"batch_id": batch_id, "tx_hash": tx_hash, "block": block, "gas_used": gas_used}
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE batches SET status = 'settled', tx_hash = :tx_hash, settled_block = :block, "
                "gas_used = :gas_used WHERE batch_id = :batch_id",
                params,
            )
            await tx.execute(
                "UPDATE mandates SET status = 'settled', tx_hash = :tx_hash, settled_block = :block "
                "WHERE batch_id = :batch_id",
                params,
            )

    async def fail_batch(self, batch_id: int, reason: str, *, retry: bool) -> None:
        """The batch did not settle: with ``retry`` its mandates go back to ``accepted``,
        otherwise they are ``failed`` with ``reason``."""
        params = {"batch_id": batch_id, "reason": reason}
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE batches SET status = 'failed', reason = :reason WHERE batch_id = :batch_id", params)
            if retry:
                await tx.execute(
                    "UPDATE mandates SET status = 'accepted', batch_id = NULL WHERE batch_id = :batch_id", params
                )
            else:
                await tx.execute(
                    "UPDATE mandates SET status = 'failed', reason = :reason WHERE batch_id = :batch_id", params
                )

    async def totals(self) -> dict[str, dict[str, int]]:
        """Settled totals in base units: ``payers`` and ``payees`` over ``aep2`` mandates,
        ``exact_payers`` and ``exact_payees`` over settled ``exact`` payments."""
        result: dict[str, dict[str, int]] = {}
        for table, prefix in (("mandates", ""), ("exact_payments", "exact_")):
            for column in ("payer", "payee"):
                rows = await self.db.fetch(
                    f"SELECT {column} AS party, SUM(amount) AS total FROM {table} WHERE status = 'settled' "
                    f"GROUP BY {column}"
                )
                # PostgreSQL sums BIGINT into NUMERIC: back to int.
                result[f"{prefix}{column}s"] = {row["party"]: int(row["total"]) for row in rows}
        return result
