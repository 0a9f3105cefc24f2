"""An x402 facilitator for the ``aep2`` scheme: deferred mandates, settled in batches by a processor.

Follows ``specs/x402-specification-v2.md`` §7 (``verify``, ``settle``, ``supported``) with the
``aep2`` payload of docs/PROTOCOL.md §4, for x402 v2 (CAIP-2 networks, ``amount``) and v1 (v1
network names or CAIP-2, ``maxAmountRequired``). Amounts are token base units, times unix
seconds.

An ``aep2`` payment is not moved on chain when it is settled: the facilitator runs next to a
settlement processor and shares its payment store (``aep2.store.PaymentStore``). ``settle``
*reserves* the mandate in that store, atomically (nonce unused, budget, per-payment cap,
escrow), as ``accepted``; the processor (``python -m settlement run``) proves and settles it
in its next batch. The answer is the receipt the gateway sends for a served ``aep2`` call:
``SettleResponse(success=True, transaction="", extra={"paymentId", "scheme": "aep2",
"status": "accepted"})``; the transaction follows with the batch (docs/PROTOCOL.md §7).

``verify`` checks, in this order, and answers the first failure as ``VerifyResponse(
is_valid=False, invalid_reason=<aep2.errors code>, invalid_message=<names the field>)``:

1. version, scheme (``aep2``), network (this deployment's chain), requirements this
   facilitator can settle (its asset, an address as ``payTo``, its Settlement contract and
   processor when ``extra`` names them) — ``invalid_x402_version``, ``unsupported_scheme``,
   ``invalid_network``, ``invalid_payment_requirements``;
2. the payload parses — ``invalid_payload``, ``intent_id_mismatch``;
3. the stateless checks of ``aep2.verification``: payee is ``payTo`` and amount the required
   amount; the intent (embedded, or known to the store) — EIP-712 domain, id, asset,
   processor, payer's signature; its window leaves ``min_deadline_seconds`` and its allowlist
   has ``payTo``; the session key's signature; the mandate's deadline; then the per-payment cap;
4. chain state, read fresh at one block from the Settlement contract: the intent not revoked
   (``intent_revoked``), the payer's consent to the processor current
   (``processor_not_authorized``), the nonce not settled (``nonce_used``);
5. the nonce not already reserved in the store (``nonce_used``; read only) and the payer's
   escrow with the processor, ``balance - pending withdrawal``, covering the amount
   (``insufficient_escrow``).

Not checked: the mandate's request binding (``requestHash``, docs/PROTOCOL.md §3). It binds
the mandate to one HTTP request, which only the resource server sees; a resource server
using this facilitator checks it itself (``aep2.verification.check_request``) before
calling ``verify``/``settle``.

``settle`` re-verifies (1–5), then reserves: the store's atomic check makes a mandate settle
once, so a second ``settle`` of it is refused with ``nonce_used``.

Neither method raises: a refused payment is a response, and an RPC or store failure is
``unexpected_verify_error`` / ``unexpected_settle_error``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3

from aep2.deployment import Deployment, contract_artifact
from aep2.errors import ErrorCode, PaymentError
from aep2.intent import SignedIntent
from aep2.mandate import nonce_window
from aep2.payload import ParsedPayload, accepted_receipt, parse_payload
from aep2.store import PaymentStore, Reservation
from aep2.verification import (
    Terms,
    check_consent,
    check_intent,
    check_mandate,
    check_per_payment_cap,
    check_price,
)
from aep2.x402.models import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)
from aep2.x402.networks import caip2, chain_id_of, v1_network

__all__ = ["AEP2Facilitator", "AEP2_SCHEME"]

logger = logging.getLogger("facilitator")

AEP2_SCHEME = "aep2"

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")

Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1


@dataclass(frozen=True)
class _ChainState:
    """What the Settlement contract says about one payment, read at ``block``: the intent's
    ``revokedAt`` (0: not revoked), the payer's escrow with the processor (base units) and
    consent to it, and the bitmap of the mandate's nonce window."""

    revoked_at: int
    balance: int
    pending_withdrawal: int
    consent_until: int
    settled_nonces: int
    block: int

    @property
    def available(self) -> int:
        """Escrow the processor can still debit: ``balance - pending_withdrawal``, at least 0."""
        return max(0, self.balance - self.pending_withdrawal)


@dataclass(frozen=True)
class _Verified:
    """A payment that passed checks 1–5: what ``settle`` reserves."""

    parsed: ParsedPayload
    signed: SignedIntent
    chain: _ChainState
    amount: int


class AEP2Facilitator:
    """Verifies ``aep2`` payments and reserves them for ``processor``'s next batch.

    ``deployment``: the Settlement deployment (chain id, contract, token; its ``rpc_url``
    unless ``rpc_url`` is given); ``store``: the processor's payment store, shared with it
    (opened on first use — ``open()`` is idempotent — and closed by ``aclose`` only with
    ``close_store``); ``processor``: the processor's address, which intents must name and
    payers must have consented to; ``min_deadline_seconds``: the shortest time (seconds) an
    intent's ``validBefore`` and a mandate's ``deadline`` may leave the processor to settle.
    ``rpc_timeout`` bounds each chain read (seconds). Satisfies
    ``aep2.x402.facilitator.Facilitator``; ``scheme`` names the one scheme it serves.
    """

    scheme = AEP2_SCHEME

    def __init__(
        self,
        deployment: Deployment,
        store: PaymentStore,
        processor: str,
        *,
        min_deadline_seconds: int = 300,
        rpc_url: str | None = None,
        rpc_timeout: float = 10.0,
        close_store: bool = False,
    ) -> None:
        self.deployment = deployment
        self.store = store
        self.processor = to_checksum_address(processor)
        self.terms = Terms(
            deployment.chain_id, deployment.settlement, deployment.token, self.processor, min_deadline_seconds
        )
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url or deployment.rpc_url, request_kwargs={"timeout": rpc_timeout}))
        self.settlement = self.w3.eth.contract(
            address=deployment.settlement, abi=contract_artifact("Settlement")["abi"], decode_tuples=True
        )
        self._close_store = close_store
        self._store_open = False
        self._store_lock = asyncio.Lock()
        # intent id -> verified signed intent: an intent's checks never change their answer.
        self._intents: dict[bytes, SignedIntent] = {}

    async def aclose(self) -> None:
        """Close the RPC session, and the store when this facilitator owns it (``close_store``)."""
        try:
            await self.w3.provider.disconnect()
        finally:
            if self._close_store:
                await self.store.close()

    # ------------------------------------------------------------------ x402 §7

    async def supported(self) -> SupportedResponse:
        """``aep2`` on the deployment's chain in v2 (CAIP-2) and v1 (its v1 name, else CAIP-2),
        ``extra`` as in the ``aep2`` ``accepts`` entry (``settlement``, ``processor``,
        ``minDeadlineSeconds``), and the processor as the chain's signer: it is the account
        that sends the settlement transactions. Reads nothing from the chain."""
        chain_id = self.terms.chain_id
        extra = {
            "settlement": self.terms.settlement,
            "processor": self.processor,
            "minDeadlineSeconds": self.terms.min_deadline_seconds,
        }
        return SupportedResponse(
            kinds=[
                SupportedKind(x402_version=2, scheme=AEP2_SCHEME, network=caip2(chain_id), extra=extra),
                SupportedKind(x402_version=1, scheme=AEP2_SCHEME, network=v1_network(chain_id), extra=extra),
            ],
            extensions=[],
            signers={caip2(chain_id): [self.processor]},
        )

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        """Checks 1–5 of the module docstring (not the request binding); reserves nothing."""
        try:
            verified = await self._verify(payload, requirements, time.time())
        except PaymentError as refused:
            return VerifyResponse(
                is_valid=False,
                invalid_reason=refused.code,
                invalid_message=refused.reason,
                payer=self._payer_hint(payload),
            )
        except Exception as exc:
            logger.warning("aep2 verify failed on a chain or store read: %r", exc)
            return VerifyResponse(
                is_valid=False,
                invalid_reason=ErrorCode.UNEXPECTED_VERIFY_ERROR,
                invalid_message=f"{type(exc).__name__}: {exc}",
                payer=self._payer_hint(payload),
            )
        return VerifyResponse(is_valid=True, payer=verified.signed.intent.payer)

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        """Re-verify, then reserve the mandate in the processor's store as ``accepted``.

        Success is ``transaction=""`` with ``extra={"paymentId", "scheme": "aep2", "status":
        "accepted"}``: the processor settles it in a later batch. A refusal carries the code
        of the failed check or of the store's reservation (``nonce_used``, ``budget_exceeded``,
        ``per_payment_cap_exceeded``, ``insufficient_escrow``).
        """
        network = requirements.network
        now = time.time()
        try:
            verified = await self._verify(payload, requirements, now)
            payment_id = await self._reserve(verified, now)
        except PaymentError as refused:
            return SettleResponse(
                success=False,
                error_reason=refused.code,
                error_message=refused.reason,
                payer=self._payer_hint(payload),
                network=network,
            )
        except Exception as exc:
            logger.warning("aep2 settle failed on a chain or store call: %r", exc)
            return SettleResponse(
                success=False,
                error_reason=ErrorCode.UNEXPECTED_SETTLE_ERROR,
                error_message=f"{type(exc).__name__}: {exc}",
                payer=self._payer_hint(payload),
                network=network,
            )
        return accepted_receipt(payment_id, verified.signed.intent.payer, verified.amount, network)

    # ------------------------------------------------------------------ checks

    async def _verify(self, payload: Payload, requirements: Requirements, now: float) -> _Verified:
        """Checks 1–5; raises the first failure's ``PaymentError``."""
        pay_to, amount = self._requirements(payload, requirements)
        parsed = parse_payload(payload.payload)
        mandate = parsed.mandate
        check_price(mandate, payee=pay_to, amount=amount)
        signed = await self._intent(parsed)
        intent = signed.intent
        check_mandate(
            mandate,
            parsed.signature,
            intent,
            payee=pay_to,
            now=now,
            min_deadline_seconds=self.terms.min_deadline_seconds,
        )
        check_per_payment_cap(intent, mandate)

        chain = await self._chain_state(parsed, signed)
        if chain.revoked_at:
            raise PaymentError(ErrorCode.INTENT_REVOKED, f"intentId: revoked on chain at {chain.revoked_at}")
        check_consent(intent.payer, self.processor, chain.consent_until)
        _, bit = nonce_window(mandate.nonce)
        if chain.settled_nonces >> bit & 1:
            raise PaymentError(ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already settled on chain")
        await self._open_store()
        if await self.store.get_mandate(mandate.payment_id) is not None:
            raise PaymentError(
                ErrorCode.NONCE_USED, f"mandate.nonce: {mandate.nonce} already accepted by processor {self.processor}"
            )
        if chain.available < mandate.amount:
            raise self._escrow_refusal(f"mandate.amount: {mandate.amount} > escrow {chain.available}", chain)
        return _Verified(parsed, signed, chain, amount)

    def _requirements(self, payload: Payload, requirements: Requirements) -> tuple[str, int]:
        """Check 1: ``(payTo checksummed, amount in base units)``."""
        if isinstance(payload, PaymentPayload):
            if not isinstance(requirements, PaymentRequirements):
                raise PaymentError(
                    ErrorCode.UNSUPPORTED_VERSION, "paymentRequirements: v1 requirements for a v2 payment"
                )
            scheme, network, amount = payload.accepted.scheme, payload.accepted.network, requirements.amount
            field = "paymentPayload.accepted"
        else:
            if not isinstance(requirements, PaymentRequirementsV1):
                raise PaymentError(
                    ErrorCode.UNSUPPORTED_VERSION, "paymentRequirements: v2 requirements for a v1 payment"
                )
            scheme, network, amount = payload.scheme, payload.network, requirements.max_amount_required
            field = "paymentPayload"
        if requirements.scheme != AEP2_SCHEME:
            raise PaymentError(
                ErrorCode.UNSUPPORTED_SCHEME, f"paymentRequirements.scheme: {requirements.scheme!r} is not 'aep2'"
            )
        if scheme != AEP2_SCHEME:
            raise PaymentError(ErrorCode.UNSUPPORTED_SCHEME, f"{field}.scheme: {scheme!r} is not 'aep2'")
        chain_id = self.terms.chain_id
        for where, name in (("paymentRequirements", requirements.network), (field, network)):
            try:
                named = chain_id_of(name)
            except ValueError as exc:
                raise PaymentError(ErrorCode.NETWORK_MISMATCH, f"{where}.{exc}") from None
            if named != chain_id:
                raise PaymentError(
                    ErrorCode.NETWORK_MISMATCH,
                    f"{where}.network: {name!r} is not this facilitator's chain {caip2(chain_id)}",
                )
        # v2 names networks by CAIP-2 only; v1 payers may use either name (docs/PROTOCOL.md §4).
        if isinstance(payload, PaymentPayload) and network != requirements.network:
            raise PaymentError(
                ErrorCode.NETWORK_MISMATCH, f"{field}.network: {network!r} is not {requirements.network!r} as required"
            )
        for name, value in (("asset", requirements.asset), ("payTo", requirements.pay_to)):
            if not _ADDRESS.fullmatch(value):
                raise PaymentError(
                    ErrorCode.INVALID_PAYMENT_REQUIREMENTS, f"paymentRequirements.{name}: {value!r} is not an address"
                )
        if to_checksum_address(requirements.asset) != self.terms.asset:
            raise PaymentError(
                ErrorCode.INVALID_PAYMENT_REQUIREMENTS,
                f"paymentRequirements.asset: {requirements.asset} is not {self.terms.asset}, the asset this "
                "facilitator's processor settles",
            )
        extra = requirements.extra or {}
        for name, ours in (("settlement", self.terms.settlement), ("processor", self.processor)):
            named = extra.get(name)
            if named is not None and (not isinstance(named, str) or named.lower() != ours.lower()):
                raise PaymentError(
                    ErrorCode.INVALID_PAYMENT_REQUIREMENTS,
                    f"paymentRequirements.extra.{name}: {named!r} is not this facilitator's {ours}",
                )
        return to_checksum_address(requirements.pay_to), int(amount)

    async def _intent(self, parsed: ParsedPayload) -> SignedIntent:
        """The payment's signed intent, checked (``check_intent``): embedded in the payload or,
        when the payer left it out after first use, the one the store saved."""
        known = self._intents.get(parsed.intent_id)
        if known is not None:
            return known
        signed = parsed.signed_intent
        if signed is None:
            await self._open_store()
            signed = await self.store.get_intent(parsed.intent_id)
        if signed is None:
            raise PaymentError(ErrorCode.UNKNOWN_INTENT, "payload.intent: required on first use of this intent")
        check_intent(signed, parsed.intent_id, self.terms)
        self._intents[parsed.intent_id] = signed
        return signed

    async def _chain_state(self, parsed: ParsedPayload, signed: SignedIntent) -> _ChainState:
        """Check 4's and 5's reads, all at the latest block so they agree with each other.

        Read on every call, not cached: a facilitator is asked once per payment, and a stale
        revocation or escrow would let the processor accept what it cannot settle."""
        intent = signed.intent
        window, _ = nonce_window(parsed.mandate.nonce)
        block = await self.w3.eth.block_number
        functions = self.settlement.functions
        record, balance, withdrawal, consent, settled = await asyncio.gather(
            functions.getIntent(parsed.intent_id).call(block_identifier=block),
            functions.balanceOf(intent.payer, intent.asset, self.processor).call(block_identifier=block),
            functions.pendingWithdrawal(intent.payer, intent.asset, self.processor).call(block_identifier=block),
            functions.processorConsentUntil(intent.payer, self.processor).call(block_identifier=block),
            functions.settledNonces(parsed.intent_id, window).call(block_identifier=block),
        )
        return _ChainState(
            revoked_at=int(record.revokedAt),
            balance=int(balance),
            pending_withdrawal=int(withdrawal.amount),
            consent_until=int(consent),
            settled_nonces=int(settled),
            block=int(block),
        )

    # ------------------------------------------------------------------ reservation

    async def _reserve(self, verified: _Verified, now: float) -> str:
        """The store's atomic reservation of a verified mandate; its payment id.

        The intent is saved first: the processor reads it from the store to settle, and the
        store reserves only mandates of intents it knows."""
        parsed, intent = verified.parsed, verified.signed.intent
        await self.store.save_intent(verified.signed)
        limits = Reservation(intent.max_amount, intent.max_per_payment, verified.chain.available, verified.chain.block)
        try:
            return await self.store.reserve(parsed.mandate, parsed.signature, intent.payer, intent.asset, limits, now)
        except PaymentError as exc:
            if exc.code != ErrorCode.INSUFFICIENT_ESCROW:
                raise
            raise self._escrow_refusal(exc.reason, verified.chain) from None

    def _escrow_refusal(self, reason: str, chain: _ChainState) -> PaymentError:
        """``insufficient_escrow`` naming the processor whose escrow account counts (funds the
        payer holds with another processor do not) and a pending withdrawal that reduced it."""
        reason += f" (escrow with processor {self.processor}"
        if chain.pending_withdrawal:
            reason += f": balance {chain.balance} - pending withdrawal {chain.pending_withdrawal}"
        return PaymentError(ErrorCode.INSUFFICIENT_ESCROW, reason + ")")

    async def _open_store(self) -> None:
        # Locked: concurrent first requests must not each open a connection.
        async with self._store_lock:
            if not self._store_open:
                await self.store.open()
                self._store_open = True

    def _payer_hint(self, payload: Payload) -> str | None:
        """The payer of a refused payment, when known: its embedded intent's, or that of an
        intent verified before under its ``intentId``."""
        data = payload.payload
        intent = data.get("intent")
        payer = intent.get("payer") if isinstance(intent, dict) else None
        if isinstance(payer, str) and _ADDRESS.fullmatch(payer):
            return to_checksum_address(payer)
        intent_id = data.get("intentId")
        if isinstance(intent_id, str) and _HEX32.fullmatch(intent_id):
            known = self._intents.get(bytes.fromhex(intent_id[2:]))
            return known.intent.payer if known is not None else None
        return None
