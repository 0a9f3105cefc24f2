"""The settlement processor: accepted mandates → batches → one Groth16 proof → one transaction.

Each round (``settle_once``) first reconciles, then runs four steps:

1. ``load_intents``: read the on-chain state of every intent with accepted mandates
   (registering intents not yet on chain), the payer's escrow and consent, and the settled
   nonce bitmaps of the windows in play;
2. ``plan``: ``batcher.plan_batch`` picks the batch; mandates that can never settle are
   marked ``failed`` with a reason, the rest wait; the batch is sealed in the store;
3. ``prove``: build the witness, prove, verify in Python and cross-check the public inputs
   with the contract's own;
4. ``submit``: simulate, record the signed transaction, send, and mark the batch settled once
   the receipt succeeds. If the simulation reverts, ``isolate`` dry-runs each intent slot
   alone: the slots the contract refuses for their own reason are failed with it, the rest
   go back to the queue, so one bad intent never stalls the others.

Provers: ``provers`` is a ``settlement.provers.ProverPool`` (or one loaded ``Prover``).
``settle_all`` and ``run`` keep up to ``provers.size`` sealed batches proving at once and
submit them one at a time in seal order. A batch is planned against the chain's state as if
every batch still in flight settles: their totals count against each intent's budget and the
payer's escrow, so two batches in flight never overspend together. Nonces are one-time bits
(docs/PROTOCOL.md §3) and a mandate is in one batch at most, so they never collide. A mandate
found short of budget or escrow while its intent or payer has a batch in flight waits instead
of failing: the batch ahead may still fail and give its share back.

Crash safety: the store records each step before the next starts (the signed transaction
before it is broadcast), and the chain is the truth. ``reconcile()`` runs at the start of
every round, due or not: a submitted batch stays submitted while its transaction may still
be mined (broadcast again if the node forgot it) and ends only with its receipt, or with
its account nonce used by another transaction; a batch never submitted is put back
(``retry``). So nothing is lost or settled twice, and the store never contradicts the chain.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from aep2.intent import SignedIntent
from aep2.mandate import nonce_window
from aep2.store import BatchRecord, MandateRecord, PaymentStore

from .batcher import IntentState, PendingMandate, plan_batch
from .chain import ChainRevert, SettlementClient, SignedTx, TransactionPending, TxLookup, TxStatus
from .prover import Proof, Prover
from .provers import InProcessProverPool, ProverPool
from .witness import BatchStatement, IntentSlot, build_statement

__all__ = ["BatchPolicy", "BatchResult", "SettlementProcessor", "SLOT_REVERTS"]

#: Contract errors that a single intent slot causes on its own, and the reason its mandates
#: fail with: no later batch could settle them either.
SLOT_REVERTS = {
    "Settlement__UnknownIntent": "unknown_intent",
    "Settlement__IntentRevoked": "intent_revoked",
    "Settlement__AssetMismatch": "asset_mismatch",
    "Settlement__IntentExpired": "mandate_expired",
    "Settlement__UnauthorizedProcessor": "processor_not_authorized",
    "Settlement__NonceAlreadySettled": "nonce_already_settled",
    "Settlement__NonceOutOfRange": "invalid_nonce",
    "Settlement__AmountOutOfRange": "invalid_amount",
    "Settlement__IntentBudgetExceeded": "budget_exceeded",
    "Settlement__InsufficientBalance": "insufficient_escrow",
}

logger = logging.getLogger("settlement")


@dataclass(frozen=True)
class BatchPolicy:
    """When to cut a batch: ``max_size`` mandates (at most the circuit's N) or when the
    oldest accepted mandate is ``max_age_seconds`` old."""

    max_size: int
    max_age_seconds: float = 30.0


#: Rejections that a batch still in flight may turn around (it fails and returns its share).
_SHORTFALLS = frozenset({"budget_exceeded", "insufficient_escrow"})


@dataclass
class _InFlight:
    """A sealed batch being proven, with what it takes from each intent and payer."""

    batch: BatchRecord
    statement: BatchStatement
    failed: list[tuple[str, str]]
    spent: dict[bytes, int]
    debited: dict[str, int]
    proof: asyncio.Task[Proof]


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
    """Settles the accepted mandates of ``store`` through ``client`` with the circuit of ``provers``.

    ``provers`` is a ``ProverPool`` or a ``Prover`` with its key loaded (proving in a thread,
    one batch at a time).
    """

    def __init__(
        self,
        store: PaymentStore,
        client: SettlementClient,
        provers: ProverPool | Prover,
        asset: str,
        *,
        policy: BatchPolicy | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.provers: ProverPool = InProcessProverPool(provers) if isinstance(provers, Prover) else provers
        self.asset = asset
        shape = self.provers.artifacts
        self.n, self.i, self.p = shape.n, shape.i, shape.p
        self.policy = policy or BatchPolicy(max_size=self.n)
        self.results: list[BatchResult] = []
        self._window: int | None = None
        self._in_flight: collections.deque[_InFlight] = collections.deque()

    # -- crash recovery ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring every batch left ``proving`` or ``submitted`` in line with the chain.

        A submitted batch is settled by its transaction's successful receipt; it is put back
        in the queue (``retry``) when that transaction reverted or can never be mined (its
        account nonce went to another transaction); otherwise it stays submitted, broadcast
        again if the node forgot it. A batch never submitted is put back. Before a batch is
        put back, the nonce bitmaps on chain are checked: if they show its mandates
        settled (by a transaction not recorded here), it is marked settled instead.
        """
        in_flight = {entry.batch.batch_id for entry in self._in_flight}
        for batch in await self.store.open_batches():
            if batch.batch_id in in_flight:
                continue  # proving here, right now
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
        await self.store.mark_batch_settled(batch.batch_id, tx.hash, int(found.receipt["blockNumber"]),
                                            gas_used=int(found.receipt["gasUsed"]))
        logger.info("batch %d: settled on chain (%s)", batch.batch_id, tx.hash)
        return None

    async def _settled_on_chain(self, records: list[MandateRecord]) -> bool:
        """Whether every mandate's nonce bit is set on chain (settled by some transaction)."""
        if not records:
            return False
        bitmaps: dict[tuple[bytes, int], int] = {}
        for record in records:
            window, bit = nonce_window(record.mandate.nonce)
            key = (record.mandate.intent_id, window)
            if key not in bitmaps:
                bitmaps[key] = await self.client.settled_nonces(*key)
            if not bitmaps[key] >> bit & 1:
                return False
        return True

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
        batch's transaction is still in flight.

        Raises ``ChainRevert`` when the batch would revert for a reason common to all its
        slots (its mandates return to the queue), and what the prover or the RPC raises.
        """
        await self.reconcile()
        if not await self._launch():
            return None
        return await self._finish()

    async def _launch(self) -> bool:
        """Plan and seal the next batch and start proving it; whether one was started.

        Nothing starts while a batch left by an earlier run is still open (its transaction
        may be in flight, and the chain's state does not show it yet).
        """
        in_flight = {entry.batch.batch_id for entry in self._in_flight}
        if any(batch.batch_id not in in_flight for batch in await self.store.open_batches()):
            return False
        accepted = await self.store.accepted_mandates()
        if not accepted:
            return False
        intents, states = await self.load_intents(accepted)
        planned = await self.plan(accepted, intents, self._after_in_flight(states))
        if planned is None:
            return False
        batch, statement, failed = planned
        spent: dict[bytes, int] = collections.defaultdict(int)
        debited: dict[str, int] = collections.defaultdict(int)
        for intent_id, _window, _nonces, total in statement.batch[2]:
            spent[intent_id] += total
            debited[intents[intent_id].intent.payer] += total
        proof = asyncio.create_task(self.prove(batch.batch_id, statement), name=f"prove batch {batch.batch_id}")
        self._in_flight.append(_InFlight(batch, statement, failed, dict(spent), dict(debited), proof))
        return True

    async def _finish(self) -> BatchResult | None:
        """Wait for the oldest batch in flight to be proven, then submit it (seal order)."""
        entry = self._in_flight[0]
        try:
            proof = await entry.proof
            receipt = await self.submit(entry.batch.batch_id, entry.statement, proof)
        finally:
            self._in_flight.popleft()
        if receipt is None:
            return None
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        result = BatchResult(
            entry.batch.batch_id, tx_hash, entry.statement.mandate_count, int(receipt["gasUsed"]), proof.seconds,
            entry.failed,
        )
        self.results.append(result)
        logger.info(
            "batch %d settled: %d mandates, %d gas, proof %.1f s, tx %s",
            result.batch_id, result.mandates, result.gas_used, result.prove_seconds, tx_hash,
        )
        return result

    def _after_in_flight(self, states: dict[bytes, IntentState]) -> dict[bytes, IntentState]:
        """``states`` as they will be once every batch in flight has settled."""
        if not self._in_flight:
            return states
        spent: dict[bytes, int] = collections.defaultdict(int)
        debited: dict[str, int] = collections.defaultdict(int)
        for entry in self._in_flight:
            for intent_id, amount in entry.spent.items():
                spent[intent_id] += amount
            for payer, amount in entry.debited.items():
                debited[payer] += amount
        return {
            intent_id: replace(state, spent=state.spent + spent[intent_id], balance=state.balance - debited[state.payer])
            for intent_id, state in states.items()
        }

    async def load_intents(
        self, accepted: list[MandateRecord]
    ) -> tuple[dict[bytes, SignedIntent], dict[bytes, IntentState]]:
        """Signed intents and on-chain states of the intents with accepted mandates.

        Intents not yet on chain are registered. A mandate of an intent the store does not
        know is failed (``unknown_intent``); an intent that cannot be registered or whose
        payer has not (yet) consented to this processor is left out (its mandates wait).
        """
        windows: dict[bytes, set[int]] = {}
        for record in accepted:
            windows.setdefault(record.mandate.intent_id, set()).add(nonce_window(record.mandate.nonce)[0])
        intents: dict[bytes, SignedIntent] = {}
        states: dict[bytes, IntentState] = {}
        balances: dict[str, int] = {}
        for intent_id, intent_windows in windows.items():
            signed = await self.store.get_intent(intent_id)
            if signed is None:
                await self.store.fail_mandates(
                    [r.payment_id for r in accepted if r.mandate.intent_id == intent_id], "unknown_intent"
                )
                continue
            state = await self._intent_state(signed, intent_windows, balances)
            if state is not None:
                intents[intent_id] = signed
                states[intent_id] = state
        return intents, states

    async def plan(
        self, accepted: list[MandateRecord], intents: dict[bytes, SignedIntent], states: dict[bytes, IntentState]
    ) -> tuple[BatchRecord, BatchStatement, list[tuple[str, str]]] | None:
        """Plan the next batch, fail what can never settle, and seal the batch in the store.

        Returns the sealed batch, its statement and the failed ``(payment id, reason)``s, or
        ``None`` when nothing can settle now.
        """
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
        plan = plan_batch(
            pending, states, n=min(self.n, self.policy.max_size), i=self.i, p=self.p, now=now,
            settlement_window=await self._settlement_window(),
        )
        busy_intents = {intent_id for entry in self._in_flight for intent_id in entry.spent}
        busy_payers = {payer for entry in self._in_flight for payer in entry.debited}
        by_payment = {m.payment_id: m for m in pending}
        failed = [
            (rejection.payment_id, rejection.reason)
            for rejection in plan.rejected
            if rejection.reason not in _SHORTFALLS
            or (
                by_payment[rejection.payment_id].intent_id not in busy_intents
                and states[by_payment[rejection.payment_id].intent_id].payer not in busy_payers
            )
        ]
        for reason in {reason for _, reason in failed}:
            await self.store.fail_mandates([pid for pid, r in failed if r == reason], reason)
        if not plan.slots:
            return None
        by_id = {record.payment_id: record for record in accepted}
        slots = [
            IntentSlot(intents[intent_id].intent, window, tuple(by_id[m.payment_id] for m in chosen))
            for intent_id, window, chosen in plan.slots
        ]
        statement = build_statement(slots, time_ref=plan.time_ref, asset=self.asset, n=self.n, i=self.i, p=self.p)
        batch = await self.store.seal_batch([m.payment_id for m in plan.mandates], plan.time_ref)
        return batch, statement, failed

    async def prove(self, batch_id: int, statement: BatchStatement) -> Proof:
        """Prove the sealed batch and cross-check it; an error puts its mandates back in the queue."""
        try:
            proof = await self.provers.prove(statement.inputs)
            if not self.provers.verify(proof):
                raise RuntimeError("proof does not verify in Python")
            on_chain_inputs = await self.client.public_inputs(statement.batch)
            if tuple(on_chain_inputs) != proof.public_inputs:
                raise RuntimeError("contract's public inputs differ from the proof's")
        except BaseException:
            await self._undo_if_not_sent(batch_id)
            raise
        return proof

    async def submit(self, batch_id: int, statement: BatchStatement, proof: Proof) -> dict[str, Any] | None:
        """Send ``settleBatch`` and mark the batch settled; returns the receipt.

        A simulated revert caused by some slots only fails those slots' mandates with the
        contract's reason and returns ``None`` (the others are re-planned next round).
        """
        try:
            # The signed transaction is recorded before the broadcast: after a crash,
            # reconcile() follows it.
            receipt = await self.client.settle_batch(
                proof.words, statement.batch,
                on_signed=functools.partial(self._record_submission, batch_id, prove_seconds=proof.seconds),
            )
        except ChainRevert as exc:
            if await self.isolate(batch_id, statement):
                return None
            # Nothing settled and no slot is to blame: re-plan next round.
            await self.store.fail_batch(batch_id, str(exc), retry=True)
            logger.warning("batch %d would revert (%s); its mandates return to the queue", batch_id, exc)
            raise
        except BaseException:
            # Still 'proving': never sent, put it back. 'submitted' (including a transaction
            # with no receipt yet) stays for reconcile(), which asks the chain.
            await self._undo_if_not_sent(batch_id)
            raise
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        await self.store.mark_batch_settled(
            batch_id, tx_hash, int(receipt["blockNumber"]), gas_used=int(receipt["gasUsed"])
        )
        return receipt

    async def isolate(self, batch_id: int, statement: BatchStatement) -> bool:
        """Dry-run each intent slot of a reverting batch alone; fail the slots the contract
        refuses for a reason of their own and return the batch's mandates otherwise.

        Returns whether any slot was to blame (the batch is then closed: its other mandates
        are back in the queue).
        """
        records = await self.store.batch_mandates(batch_id)
        blamed: dict[str, str] = {}
        for slot in statement.batch[2]:
            intent_id, window = slot[0], slot[1]
            mine = [r for r in records if r.mandate.intent_id == intent_id and nonce_window(r.mandate.nonce)[0] == window]
            payouts: dict[str, int] = {}
            for record in mine:
                payouts[record.mandate.payee_checksum] = payouts.get(record.mandate.payee_checksum, 0) + record.mandate.amount
            alone = (statement.batch[0], statement.batch[1], [slot], [list(item) for item in payouts.items()])
            error = await self.client.dry_run_settle(alone)
            reason = SLOT_REVERTS.get(error or "")
            if reason is not None:
                for record in mine:
                    blamed[record.payment_id] = reason
        if not blamed:
            return False
        await self.store.fail_batch(batch_id, "isolated: " + ", ".join(sorted(set(blamed.values()))), retry=True)
        for reason in set(blamed.values()):
            await self.store.fail_mandates([pid for pid, r in blamed.items() if r == reason], reason)
        logger.warning("batch %d: %d mandates can never settle (%s); the rest return to the queue",
                       batch_id, len(blamed), ", ".join(sorted(set(blamed.values()))))
        return True

    async def _record_submission(self, batch_id: int, tx: SignedTx, *, prove_seconds: float) -> None:
        await self.store.mark_batch_submitted(batch_id, tx.hash, tx.raw, tx.nonce, prove_seconds=prove_seconds)

    async def _undo_if_not_sent(self, batch_id: int) -> None:
        current = await self.store.get_batch(batch_id)
        if current.status == "proving":
            await self.store.fail_batch(batch_id, "processing interrupted before submission", retry=True)

    async def _settlement_window(self) -> int:
        if self._window is None:
            self._window = await self.client.settlement_window()
        return self._window

    async def _intent_state(
        self, signed: SignedIntent, windows: set[int], balances: dict[str, int]
    ) -> IntentState | None:
        intent = signed.intent
        record = await self.client.intent(intent.intent_id)
        if not record.registered:
            try:
                await self.client.register_intent(signed)
            except ChainRevert as exc:
                logger.warning("intent 0x%s cannot be registered: %s", intent.intent_id.hex(), exc)
                return None
            record = await self.client.intent(intent.intent_id)
        consent_until = await self.client.consent_until(intent.payer)
        if consent_until == 0:
            logger.warning("payer %s has not authorised processor %s; waiting", intent.payer, self.client.address)
            return None
        window = await self._settlement_window()
        closes = [(until, reason) for until, reason in (
            (record.settleable_until(window), "intent_revoked"),
            (None if consent_until == 2**64 - 1 else consent_until, "processor_not_authorized"),
        ) if until is not None]
        settleable_until, closed_reason = min(closes) if closes else (None, "intent_revoked")
        if intent.payer not in balances:
            balances[intent.payer] = await self.client.balance_of(intent.payer, intent.asset)
        return IntentState(
            intent_id=intent.intent_id,
            payer=intent.payer,
            spent=record.spent,
            max_amount=record.max_amount,
            max_per_payment=record.max_per_payment,
            valid_after=record.valid_after,
            valid_before=record.valid_before,
            balance=balances[intent.payer],
            settleable_until=settleable_until,
            closed_reason=closed_reason,
            settled={w: await self.client.settled_nonces(intent.intent_id, w) for w in windows},
        )

    # -- loop ----------------------------------------------------------------------------

    async def settle_all(self) -> list[BatchResult]:
        """Settle batches until no accepted mandate is left that could settle now, proving
        up to ``provers.size`` of them at once.

        Raises what ``settle_once`` raises; batches still proving are then abandoned to the
        next round's ``reconcile`` (their mandates return to the queue).
        """
        await self.provers.start()
        await self.reconcile()
        results = []
        try:
            while True:
                while len(self._in_flight) < self.provers.size and await self._launch():
                    pass
                if not self._in_flight:
                    return results
                result = await self._finish()
                if result is not None:
                    results.append(result)
        finally:
            await self._abandon()

    async def _abandon(self) -> None:
        """Stop proving the batches in flight and put their mandates back in the queue."""
        while self._in_flight:
            entry = self._in_flight.popleft()
            entry.proof.cancel()
            await asyncio.gather(entry.proof, return_exceptions=True)
            await self._undo_if_not_sent(entry.batch.batch_id)

    async def run(self, stop: asyncio.Event, *, poll_seconds: float = 1.0, drain: bool = False) -> None:
        """Reconcile every ``poll_seconds`` (first at start) and settle by the policy until
        ``stop`` is set, proving up to ``provers.size`` batches at once. Errors are logged
        and retried with backoff. Batches still proving at the stop are finished and
        submitted with ``drain``, else they return to the queue (as after a crash)."""
        await self.provers.start()
        try:
            await self._run(stop, poll_seconds)
            while drain and self._in_flight:
                try:
                    await self._finish()
                except Exception as exc:  # its mandates are back in the queue or submitted
                    logger.warning("batch in flight at the stop not settled (%r)", exc)
        finally:
            await self._abandon()

    async def _run(self, stop: asyncio.Event, poll_seconds: float) -> None:
        delay = poll_seconds
        while not stop.is_set():
            try:
                await self.reconcile()
                while len(self._in_flight) < self.provers.size and await self.due() and await self._launch():
                    pass
                if self._in_flight and self._in_flight[0].proof.done():
                    await self._finish()
                    continue  # the next one may be proven too, or a prover is free
                delay = poll_seconds
            except TransactionPending as exc:
                # Not a failure: a batch's transaction stays submitted and the next round
                # follows it; an intent's registration is checked again when planning.
                logger.info("transaction %s has no receipt yet; it may still be mined", exc.args[0])
                delay = poll_seconds
            except Exception as exc:
                logger.warning("settlement round failed (%r); retrying in %.1f s", exc, delay)
                delay = min(delay * 2, 30.0)
            stopped = asyncio.ensure_future(stop.wait())
            waits: set[asyncio.Future[Any]] = {stopped}
            if self._in_flight:
                waits.add(self._in_flight[0].proof)
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
