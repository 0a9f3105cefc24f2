"""An x402 facilitator for the ``exact`` scheme on one EVM chain: EIP-3009 ``transferWithAuthorization``.

Follows ``specs/x402-specification-v2.md`` §7 (``verify``, ``settle``, ``supported``) and
``specs/schemes/exact/scheme_exact_evm.md`` (the ``eip3009`` asset transfer method), for x402
v2 (``PaymentPayload`` + ``PaymentRequirements``, CAIP-2 networks, ``amount``) and v1
(``PaymentPayloadV1`` + ``PaymentRequirementsV1``, v1 network names, ``maxAmountRequired``).

Units: amounts are token base units (decimal strings on the wire), ``validAfter`` and
``validBefore`` unix seconds, gas is paid in wei by the facilitator's own account.

``verify`` runs the spec's checks in this order and answers the first failure as
``VerifyResponse(is_valid=False, invalid_reason=<§9 code>, invalid_message=<names the field>)``:

1. version, scheme (``exact``), network (this chain; the payment's network equals the
   requirements') — ``invalid_x402_version``, ``unsupported_scheme``, ``invalid_network``;
2. the payload is an EIP-3009 ``ExactEvmPayload`` — ``invalid_payload``;
3. ``authorization.to == payTo``, ``value == amount``, ``validAfter < now < validBefore - margin``;
4. ``extra.name``/``extra.version`` equal the token's EIP-5267 ``eip712Domain()``;
5. the signature is ``from``'s: ECDSA over the EIP-712 digest, or ERC-1271 when ``from`` is a
   contract;
6. ``authorizationState(from, nonce)`` is unused (a cancelled authorization is used too);
7. ``balanceOf(from) >= value``, read fresh;
8. an ``eth_call`` of ``transferWithAuthorization`` from the facilitator's address succeeds.

``settle`` re-verifies, sends the transaction and answers once it is mined. It is idempotent
without local state: for an authorization already used on chain it finds the transaction that
used it (the token's ``AuthorizationUsed(from, nonce)`` log) and, when that transaction moved
exactly ``value`` from ``from`` to ``to``, answers success with that transaction's hash.

Chain access is web3.py's ``AsyncWeb3`` without middleware (the default validation middleware
re-reads ``eth_chainId`` on every call) over one keep-alive ``aiohttp`` session per event loop
(web3.py's default session opens a connection per request). Round trips: ``verify`` reads
checks 6–8 in one JSON-RPC batch (the token's domain is read once per token); ``settle``
re-reads them, with the gas price and the sender's pending nonce, in another, then sends the
signed transaction and polls its receipt. The simulation in ``settle`` runs within the exact gas
limit the transaction will carry (a cached multiple of one estimate per token), so what was
simulated is what is sent.

Neither method raises: a refused payment is a response, and an RPC failure is
``unexpected_verify_error`` / ``unexpected_settle_error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientConnectionError, ClientSession, ClientTimeout
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import Signature
from eth_utils import keccak
from eth_utils import to_checksum_address
from pydantic import ValidationError
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, TransactionNotFound
from web3.providers.rpc.utils import REQUEST_RETRY_ALLOWLIST, ExceptionRetryConfiguration
from web3.types import TxParams, TxReceipt

from aep2.eip3009 import TRANSFER_WITH_AUTHORIZATION_TYPES, TokenDomain, transfer_with_authorization_typed_data
from aep2.errors import ErrorCode
from aep2.x402.models import (
    ExactEvmPayload,
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

__all__ = ["ExactEvmFacilitator", "EXACT_SCHEME", "TOKEN_ABI"]

logger = logging.getLogger("facilitator")

EXACT_SCHEME = "exact"

#: ERC-1271 ``isValidSignature`` success value.
ERC1271_MAGIC_VALUE = bytes.fromhex("1626ba7e")
#: secp256k1 order / 2: a larger ``s`` is the malleable twin, which OpenZeppelin's and
#: FiatToken's ECDSA refuse on chain, so it is refused here first.
_SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

TRANSFER_TOPIC = keccak(text="Transfer(address,address,uint256)")
AUTHORIZATION_USED_TOPIC = keccak(text="AuthorizationUsed(address,bytes32)")

#: ``hashStruct`` of the shared ``TransferWithAuthorization`` definition, whose fields are all
#: atomic: ``keccak(typeHash ‖ abi.encode(fields…))``.
_AUTH_FIELDS = TRANSFER_WITH_AUTHORIZATION_TYPES["TransferWithAuthorization"]
_AUTH_TYPEHASH = keccak(
    text="TransferWithAuthorization(" + ",".join(f"{f['type']} {f['name']}" for f in _AUTH_FIELDS) + ")"
)
_AUTH_FIELD_TYPES = tuple(field["type"] for field in _AUTH_FIELDS)

#: A cached gas limit is twice a measured estimate: it covers the costlier state of a later
#: payment (a payee's first credit writes a fresh slot), and every settle proves it enough by
#: simulating with exactly that limit.
_GAS_HEADROOM = 2

#: Seconds between receipt polls: the first is immediate (an automining node has mined by
#: then, mostly), the next come after 5 ms, doubling up to ``_RECEIPT_POLL`` (web3.py's
#: interval), so a block mined just after the send is not waited for a full interval.
_RECEIPT_FIRST_POLL = 0.005
_RECEIPT_POLL = 0.1


def _fn(name: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], mutability: str) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "inputs": [{"name": n, "type": t} for n, t in inputs],
        "outputs": [{"name": n, "type": t} for n, t in outputs],
        "stateMutability": mutability,
    }


_AUTH_ARGS = [
    ("from", "address"),
    ("to", "address"),
    ("value", "uint256"),
    ("validAfter", "uint256"),
    ("validBefore", "uint256"),
    ("nonce", "bytes32"),
]

#: What the facilitator calls on a token and a payer wallet: any EIP-3009 token (USDC's
#: FiatToken v2.2, MockUSDC), not only this project's compiled contract.
TOKEN_ABI: list[dict[str, Any]] = [
    _fn(
        "transferWithAuthorization",
        [*_AUTH_ARGS, ("v", "uint8"), ("r", "bytes32"), ("s", "bytes32")],
        [],
        "nonpayable",
    ),
    _fn("transferWithAuthorization", [*_AUTH_ARGS, ("signature", "bytes")], [], "nonpayable"),
    _fn("authorizationState", [("authorizer", "address"), ("nonce", "bytes32")], [("", "bool")], "view"),
    _fn("balanceOf", [("account", "address")], [("", "uint256")], "view"),
    _fn(
        "eip712Domain",
        [],
        [
            ("fields", "bytes1"),
            ("name", "string"),
            ("version", "string"),
            ("chainId", "uint256"),
            ("verifyingContract", "address"),
            ("salt", "bytes32"),
            ("extensions", "uint256[]"),
        ],
        "view",
    ),
]
#: What the facilitator calls on a payer that is a contract wallet.
_ERC1271_ABI = [_fn("isValidSignature", [("hash", "bytes32"), ("signature", "bytes")], [("", "bytes4")], "view")]
_AUTH_TYPES = tuple(t for _, t in _AUTH_ARGS)
_TRANSFER_VRS_TYPES = (*_AUTH_TYPES, "uint8", "bytes32", "bytes32")
_TRANSFER_BYTES_TYPES = (*_AUTH_TYPES, "bytes")

#: Revert selectors of common EIP-3009 tokens, named in simulation failure messages.
_REVERTS = {
    "0x" + keccak(text=signature)[:4].hex(): signature.split("(")[0]
    for signature in (
        "ERC3009InvalidSignature()",
        "ERC3009UsedAuthorization(address,bytes32)",
        "ERC3009InvalidAuthorizationTime(uint256,uint256)",
        "ERC20InsufficientBalance(address,uint256,uint256)",
        "ERC20InvalidReceiver(address)",
        "ERC20InvalidSender(address)",
        "MockUSDC__AuthorizationNotYetValid()",
        "MockUSDC__AuthorizationExpired()",
    )
}

Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1


@dataclass(frozen=True)
class _Payment:
    """A payment that passed the static checks (1–3 without the clock), as contract values."""

    network: str
    token: str
    pay_to: str
    amount: int
    extra: dict[str, Any]
    payload: ExactEvmPayload
    payer: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes
    #: Whether ``signature`` is ``payer``'s plain ECDSA (settled with ``v, r, s``) rather than
    #: an ERC-1271 wallet's (settled with ``bytes signature``); known after step 5.
    ecdsa: bool = False

    @property
    def key(self) -> tuple[object, ...]:
        """The signed message on this token: one payer may sign several with one nonce (only
        one can settle), so the nonce alone does not identify a payment."""
        return (self.token, self.payer, self.to, self.value, self.valid_after, self.valid_before, self.nonce)


class _Refused(Exception):
    """A failed check: ``code`` (``ErrorCode``) and ``message`` naming the field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _topic(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


def _calldata(name: str, types: tuple[str, ...], *args: Any) -> str:
    """ABI call data of ``name(types…)(args…)``, hex. For the calls of every payment: web3.py's
    contract-function path spends about a millisecond of CPU per call finding and checking the
    ABI entry, more than the node takes to answer."""
    return _hex(_selector(f"{name}({','.join(types)})") + abi_encode(types, args))


@functools.lru_cache(maxsize=4096)
def _checksum(address: str) -> str:
    """EIP-55 ``address``, remembered: a payment names the same few addresses again and again,
    and each spelling costs a keccak."""
    return str(to_checksum_address(address))


@functools.cache
def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def _unwrap(result: Any) -> Any:
    """A result of ``ExactEvmFacilitator._read_all``: the value, or its error raised."""
    if isinstance(result, Exception):
        raise result
    return result


def _revert_reason(exc: ContractLogicError) -> str:
    data = exc.data if isinstance(exc.data, str) else None
    if data and data[:10] in _REVERTS:
        return _REVERTS[data[:10]]
    return exc.message or str(exc)


def _recover(digest: bytes, signature: bytes) -> str | None:
    """The address whose 65-byte ``r ‖ s ‖ v`` signature this is over ``digest``; ``None`` for
    anything the token's ECDSA would refuse (wrong length, ``v``, zero or high ``s``)."""
    if len(signature) != 65:
        return None
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    v = v + 27 if v < 27 else v
    if v not in (27, 28) or not 0 < r or not 0 < s <= _SECP256K1_HALF_ORDER:
        return None
    try:
        key = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except Exception:  # eth_keys raises several types for unrecoverable points
        return None
    return _checksum(_hex(key.to_canonical_address()))


def _payer_hint(payload: Payload) -> str | None:
    """``authorization.from`` when it is an address, for responses about malformed payloads."""
    authorization = payload.payload.get("authorization")
    sender = authorization.get("from") if isinstance(authorization, dict) else None
    return _checksum(sender) if isinstance(sender, str) and _ADDRESS.fullmatch(sender) else None


class ExactEvmFacilitator:
    """Verifies and settles x402 ``exact`` EIP-3009 payments on the chain behind ``rpc_url``.

    ``private_key`` is the account that sends ``transferWithAuthorization`` and pays its gas
    (wei); it needs native currency, no tokens. The chain id is read from the node on first
    use. Satisfies ``aep2.x402.facilitator.Facilitator``; ``scheme`` names the one scheme it
    serves (for ``facilitator.Facilitators``).

    ``valid_before_margin`` (seconds) refuses authorizations that expire too soon to be mined;
    ``receipt_timeout`` (seconds) bounds the wait for a receipt; ``lookback_blocks`` bounds the
    log search that makes ``settle`` idempotent, in chunks of ``log_chunk_blocks`` (RPC
    providers cap ``eth_getLogs`` ranges).
    """

    scheme = EXACT_SCHEME

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        *,
        rpc_timeout: float = 30.0,
        receipt_timeout: float = 120.0,
        valid_before_margin: int = 6,
        lookback_blocks: int = 100_000,
        log_chunk_blocks: int = 10_000,
    ) -> None:
        retry = ExceptionRetryConfiguration(
            # Once more after a dropped connection, for reads only: a transaction may have
            # reached the node.
            errors=(ClientConnectionError,),
            retries=2,
            backoff_factor=0,
            method_allowlist=[method for method in REQUEST_RETRY_ALLOWLIST if method != "eth_sendRawTransaction"],
        )
        provider = AsyncHTTPProvider(
            rpc_url, request_kwargs={"timeout": ClientTimeout(total=rpc_timeout)}, exception_retry_configuration=retry
        )
        self._w3 = AsyncWeb3(provider, middleware=[])
        # The event loop whose keep-alive session the provider holds (``_connect``).
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._account = Account.from_key(private_key)
        self.receipt_timeout = receipt_timeout
        self.valid_before_margin = valid_before_margin
        self.lookback_blocks = lookback_blocks
        self.log_chunk_blocks = log_chunk_blocks
        self._chain_id: int | None = None
        # token → its EIP-712 (name, version), or None when it has no eip712Domain().
        self._domains: dict[str, tuple[str, str] | None] = {}
        # EIP-712 domain → its separator.
        self._separators: dict[TokenDomain, bytes] = {}
        # token → the gas limit of an ECDSA transferWithAuthorization (see _GAS_HEADROOM).
        self._gas_limits: dict[str, int] = {}
        # Held from reading the account nonce to broadcasting, so concurrent settles never
        # sign two transactions with one nonce.
        self._send_lock = asyncio.Lock()
        self._next_nonce: int | None = None
        # _Payment.key → the settlement in progress: a concurrent settle of the same signed
        # authorization waits for it instead of sending a second transaction.
        self._in_flight: dict[tuple[object, ...], asyncio.Future[SettleResponse]] = {}

    @property
    def address(self) -> str:
        """The address settlement transactions are sent from (the ``signers`` entry)."""
        return str(self._account.address)

    async def chain_id(self) -> int:
        """The node's chain id (read once)."""
        if self._chain_id is None:
            await self._connect()
            self._chain_id = await self._w3.eth.chain_id
        return self._chain_id

    async def aclose(self) -> None:
        """Close the RPC sessions."""
        self._session_loop = None
        await self._w3.provider.disconnect()

    async def _connect(self) -> None:
        """Give the provider a keep-alive session in the running event loop (web3.py keeps one
        per loop; its default one opens a connection per request)."""
        loop = asyncio.get_running_loop()
        if self._session_loop is not loop:
            session = ClientSession(raise_for_status=True)
            if await self._w3.provider.cache_async_session(session) is not session:
                await session.close()  # the loop has one already
            self._session_loop = loop

    async def _read_all(self, *reads: Callable[[], Awaitable[Any]]) -> list[Any]:
        """Each read's result, or the exception it raised, in order: one JSON-RPC batch.
        web3.py raises a batch's first error for the whole batch, so a failed batch (mostly a
        refusal) is sent again as single requests to tell which read failed."""
        try:
            async with self._w3.batch_requests() as batch:
                for read in reads:
                    batch.add(read())
                return list(await batch.async_execute())
        except Exception:
            return list(await asyncio.gather(*(read() for read in reads), return_exceptions=True))

    # ------------------------------------------------------------------ x402 §7

    async def supported(self) -> SupportedResponse:
        """``exact`` on this chain in v2 (CAIP-2) and v1 (its v1 name, else CAIP-2), and the
        facilitator's address as the ``eip155:*`` signer. Raises when the node is unreachable."""
        chain_id = await self.chain_id()
        return SupportedResponse(
            kinds=[
                SupportedKind(x402_version=2, scheme=EXACT_SCHEME, network=caip2(chain_id)),
                SupportedKind(x402_version=1, scheme=EXACT_SCHEME, network=v1_network(chain_id)),
            ],
            extensions=[],
            signers={"eip155:*": [self.address]},
        )

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        """Checks 1–8 of the module docstring; moves no funds."""
        payer = _payer_hint(payload)
        try:
            await self._connect()
            payment = await self._parse(payload, requirements)
            payer = payment.payer
            self._check_window(payment)
            payment = await self._authenticate(payment)
            used, funds, simulation = await self._read_all(*self._state_reads(payment, self._simulation(payment)))
            if self._used(payment, used):
                raise _Refused(ErrorCode.AUTHORIZATION_USED, "payload.authorization.nonce: already used or cancelled")
            self._check_funds(payment, funds)
            self._check_simulation(simulation)
        except _Refused as refused:
            return VerifyResponse(
                is_valid=False, invalid_reason=refused.code, invalid_message=refused.message, payer=payer
            )
        except Exception as exc:
            logger.warning("verify failed on an RPC call: %r", exc)
            return VerifyResponse(
                is_valid=False,
                invalid_reason=ErrorCode.UNEXPECTED_VERIFY_ERROR,
                invalid_message=f"{type(exc).__name__}: {exc}",
                payer=payer,
            )
        return VerifyResponse(is_valid=True, payer=payer)

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        """Re-verify, send ``transferWithAuthorization`` and wait for its receipt.

        ``transaction`` is the mined transaction's hash. An authorization already used on chain
        by a transaction that paid exactly this payment answers success with that transaction;
        a reverted transaction answers ``invalid_transaction_state``.
        """
        network = requirements.network
        payer = _payer_hint(payload)
        try:
            await self._connect()
            payment = await self._parse(payload, requirements)
            payer = payment.payer
            payment = await self._authenticate(payment)
            key = payment.key
            if key not in self._in_flight:
                future = asyncio.ensure_future(self._settle(payment))
                self._in_flight[key] = future
                future.add_done_callback(lambda done: self._settled_in_flight(key, done))
            # Shielded: a caller that gives up (client disconnect) must not abandon a
            # transaction half sent; the next settle of this authorization reconciles it.
            return await asyncio.shield(self._in_flight[key])
        except _Refused as refused:
            return SettleResponse(
                success=False, error_reason=refused.code, error_message=refused.message, payer=payer, network=network
            )
        except Exception as exc:
            logger.warning("settle failed on an RPC call: %r", exc)
            return SettleResponse(
                success=False,
                error_reason=ErrorCode.UNEXPECTED_SETTLE_ERROR,
                error_message=f"{type(exc).__name__}: {exc}",
                payer=payer,
                network=network,
            )

    def _settled_in_flight(self, key: tuple[object, ...], done: asyncio.Future[SettleResponse]) -> None:
        self._in_flight.pop(key, None)
        if not done.cancelled() and done.exception() is not None:
            # Retrieved here so that a settlement whose caller left does not warn on collection;
            # every caller still awaiting it gets the exception itself.
            logger.debug("settlement %r ended with %r", key, done.exception())

    # ------------------------------------------------------------------ checks

    async def _parse(self, payload: Payload, requirements: Requirements) -> _Payment:
        """Checks 1, 2 and the recipient and value of 3: no clock, no token state."""
        if isinstance(payload, PaymentPayload):
            if not isinstance(requirements, PaymentRequirements):
                raise _Refused(ErrorCode.UNSUPPORTED_VERSION, "paymentRequirements: v1 requirements for a v2 payment")
            scheme, network, amount = payload.accepted.scheme, payload.accepted.network, requirements.amount
            field = "paymentPayload.accepted"
        else:
            if not isinstance(requirements, PaymentRequirementsV1):
                raise _Refused(ErrorCode.UNSUPPORTED_VERSION, "paymentRequirements: v2 requirements for a v1 payment")
            scheme, network, amount = payload.scheme, payload.network, requirements.max_amount_required
            field = "paymentPayload"
        if requirements.scheme != EXACT_SCHEME:
            raise _Refused(
                ErrorCode.UNSUPPORTED_SCHEME, f"paymentRequirements.scheme: {requirements.scheme!r} is not 'exact'"
            )
        if scheme != requirements.scheme:
            raise _Refused(ErrorCode.UNSUPPORTED_SCHEME, f"{field}.scheme: {scheme!r} is not 'exact'")
        extra = requirements.extra or {}
        method = extra.get("assetTransferMethod", "eip3009")
        if method != "eip3009":
            raise _Refused(
                ErrorCode.UNSUPPORTED_SCHEME,
                f"paymentRequirements.extra.assetTransferMethod: {method!r} is not 'eip3009'",
            )
        chain_id = await self.chain_id()
        try:
            required_chain = chain_id_of(requirements.network)
        except ValueError as exc:
            raise _Refused(ErrorCode.NETWORK_MISMATCH, f"paymentRequirements.{exc}") from exc
        if required_chain != chain_id:
            raise _Refused(
                ErrorCode.NETWORK_MISMATCH,
                f"paymentRequirements.network: {requirements.network!r} is not this facilitator's chain "
                f"{caip2(chain_id)}",
            )
        if network != requirements.network:
            raise _Refused(
                ErrorCode.NETWORK_MISMATCH, f"{field}.network: {network!r} is not {requirements.network!r} as required"
            )
        for name, value in (("asset", requirements.asset), ("payTo", requirements.pay_to)):
            if not _ADDRESS.fullmatch(value):
                raise _Refused(
                    ErrorCode.INVALID_PAYMENT_REQUIREMENTS, f"paymentRequirements.{name}: {value!r} is not an address"
                )

        if "permit2Authorization" in payload.payload:
            raise _Refused(
                ErrorCode.INVALID_PAYLOAD, "payload.permit2Authorization: only EIP-3009 payloads are accepted"
            )
        try:
            exact = ExactEvmPayload.model_validate(payload.payload)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in ("payload", *error["loc"]))
            raise _Refused(ErrorCode.INVALID_PAYLOAD, f"{where}: {error['msg']}") from exc
        auth = exact.authorization
        payment = _Payment(
            network=requirements.network,
            token=_checksum(requirements.asset),
            pay_to=_checksum(requirements.pay_to),
            amount=int(amount),
            extra=extra,
            payload=exact,
            payer=_checksum(auth.from_),
            to=_checksum(auth.to),
            value=int(auth.value),
            valid_after=int(auth.valid_after),
            valid_before=int(auth.valid_before),
            nonce=bytes.fromhex(auth.nonce[2:]),
            signature=bytes.fromhex(exact.signature[2:]),
        )
        if payment.to != payment.pay_to:
            raise _Refused(
                ErrorCode.EXACT_RECIPIENT_MISMATCH,
                f"payload.authorization.to: {payment.to} is not paymentRequirements.payTo {payment.pay_to}",
            )
        if payment.value != payment.amount:
            raise _Refused(
                ErrorCode.EXACT_VALUE_MISMATCH,
                f"payload.authorization.value: {payment.value} is not the required amount {payment.amount}",
            )
        return payment

    def _check_window(self, payment: _Payment) -> None:
        """Check 3's clock: usable now and for ``valid_before_margin`` more seconds (mining)."""
        now = int(time.time())
        if payment.valid_before < now + self.valid_before_margin:
            raise _Refused(
                ErrorCode.EXACT_VALID_BEFORE,
                f"payload.authorization.validBefore: {payment.valid_before} is before now + "
                f"{self.valid_before_margin} s ({now + self.valid_before_margin})",
            )
        if payment.valid_after >= now:
            raise _Refused(
                ErrorCode.EXACT_VALID_AFTER,
                f"payload.authorization.validAfter: {payment.valid_after} is not before now ({now})",
            )

    async def _authenticate(self, payment: _Payment) -> _Payment:
        """Checks 4 and 5: the token's EIP-712 domain, then ECDSA or ERC-1271 over its digest."""
        token_domain = await self._token_domain(payment.token)
        name, version = payment.extra.get("name"), payment.extra.get("version")
        if token_domain is not None:
            if name is not None and name != token_domain[0]:
                raise _Refused(
                    ErrorCode.TOKEN_NAME_MISMATCH,
                    f"paymentRequirements.extra.name: {name!r} is not the token's EIP-712 name {token_domain[0]!r}",
                )
            if version is not None and version != token_domain[1]:
                raise _Refused(
                    ErrorCode.TOKEN_VERSION_MISMATCH,
                    f"paymentRequirements.extra.version: {version!r} is not the token's EIP-712 version "
                    f"{token_domain[1]!r}",
                )
            name, version = token_domain
        elif not isinstance(name, str) or not isinstance(version, str):
            raise _Refused(
                ErrorCode.INVALID_PAYMENT_REQUIREMENTS,
                "paymentRequirements.extra.name/version: required, the token has no eip712Domain()",
            )
        domain = TokenDomain(name, version, await self.chain_id(), payment.token)
        digest = self._digest(payment, domain, cache=token_domain is not None)
        if _recover(digest, payment.signature) == payment.payer:
            return dataclasses.replace(payment, ecdsa=True)
        # The token's SignatureChecker falls back to ERC-1271 when `from` is a contract.
        if await self._w3.eth.get_code(payment.payer) and await self._erc1271_accepts(payment, digest):
            return payment
        raise _Refused(
            ErrorCode.INVALID_EXACT_SIGNATURE,
            f"payload.signature: not a signature of authorization.from {payment.payer} under the token's "
            f"EIP-712 domain ({name!r}, {version!r})",
        )

    def _digest(self, payment: _Payment, domain: TokenDomain, *, cache: bool) -> bytes:
        """The EIP-712 digest of ``payment``'s authorization under ``domain``:
        ``keccak(0x1901 ‖ domainSeparator ‖ hashStruct(authorization))``. The separator comes
        from ``aep2.eip3009``'s typed data, kept when ``cache`` (the token's own domain, one per
        token); the struct hash is computed here, a fraction of the cost of encoding the full
        typed data on every check."""
        separator = self._separators.get(domain)
        if separator is None:
            typed = transfer_with_authorization_typed_data(domain, payment.payload.authorization)
            separator = bytes(encode_typed_data(full_message=typed).header)
            if cache:
                self._separators[domain] = separator
        values = {
            "from": payment.payer,
            "to": payment.to,
            "value": payment.value,
            "validAfter": payment.valid_after,
            "validBefore": payment.valid_before,
            "nonce": payment.nonce,
        }
        struct = keccak(_AUTH_TYPEHASH + abi_encode(_AUTH_FIELD_TYPES, [values[f["name"]] for f in _AUTH_FIELDS]))
        return keccak(b"\x19\x01" + separator + struct)

    async def _token_domain(self, token: str) -> tuple[str, str] | None:
        """The token's EIP-5267 (name, version), cached; ``None`` when it has no ``eip712Domain()``."""
        if token not in self._domains:
            contract = self._w3.eth.contract(address=token, abi=TOKEN_ABI)
            try:
                _, name, version, *_ = await contract.functions.eip712Domain().call()
                self._domains[token] = (str(name), str(version))
            except (ContractLogicError, BadFunctionCallOutput):
                self._domains[token] = None
        return self._domains[token]

    async def _erc1271_accepts(self, payment: _Payment, digest: bytes) -> bool:
        wallet = self._w3.eth.contract(address=payment.payer, abi=_ERC1271_ABI)
        try:
            magic = await wallet.functions.isValidSignature(digest, payment.signature).call()
        except (ContractLogicError, BadFunctionCallOutput):
            return False
        return bytes(magic) == ERC1271_MAGIC_VALUE

    def _state_reads(
        self, payment: _Payment, simulation: Callable[[], Awaitable[Any]]
    ) -> list[Callable[[], Awaitable[Any]]]:
        """The reads of checks 6–8, for one JSON-RPC batch (``_read_all``):
        ``authorizationState(from, nonce)``, ``balanceOf(from)`` and ``simulation``
        (``_simulation``)."""
        state = _calldata("authorizationState", ("address", "bytes32"), payment.payer, payment.nonce)
        funds = _calldata("balanceOf", ("address",), payment.payer)
        return [
            lambda: self._w3.eth.call({"to": payment.token, "data": state}, "latest"),
            lambda: self._w3.eth.call({"to": payment.token, "data": funds}, "latest"),
            simulation,
        ]

    def _simulation(
        self, payment: _Payment, *, gas: int | None = None, estimate: bool = False
    ) -> Callable[[], Awaitable[Any]]:
        """Check 8's read: ``transferWithAuthorization`` from the facilitator's address as an
        ``eth_call`` (within ``gas`` when given) or, with ``estimate``, an ``eth_estimateGas``."""
        transfer: TxParams = {"from": self.address, "to": payment.token, "data": self._transfer_data(payment)}
        if estimate:
            return lambda: self._w3.eth.estimate_gas(transfer)
        if gas is not None:
            transfer["gas"] = gas
        return lambda: self._w3.eth.call(transfer, "latest")

    def _used(self, payment: _Payment, state: Any) -> bool:
        """Check 6 on an ``authorizationState(from, nonce)`` result (true once used or cancelled)."""
        try:
            (used,) = self._w3.codec.decode(["bool"], _unwrap(state))
            return bool(used)
        except (ContractLogicError, DecodingError) as exc:
            raise _Refused(
                ErrorCode.INVALID_PAYMENT_REQUIREMENTS,
                f"paymentRequirements.asset: {payment.token} has no EIP-3009 authorizationState()",
            ) from exc

    def _check_funds(self, payment: _Payment, funds: Any) -> None:
        """Check 7 on a fresh ``balanceOf(from)`` result."""
        (balance,) = self._w3.codec.decode(["uint256"], _unwrap(funds))
        if balance < payment.value:
            raise _Refused(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"payload.authorization.from: {payment.payer} holds {balance} < value {payment.value} base units",
            )

    @staticmethod
    def _check_simulation(simulation: Any) -> Any:
        """Check 8 on the result of ``_simulation``'s request; that result."""
        try:
            return _unwrap(simulation)
        except ContractLogicError as exc:
            raise _Refused(
                ErrorCode.EXACT_SIMULATION_FAILED, f"transferWithAuthorization would revert: {_revert_reason(exc)}"
            ) from exc

    # ------------------------------------------------------------------ settlement

    async def _settle(self, payment: _Payment) -> SettleResponse:
        """Settle an authenticated payment, or reconcile it with the chain when already used.

        One batch re-reads checks 6–8 with the fee and the account's pending nonce, so a
        payment that changed since ``verify`` is refused before anything is sent. Check 8 is
        the gas estimate, or for an ECDSA payment on a token settled before, an ``eth_call``
        within the token's cached gas limit (an estimate costs the node several executions)."""
        limit = self._gas_limits.get(payment.token) if payment.ecdsa else None
        eth = self._w3.eth
        used, funds, simulated, gas_price, tip, pending = await self._read_all(
            *self._state_reads(payment, self._simulation(payment, gas=limit, estimate=limit is None)),
            lambda: eth.gas_price,
            lambda: eth.max_priority_fee,
            lambda: eth.get_transaction_count(self.address, "pending"),
        )
        if self._used(payment, used):
            settled = await self._find_settlement(payment)
            if settled is None:
                raise _Refused(
                    ErrorCode.AUTHORIZATION_USED,
                    "payload.authorization.nonce: used or cancelled on chain, by no transaction paying this payment",
                )
            return self._settled(payment, settled)
        self._check_window(payment)
        self._check_funds(payment, funds)
        if limit is not None and isinstance(simulated, Exception):
            # Failing within the limit may be the limit's fault (out of gas, or a signature
            # check starved of gas reverting): the estimate tells a real revert.
            self._gas_limits.pop(payment.token, None)
            limit = None
            (simulated,) = await asyncio.gather(self._simulation(payment, estimate=True)(), return_exceptions=True)
        simulated = self._check_simulation(simulated)
        if limit is None:
            estimate = int(simulated)
            if payment.ecdsa:
                limit = self._gas_limits[payment.token] = _GAS_HEADROOM * estimate
            else:  # an ERC-1271 wallet's cost is its own: estimated every time
                limit = estimate + estimate // 4
        price = int(_unwrap(gas_price))
        fee: dict[str, int]
        if isinstance(tip, Exception):  # no EIP-1559 on this chain (web3.py's fee-history fallback failed too)
            fee = {"gasPrice": price}
        else:
            priority = int(tip)
            # Twice the current price covers a base fee that doubles before inclusion; only
            # base fee + tip is paid.
            fee = {"maxFeePerGas": max(2 * price, priority), "maxPriorityFeePerGas": priority}
        tx_hash = await self._send(payment, limit, fee, int(_unwrap(pending)))
        receipt = await self._wait_for_receipt(tx_hash)
        if receipt is None:
            return SettleResponse(
                success=False,
                error_reason=ErrorCode.UNEXPECTED_SETTLE_ERROR,
                error_message=(
                    f"transaction {tx_hash} not mined within {self.receipt_timeout} s; settle again to reconcile"
                ),
                payer=payment.payer,
                transaction=tx_hash,
                network=payment.network,
            )
        succeeded = receipt["status"] == 1
        if succeeded and self._pays(receipt, payment):
            return self._settled(payment, tx_hash)
        if not succeeded:
            self._gas_limits.pop(payment.token, None)  # estimate again next time
        # Another relayer may have used the authorization first: the payment is then settled.
        settled = await self._find_settlement(payment)
        if settled is not None:
            return self._settled(payment, settled)
        return SettleResponse(
            success=False,
            error_reason=ErrorCode.INVALID_TRANSACTION_STATE,
            error_message=f"transaction {tx_hash} {'paid something else' if succeeded else 'reverted'}",
            payer=payment.payer,
            transaction=tx_hash,
            network=payment.network,
        )

    async def _send(self, payment: _Payment, gas: int, fee: dict[str, int], pending: int) -> str:
        """Sign and broadcast ``payment``'s ``transferWithAuthorization`` from the facilitator's
        account; the transaction hash. ``pending`` is the account's pending transaction count
        as read before taking the lock; it is read again under the lock when the local count
        is unknown (first send, or after a failed one)."""
        chain_id = await self.chain_id()
        async with self._send_lock:
            if self._next_nonce is None:
                pending = await self._w3.eth.get_transaction_count(self.address, "pending")
            nonce = max(pending, self._next_nonce or 0)
            tx = {
                "chainId": chain_id,
                "nonce": nonce,
                "to": payment.token,
                "value": 0,
                "data": self._transfer_data(payment),
                "gas": gas,
                **fee,
            }
            signed = self._account.sign_transaction(tx)
            try:
                tx_hash = (await self._w3.eth.send_raw_transaction(signed.raw_transaction)).to_0x_hex()
            except Exception:
                self._next_nonce = None  # the node's pending count is the truth again
                raise
            self._next_nonce = nonce + 1
        return tx_hash

    async def _wait_for_receipt(self, tx_hash: str) -> TxReceipt | None:
        """The receipt of ``tx_hash``, polled until ``receipt_timeout``; ``None`` when not mined.
        (web3.py's ``wait_for_transaction_receipt`` polls at one fixed interval.)"""

        async def poll() -> TxReceipt:
            delay = _RECEIPT_FIRST_POLL
            while True:
                try:
                    return await self._w3.eth.get_transaction_receipt(tx_hash)
                except TransactionNotFound:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _RECEIPT_POLL)

        try:
            return await asyncio.wait_for(poll(), self.receipt_timeout)
        except TimeoutError:
            return None

    async def _find_settlement(self, payment: _Payment) -> str | None:
        """The mined transaction that used ``(from, nonce)`` and moved exactly ``value`` from
        ``from`` to ``to``, searched back ``lookback_blocks``; ``None`` when there is none."""
        eth = self._w3.eth
        topics = [AUTHORIZATION_USED_TOPIC, _topic(payment.payer), payment.nonce]
        latest = await eth.block_number
        floor = max(0, latest - self.lookback_blocks)
        end = latest
        while end >= floor:
            start = max(floor, end - self.log_chunk_blocks + 1)
            logs = await eth.get_logs({"address": payment.token, "topics": topics, "fromBlock": start, "toBlock": end})
            # A nonce is used once, so the first log is the only candidate.
            for log in logs:
                tx_hash = log["transactionHash"].to_0x_hex()
                try:
                    receipt = await eth.get_transaction_receipt(log["transactionHash"])
                except TransactionNotFound:
                    return None
                return tx_hash if receipt["status"] == 1 and self._pays(receipt, payment) else None
            end = start - 1
        return None

    @staticmethod
    def _pays(receipt: TxReceipt, payment: _Payment) -> bool:
        """Whether ``receipt`` has the token's ``Transfer(from, to, value)``."""
        expected = [TRANSFER_TOPIC, _topic(payment.payer), _topic(payment.to)]
        return any(
            log["address"] == payment.token
            and [bytes(topic) for topic in log["topics"][:3]] == expected
            and int.from_bytes(log["data"], "big") == payment.value
            for log in receipt["logs"]
        )

    @staticmethod
    def _settled(payment: _Payment, tx_hash: str) -> SettleResponse:
        return SettleResponse(
            success=True, transaction=tx_hash, network=payment.network, payer=payment.payer, amount=str(payment.value)
        )

    @staticmethod
    def _transfer_data(payment: _Payment) -> str:
        """``transferWithAuthorization`` call data: the ``(v, r, s)`` form every EIP-3009 token
        has for an ECDSA signature, the ``bytes signature`` form (FiatToken v2.2) for ERC-1271
        wallets."""
        args = (payment.payer, payment.to, payment.value, payment.valid_after, payment.valid_before, payment.nonce)
        if payment.ecdsa:
            r, s, v = payment.signature[:32], payment.signature[32:64], payment.signature[64]
            return _calldata("transferWithAuthorization", _TRANSFER_VRS_TYPES, *args, v + 27 if v < 27 else v, r, s)
        return _calldata("transferWithAuthorization", _TRANSFER_BYTES_TYPES, *args, payment.signature)
