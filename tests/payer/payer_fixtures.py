"""Shared helpers for the payer SDK tests: an owner, a session key, a signed intent, a fake gateway."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from eth_account import Account

from aep2.eddsa import SessionKey, verify
from aep2.errors import ErrorCode, PaymentError
from aep2.mandate import request_hash
from aep2.payload import parse_payload
from aep2.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    caip2,
    decode_header,
    encode_header,
)
from payer import create_intent

CHAIN_ID = 31337
ASSET = "0x" + "a1" * 20
SETTLEMENT = "0x" + "5e" * 20
PAYEE = "0x" + "be" * 20
PROCESSOR = "0x" + "9c" * 20


def requirement(
    amount: int = 10,
    *,
    pay_to: str = PAYEE,
    asset: str = ASSET,
    settlement: str = SETTLEMENT,
    chain_id: int = CHAIN_ID,
    scheme: str = "aep2",
    processor: str | None = PROCESSOR,
    **extra: Any,
) -> dict[str, Any]:
    """An ``accepts`` entry as our gateway offers it (``processor=None``: the entry names none)."""
    named = {} if processor is None else {"processor": processor}
    return {
        "scheme": scheme,
        "network": caip2(chain_id),
        "asset": asset,
        "amount": str(amount),
        "payTo": pay_to,
        "maxTimeoutSeconds": 60,
        "extra": {"settlement": settlement, **named, "minDeadlineSeconds": 600, **extra},
    }


def challenge(
    *accepts: dict[str, Any], error: str | None = None, url: str = "https://api.test/weather"
) -> httpx.Response:
    """A gateway 402: v2 ``PAYMENT-REQUIRED`` header plus the v1 body."""
    accepts = accepts or (requirement(),)
    header = {"x402Version": 2, "error": error, "resource": {"url": url}, "accepts": list(accepts)}
    body = {"x402Version": 1, "error": error, "accepts": [_v1(entry, url) for entry in accepts]}
    return httpx.Response(402, headers={PAYMENT_REQUIRED_HEADER: encode_header(header)}, json=body)


def v1_challenge(*accepts: dict[str, Any], error: str | None = None, url: str = "https://api.test/weather") -> httpx.Response:
    """A 402 with only the v1 JSON body."""
    accepts = accepts or (requirement(),)
    body = {"x402Version": 1, "error": error, "accepts": [_v1(entry, url) for entry in accepts]}
    return httpx.Response(402, json=body)


def _v1(entry: dict[str, Any], url: str) -> dict[str, Any]:
    v1 = {k: v for k, v in entry.items() if k != "amount"}
    v1.update(maxAmountRequired=entry["amount"], resource=url, description="", mimeType="application/json")
    return v1


def receipt_response(payment: dict[str, Any], status: int = 200) -> httpx.Response:
    """What the gateway answers to an accepted payment."""
    payload = payment["payload"]
    receipt = {
        "success": True,
        "paymentId": "0x" + "00" * 32,
        "status": "accepted",
        "amount": payload["mandate"]["amount"],
        "payer": payload.get("intent", {}).get("payer", "0x" + "00" * 20),
        "network": payment["accepted"]["network"],
        "transaction": "",
    }
    return httpx.Response(status, headers={PAYMENT_RESPONSE_HEADER: encode_header(receipt)}, json={"ok": True})


@pytest.fixture
def owner():
    return Account.create()


@pytest.fixture
def session_key() -> SessionKey:
    return SessionKey.generate()


@pytest.fixture
def make_intent(owner, session_key):
    def make(**overrides: Any):
        options: dict[str, Any] = dict(
            session_key=session_key,
            asset=ASSET,
            max_amount=100,
            max_per_payment=25,
            valid_for_seconds=3600,
            chain_id=CHAIN_ID,
            settlement=SETTLEMENT,
            processor=PROCESSOR,
        )
        options.update(overrides)
        return create_intent(owner.key, **options)

    return make


@pytest.fixture
def signed_intent(make_intent):
    return make_intent()


class FakeGateway:
    """An ``httpx.MockTransport`` handler that prices every route and verifies aep2 payments."""

    def __init__(self, price: int = 10, *, refuse: str | None = None) -> None:
        self.price = price
        self.refuse = refuse
        self.known: dict[bytes, Any] = {}
        self.nonces: list[int] = []
        self.payments: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        if request.url.path == "/skill.json":
            return httpx.Response(200, json={"routes": [], "aep2": {}})
        header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        if header is None:
            return challenge(requirement(self.price), url=url)
        try:
            payment = decode_header(header)
            parsed = parse_payload(payment["payload"])
            self.check(request, payment, parsed)
        except PaymentError as exc:
            return challenge(requirement(self.price), error=exc.wire, url=url)
        self.payments.append(payment)
        self.nonces.append(parsed.mandate.nonce)
        return receipt_response(payment)

    def check(self, request: httpx.Request, payment: dict[str, Any], parsed: Any) -> None:
        if self.refuse:
            raise PaymentError(self.refuse, "refused by the test")
        if parsed.signed_intent is not None:
            assert parsed.signed_intent.is_valid()
            self.known[parsed.intent_id] = parsed.signed_intent
        signed = self.known.get(parsed.intent_id)
        if signed is None:
            raise PaymentError(ErrorCode.UNKNOWN_INTENT, "payload.intent: required")
        mandate = parsed.mandate
        if not verify(signed.intent.session_key, mandate.message(), parsed.signature):
            raise PaymentError(ErrorCode.INVALID_MANDATE_SIGNATURE, "payload.signature")
        expected = request_hash(request.method, request.url.raw_path.decode(), request.content)
        if mandate.request_hash != expected:
            raise PaymentError(ErrorCode.REQUEST_MISMATCH, "payload.mandate.requestHash")
        if mandate.amount != self.price:
            raise PaymentError(ErrorCode.AMOUNT_MISMATCH, f"payload.mandate.amount: {mandate.amount}")
        if mandate.nonce in self.nonces:  # one-time values, in any order (PROTOCOL.md §3)
            raise PaymentError(ErrorCode.NONCE_USED, f"payload.mandate.nonce: {mandate.nonce}")
        if mandate.deadline < time.time() + 600:
            raise PaymentError(ErrorCode.MANDATE_EXPIRED, "payload.mandate.deadline")
