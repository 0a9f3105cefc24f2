"""Shared helpers for the gateway tests: the example payee app behind ``PaymentMiddleware`` on the
real Anvil deployment, intents and hand-built ``aep2`` payment headers.

A unique module name (not ``conftest``) so tests can import it next to ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

import httpx
import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from aep2.deployment import CircuitShape, Deployment
from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode
from aep2.intent import Intent, SignedIntent
from aep2.mandate import Mandate, request_hash
from aep2.payload import build_payload
from aep2.sqlite_store import SQLiteStore
from aep2.x402 import PAYMENT_REQUIRED_HEADER, decode_header, encode_header
from examples.payee_service import ROUTES, forecast, health, primes, sentiment
from gateway.pricing import PricedRoute
from gateway.chain import CONSENT_NOT_WITHDRAWN, ChainCache, ChainReader, EscrowState, IntentState, Web3ChainReader
from gateway.config import GatewayConfig
from gateway.middleware import PaymentMiddleware
from gateway.quote import MALFORMED_CODES
from settlement.devchain import anvil_key

#: Same accounts as ``tests/conftest.py`` (PAYEE: Anvil account 2, processor: account 1).
PAYEE = Account.from_key(anvil_key(2)).address
PROCESSOR = Account.from_key(anvil_key(1)).address
#: Sends the in-process facilitator's ``exact`` transfers (Anvil account 5).
FACILITATOR_KEY = anvil_key(5)
#: Prices of the example service's fixed routes (base units).
FORECAST_PRICE = 1_000
SENTIMENT_PRICE = 2_000
#: Every stable error code on the wire.
ERROR_CODES = frozenset(v for k, v in vars(ErrorCode).items() if k.isupper() and isinstance(v, str))


def error_code(response: httpx.Response) -> str:
    """The stable code of a refusal (``PAYMENT-REQUIRED`` header's ``error``, before ``": "``),
    checking its status: 400 for a malformed payment, 402 otherwise (x402 HTTP transport)."""
    assert response.status_code in (400, 402), (response.status_code, response.text)
    required = decode_header(response.headers[PAYMENT_REQUIRED_HEADER], header=PAYMENT_REQUIRED_HEADER)
    body = response.json()
    assert body["error"] == required["error"], "v1 body and v2 header disagree on the error"
    code = str(required["error"]).partition(": ")[0]
    assert response.status_code == (400 if code in MALFORMED_CODES else 402), (response.status_code, code)
    assert response.headers["cache-control"] == "no-store"
    return code


def make_intent(
    owner_key: Any,
    key: SessionKey,
    deployment: Deployment,
    *,
    max_amount: int = 100_000,
    max_per_payment: int = 5_000,
    valid_for: int = 3600,
    chain_id: int | None = None,
    settlement: str | None = None,
    asset: str | None = None,
    processor: str = PROCESSOR,
    payees: tuple[str, ...] = (),
    sign_with: Any = None,
) -> SignedIntent:
    """An intent for ``key`` signed by ``owner_key`` (or, forged, by ``sign_with``)."""
    owner = Account.from_key(owner_key)
    now = int(time.time())
    intent = Intent(
        payer=owner.address,
        asset=asset or deployment.token,
        session_key=key.public_key,
        max_amount=max_amount,
        max_per_payment=max_per_payment,
        valid_after=now - 60,
        valid_before=now + valid_for,
        chain_id=deployment.chain_id if chain_id is None else chain_id,
        verifying_contract=settlement or deployment.settlement,
        payees=payees,
        processor=processor,
    )
    signer = Account.from_key(sign_with or owner_key)
    signature = signer.sign_typed_data(full_message=intent.typed_data()).signature
    return SignedIntent(intent, bytes(signature))


@dataclass
class MandateSigner:
    """Builds ``PAYMENT-SIGNATURE`` values for one intent, field by field."""

    signed: SignedIntent
    key: SessionKey
    deployment: Deployment
    next_nonce: int = 0
    sent_intent: bool = field(default=False)

    @property
    def intent_id(self) -> bytes:
        return self.signed.intent.intent_id

    def requirement(self, amount: int = FORECAST_PRICE, **overrides: Any) -> dict[str, Any]:
        """The ``accepted`` requirement as the gateway offers it."""
        entry = {
            "scheme": "aep2",
            "network": self.deployment.network,
            "asset": self.deployment.token,
            "amount": str(amount),
            "payTo": PAYEE,
            "maxTimeoutSeconds": 300,
            "extra": {"settlement": self.deployment.settlement, "processor": PROCESSOR, "minDeadlineSeconds": 300},
        }
        entry.update(overrides)
        return entry

    def mandate(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        amount: int = FORECAST_PRICE,
        nonce: int | None = None,
        payee: str = PAYEE,
        deadline: int | None = None,
    ) -> Mandate:
        if nonce is None:
            nonce = self.next_nonce
            self.next_nonce += 1
        return Mandate(
            intent_id=self.intent_id,
            payee=payee,
            amount=amount,
            nonce=nonce,
            deadline=int(time.time()) + 3600 if deadline is None else deadline,
            request_hash=request_hash(method, path, body),
        )

    def header(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        amount: int = FORECAST_PRICE,
        nonce: int | None = None,
        payee: str = PAYEE,
        deadline: int | None = None,
        include_intent: bool = True,
        sign_key: SessionKey | None = None,
        accepted: dict[str, Any] | None = None,
        version: int = 2,
    ) -> str:
        """A base64 x402 envelope carrying a mandate for ``method path`` (and the intent)."""
        mandate = self.mandate(method, path, body=body, amount=amount, nonce=nonce, payee=payee, deadline=deadline)
        signature = mandate.sign(sign_key or self.key)
        payload = build_payload(mandate, signature, self.signed if include_intent else None)
        if version == 1:
            envelope: dict[str, Any] = {
                "x402Version": 1,
                "scheme": "aep2",
                "network": self.deployment.network,
                "payload": payload,
            }
        else:
            envelope = {
                "x402Version": version,
                "accepted": accepted if accepted is not None else self.requirement(amount),
                "resource": {"url": path},
                "payload": payload,
            }
        return encode_header(envelope)


def signer_for(payer: Any, deployment: Deployment, **intent_options: Any) -> MandateSigner:
    """A ``MandateSigner`` for a fresh session key and an intent of ``payer`` (a ``payer.Escrow``
    or an ``eth_account`` account)."""
    key = SessionKey.generate()
    owner_key = payer.account.key if hasattr(payer, "account") else payer.key
    return MandateSigner(make_intent(owner_key, key, deployment, **intent_options), key, deployment)


#: A deployment that exists nowhere: for in-process gateways on a ``StaticChainReader``.
OFFLINE_DEPLOYMENT = Deployment(
    chain_id=31337,
    rpc_url="http://127.0.0.1:9",
    settlement=to_checksum_address("0x" + "5e" * 20),
    token=to_checksum_address("0x" + "a1" * 20),
    verifier=to_checksum_address("0x" + "7e" * 20),
    circuit=CircuitShape(4, 2, 2, "offline"),
    deployed_at=0,
    settlement_window=3600,
)


class StaticChainReader:
    """A ``ChainReader`` answering from dictionaries, for in-process tests without a node.

    Every payer has ``balance`` escrowed and consents to every processor unless ``escrow`` says
    otherwise; intents are unregistered and no nonce is settled unless ``intents``/``settled``
    say otherwise; the token's EIP-712 domain is ``domain``. ``reads`` counts the calls per method; ``fail`` makes every read raise.
    """

    def __init__(self, *, balance: int = 10**9) -> None:
        self.block = 1
        self.default = EscrowState(balance, 0, CONSENT_NOT_WITHDRAWN, self.block)
        self.escrow: dict[tuple[str, str, str], EscrowState] = {}
        self.intents: dict[bytes, IntentState] = {}
        self.settled: dict[tuple[bytes, int], int] = {}
        self.domain: tuple[str, str] | None = ("USD Coin", "2")
        self.reads: Counter[str] = Counter()
        self.fail = False

    def set_escrow(self, payer: str, asset: str, processor: str = PROCESSOR, **fields: int) -> None:
        """Replace fields of one payer's ``EscrowState`` (``balance``, ``pending_withdrawal``, …)."""
        key = (to_checksum_address(payer), to_checksum_address(asset), to_checksum_address(processor))
        self.escrow[key] = replace(self.escrow.get(key, self.default), **fields)

    def _read(self, method: str) -> int:
        self.reads[method] += 1
        if self.fail:
            raise ConnectionError("RPC endpoint unreachable (test)")
        return self.block

    async def escrow_state(self, payer: str, asset: str, processor: str) -> EscrowState:
        block = self._read("escrow_state")
        return replace(self.escrow.get((payer, asset, processor), self.default), block=block)

    async def intent_state(self, intent_id: bytes) -> IntentState:
        block = self._read("intent_state")
        return replace(self.intents.get(intent_id, IntentState(False, 0, block)), block=block)

    async def settled_nonces(self, intent_id: bytes, window: int) -> tuple[int, int]:
        block = self._read("settled_nonces")
        return self.settled.get((intent_id, window), 0), block

    async def token_domain(self, asset: str) -> tuple[str, str] | None:
        self._read("token_domain")
        return self.domain


def _counted(handler: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    async def counted(request: Any) -> Any:
        calls[request.url.path] += 1
        return await handler(request)

    return counted


async def broken(request: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": "the handler failed"}, status_code=500)


#: A priced route whose handler always answers 500 (served nothing: must settle nothing).
BROKEN_ROUTE = PricedRoute("GET", "/v1/broken", FORECAST_PRICE, "Always fails")


class InProcessGateway:
    """The example routes (plus ``BROKEN_ROUTE``) behind ``PaymentMiddleware``, with handles on
    its store and chain cache (for driving it in-process with ``httpx.ASGITransport``, where
    no lifespan runs).

    ``reader``: the chain (default: the deployment's node through ``Web3ChainReader``);
    ``processor``: the settlement processor it names (default ``PROCESSOR``);
    ``facilitator``: for ``exact`` (default none: ``aep2`` only);
    ``handled`` counts the requests that reached a handler, per path.
    """

    def __init__(
        self,
        deployment: Deployment,
        store_path: str,
        *,
        reader: ChainReader | None = None,
        processor: str = PROCESSOR,
        facilitator: Any = None,
        payment_identifier_required: bool = False,
        **config: Any,
    ) -> None:
        self.config = GatewayConfig.from_deployment(deployment, PAYEE, processor=processor, **config)
        self.facilitator = facilitator
        self.store = SQLiteStore(store_path)
        self.reader = reader or Web3ChainReader(deployment.rpc_url, deployment.settlement)
        self.chain = ChainCache(self.reader, max_staleness=self.config.max_chain_staleness)
        self.middleware_options = dict(
            config=self.config,
            routes=[*ROUTES, BROKEN_ROUTE],
            store=self.store,
            chain=self.chain,
            facilitator=facilitator,
            payment_identifier_required=payment_identifier_required,
        )
        self.handled: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route("/v1/forecast/{city}", _counted(forecast, self.handled)),
                Route("/v1/sentiment", _counted(sentiment, self.handled), methods=["POST"]),
                Route("/v1/primes", _counted(primes, self.handled)),
                Route("/v1/broken", _counted(broken, self.handled)),
                Route("/health", health),
            ],
            middleware=[Middleware(PaymentMiddleware, **self.middleware_options, service="Test API")],
        )

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client

    async def aclose(self) -> None:
        if self.facilitator is not None:
            await self.facilitator.aclose()
        await self.chain.aclose()
        await self.store.close()


@contextlib.asynccontextmanager
async def open_store(path: str) -> AsyncIterator[SQLiteStore]:
    """A second connection to a gateway's store file, to inspect what it recorded."""
    store = SQLiteStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def gateway_server(deployment: Deployment, store_path: str, serve: Any) -> Any:
    """The example payee service (``examples.payee_service``) served by uvicorn on loopback,
    settling ``exact`` through an in-process facilitator."""
    from examples.payee_service import create_app

    return serve(create_app(deployment, PAYEE, store_path, processor=PROCESSOR, facilitator_key=FACILITATOR_KEY))
