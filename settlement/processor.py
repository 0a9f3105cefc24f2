"""The settlement processor: accepted mandates → batches → one Groth16 proof → one transaction.

Each round: reconcile unfinished batches with the chain, read the on-chain state of every
intent with accepted mandates (registering intents not yet on chain), plan a batch
(``batcher.plan_batch``: mandates that can never settle are marked ``failed`` with a
reason, the rest wait), seal it in the store (the gateway then refuses nonces at or below
the new watermark), build the witness, prove, verify in Python, cross-check the public
inputs with the contract's own, simulate, record the signed transaction, send, and mark the
batch settled once the receipt succeeds.

Crash safety: the store records each step before the next starts (the signed transaction
before it is broadcast), and the chain is the truth. ``reconcile()`` runs at the start of
every round, due or not: a submitted batch stays submitted while its transaction may still
be mined (broadcast again if the node forgot it) and ends only with its receipt, or with
its account nonce used by another transaction; a batch never submitted is put back
(``retry``). So nothing is lost or settled twice, and the store never contradicts the chain.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from aep2.intent import SignedIntent
from aep2.sqlite_store import SQLiteStore
from aep2.store import BatchRecord, MandateRecord

from .batcher import IntentState, PendingMandate, plan_batch
from .chain import ChainRevert, SettlementClient, SignedTx, TransactionPending, TxLookup, TxStatus
from .prover import Prover
from .witness import IntentSlot, build_statement

__all__ = ["BatchPolicy", "BatchResult", "SettlementProcessor"]

logger = logging.getLogger("settlement")


@dataclass(frozen=True)
class BatchPolicy:
    """When to cut a batch: ``max_size`` mandates (at most the circuit's N) or when the
    oldest accepted mandate is ``max_age_seconds`` old."""

    max_size: int
    max_age_seconds: float = 30.0


@dataclass
class BatchResult:
    """One settled batch: its id, transaction, mandate count, gas used and proving seconds."""

    batch_id: int
    tx_hash: str
    mandates: int
    gas_used: int
    prove_seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)


class SettlementProcessor:
    """Settles the accepted mandates of ``store`` through ``client`` with ``prover``'s circuit."""

    def __init__(
        self,
        store: SQLiteStore,
        client: SettlementClient,
        prover: Prover,
        asset: str,
        *,
        policy: BatchPolicy | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.prover = prover
        self.asset = asset
        shape = prover.artifacts
        self.n, self.i, self.p = shape.n, shape.i, shape.p
        self.policy = policy or BatchPolicy(max_size=self.n)
        self.results: list[BatchResult] = []

    # -- crash recovery ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring every batch left ``proving`` or ``submitted`` in line with the chain.

        A submitted batch is settled by its transaction's successful receipt; it is put back
        in the queue (``retry``) when that transaction reverted or can never be mined (its
        account nonce went to another transaction); otherwise it stays submitted, broadcast
        again if the node forgot it. A batch never submitted is put back. Before a batch is
        put back, the intents' nonces on chain are checked: if they show its mandates
        settled (by a transaction not recorded here), it is marked settled instead.
        """
        for batch in await self.store.open_batches():
            if batch.status == "submitted":
                reason = await self._follow(batch)
                if reason is None:
                    continue
            else:
                reason = "interrupted before submission"
            if await self._settled_on_chain(await self.store.batch_mandates(batch.batch_id)):
                await self.store.mark_batch_settled(batch.batch_id, "", 0)
                logger.info("batch %d: settled on chain by a transaction not recorded here", batch.batch_id)
                continue
            await self.store.fail_batch(batch.batch_id, reason, retry=True)
            logger.info("batch %d: %s; its mandates return to the queue", batch.batch_id, reason)

    async def _follow(self, batch: BatchRecord) -> str | None:
        """Take a submitted batch one step along its transaction: ``None`` once it settled
        or while it may still be mined, else why it never will be."""
        # mark_batch_submitted records the three together.
        tx = SignedTx(batch.tx_hash, batch.raw_tx, batch.tx_nonce)
        found = await self.client.lookup(tx)
        if found.status is TxStatus.DROPPED:
            # The node forgot it (restarted, evicted it, or never got it) but nothing used its
            # nonce: these signed bytes can still be mined (other nodes may hold them), so
            # the batch is not over. Broadcast and follow it as a fresh submission.
            logger.info("batch %d: node does not know %s; broadcasting it again", batch.batch_id, tx.hash)
            await self.client.broadcast(tx.raw)
            receipt = await self.client.wait(tx.hash)
            found = TxLookup(TxStatus.MINED, receipt) if receipt is not None else TxLookup(TxStatus.PENDING)
        if found.status is TxStatus.PENDING:
            logger.debug("batch %d: %s pending", batch.batch_id, tx.hash)
            return None
        if found.status is TxStatus.REPLACED:
            return f"{tx.hash} can never be mined: account nonce {tx.nonce} used by another transaction"
        if found.receipt["status"] != 1:
            return f"{tx.hash} reverted"
        await self.store.mark_batch_settled(batch.batch_id, tx.hash, int(found.receipt["blockNumber"]))
        logger.info("batch %d: settled on chain (%s)", batch.batch_id, tx.hash)
        return None

    async def _settled_on_chain(self, records: list[MandateRecord]) -> bool:
        last: dict[bytes, int] = {}
        for record in records:
            last[record.mandate.intent_id] = max(last.get(record.mandate.intent_id, -1), record.mandate.nonce)
        for intent_id, nonce in last.items():
            if (await self.client.intent(intent_id)).next_nonce <= nonce:
                return False
        return bool(last)

    # -- one round -----------------------------------------------------------------------

    async def due(self) -> bool:
        """Whether the policy says to cut a batch now."""
        accepted = await self.store.accepted_mandates()
        if not accepted:
            return False
        if len(accepted) >= self.policy.max_size:
            return True
        return time.time() - min(r.accepted_at for r in accepted) >= self.policy.max_age_seconds

    async def settle_once(self) -> BatchResult | None:
        """Plan, prove and settle one batch; ``None`` when nothing is ready to settle or a
        batch's transaction is still in flight."""
        await self.reconcile()
        if await self.store.open_batches():
            # One settlement transaction in flight at a time: planning reads intents and
            # escrow on chain, where the batch in flight has not taken effect yet.
            return None
        accepted = await self.store.accepted_mandates()
        if not accepted:
            return None
        intents: dict[bytes, SignedIntent] = {}
        states: dict[bytes, IntentState] = {}
        balances: dict[str, int] = {}
        blocked: set[bytes] = set()
        for record in accepted:
            intent_id = record.mandate.intent_id
            if intent_id in intents or intent_id in blocked:
                continue
            signed = await self.store.get_intent(intent_id)
            if signed is None:
                await self.store.fail_mandates([record.payment_id], "unknown_intent")
                continue
            state = await self._intent_state(signed, balances)
            if state is None:
                blocked.add(intent_id)
                continue
            intents[intent_id] = signed
            states[intent_id] = state
        pending = [
            PendingMandate(
                r.payment_id, r.mandate.intent_id, r.mandate.nonce, r.mandate.payee, r.mandate.amount,
                r.mandate.deadline, r.accepted_at,
            )
            for r in accepted
            if r.mandate.intent_id in states
        ]
        # The batch executes in a block stamped about now; the latest block may be older.
        now = max(await self.client.latest_timestamp(), int(time.time()) - 2)
        plan = plan_batch(pending, states, n=min(self.n, self.policy.max_size), i=self.i, p=self.p, now=now)
        failed = [(rejection.payment_id, rejection.reason) for rejection in plan.rejected]
        for reason in {reason for _, reason in failed}:
            await self.store.fail_mandates([pid for pid, r in failed if r == reason], reason)
        if not plan.intents:
            return None

        by_id = {record.payment_id: record for record in accepted}
        slots = [
            IntentSlot(intents[intent_id].intent, states[intent_id].next_nonce, tuple(by_id[m.payment_id] for m in chosen))
            for intent_id, chosen in plan.intents
        ]
        statement = build_statement(slots, time_ref=plan.time_ref, asset=self.asset, n=self.n, i=self.i, p=self.p)
        batch = await self.store.seal_batch([m.payment_id for m in plan.mandates], plan.time_ref)
        try:
            proof = await asyncio.to_thread(self.prover.prove, statement.inputs)
            if not self.prover.verify(proof):
                raise RuntimeError("proof does not verify in Python")
            on_chain_inputs = await self.client.public_inputs(statement.batch)
            if tuple(on_chain_inputs) != proof.public_inputs:
                raise RuntimeError("contract's public inputs differ from the proof's")
            # The signed transaction is recorded before the broadcast: after a crash,
            # reconcile() follows it.
            receipt = await self.client.settle_batch(
                proof.words, statement.batch, on_signed=functools.partial(self._record_submission, batch.batch_id)
            )
        except ChainRevert as exc:
            # Reverted in simulation or on chain: nothing settled; re-plan next round.
            await self.store.fail_batch(batch.batch_id, str(exc), retry=True)
            logger.warning("batch %d would revert (%s); its mandates return to the queue", batch.batch_id, exc)
            raise
        except BaseException:
            # Still 'proving': never sent, put it back. 'submitted' (including a transaction
            # with no receipt yet) stays for reconcile(), which asks the chain.
            await self._undo_if_not_sent(batch.batch_id)
            raise
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        await self.store.mark_batch_settled(batch.batch_id, tx_hash, int(receipt["blockNumber"]))
        result = BatchResult(
            batch.batch_id, tx_hash, statement.mandate_count, int(receipt["gasUsed"]), proof.seconds, failed
        )
        self.results.append(result)
        logger.info(
            "batch %d settled: %d mandates, %d gas, proof %.1f s, tx %s",
            result.batch_id, result.mandates, result.gas_used, result.prove_seconds, tx_hash,
        )
        return result

    async def _record_submission(self, batch_id: int, tx: SignedTx) -> None:
        await self.store.mark_batch_submitted(batch_id, tx.hash, tx.raw, tx.nonce)

    async def _undo_if_not_sent(self, batch_id: int) -> None:
        current = await self.store.get_batch(batch_id)
        if current.status == "proving":
            await self.store.fail_batch(batch_id, "processing interrupted before submission", retry=True)

    async def _intent_state(self, signed: SignedIntent, balances: dict[str, int]) -> IntentState | None:
        intent = signed.intent
        record = await self.client.intent(intent.intent_id)
        if not record.registered:
            try:
                await self.client.register_intent(signed)
            except ChainRevert as exc:
                logger.warning("intent 0x%s cannot be registered: %s", intent.intent_id.hex(), exc)
                return None
            record = await self.client.intent(intent.intent_id)
        if not await self.client.is_processor(intent.payer):
            logger.warning("payer %s has not authorised processor %s; waiting", intent.payer, self.client.address)
            return None
        if intent.payer not in balances:
            balances[intent.payer] = await self.client.balance_of(intent.payer, intent.asset)
        return IntentState(
            intent_id=intent.intent_id,
            payer=intent.payer,
            next_nonce=record.next_nonce,
            spent=record.spent,
            max_amount=record.max_amount,
            max_per_payment=record.max_per_payment,
            valid_after=record.valid_after,
            valid_before=record.valid_before,
            revoked=record.revoked,
            balance=balances[intent.payer],
        )

    # -- loop ----------------------------------------------------------------------------

    async def settle_all(self) -> list[BatchResult]:
        """Settle batches until no accepted mandate is left that could settle now."""
        results = []
        while True:
            result = await self.settle_once()
            if result is None:
                return results
            results.append(result)

    async def run(self, stop: asyncio.Event, *, poll_seconds: float = 1.0) -> None:
        """Reconcile every ``poll_seconds`` (first at start) and settle by the policy, until
        ``stop`` is set. Errors are logged and retried with backoff."""
        delay = poll_seconds
        while not stop.is_set():
            try:
                if await self.due():
                    await self.settle_once()  # reconciles first
                else:
                    await self.reconcile()
                delay = poll_seconds
            except TransactionPending as exc:
                # Not a failure: a batch's transaction stays submitted and the next round
                # follows it; an intent's registration is checked again when planning.
                logger.info("transaction %s has no receipt yet; it may still be mined", exc.args[0])
                delay = poll_seconds
            except Exception as exc:
                logger.warning("settlement round failed (%r); retrying in %.1f s", exc, delay)
                delay = min(delay * 2, 30.0)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
