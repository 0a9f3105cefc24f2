"""Every refusal on the wire: a 402 whose ``error`` starts with its own stable code, never a 500.

Payloads are built by hand from the ``aep2`` primitives so each case breaks exactly one thing;
the server is the example service on uvicorn, the chain a real Anvil deployment.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import httpx
import pytest
from eth_account import Account
from gateway_fixtures import (
    FORECAST_PRICE,
    error_code,
    open_store,
    signer_for,
)

from aep2.eddsa import SessionKey
from aep2.errors import ErrorCode
from aep2.payload import build_payload
from aep2.x402 import MAX_HEADER_BYTES, encode_header

pytestmark = pytest.mark.chain

PATH = "/v1/forecast/paris"


def paid_get(server, header: str, path: str = PATH, name: str = "PAYMENT-SIGNATURE") -> httpx.Response:
    return httpx.get(server.url + path, headers={name: header})


async def assert_nothing_reserved(store_path: str) -> None:
    async with open_store(store_path) as store:
        assert await store.mandates() == []
        assert await store.exact_payments() == []


# -- the header itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("not base64 at all!", id="not-base64"),
        pytest.param(base64.b64encode(b"\xff\xfe not json").decode(), id="base64-of-non-json"),
        pytest.param(base64.b64encode(b"{\"x402Version\": 2,").decode(), id="truncated-json"),
        pytest.param(encode_header([{"x402Version": 2}]), id="json-array"),
        pytest.param(encode_header("x402"), id="json-string"),
        pytest.param("", id="empty"),
    ],
)
async def test_malformed_header(gateway_server, store_path, header):
    response = paid_get(gateway_server, header)
    assert error_code(response) == ErrorCode.INVALID_HEADER
    assert "PAYMENT-SIGNATURE" in response.json()["error"]  # names the header
    # The v1 header is parsed by the same rules and named in the reason.
    response = paid_get(gateway_server, header, name="X-PAYMENT")
    assert error_code(response) == ErrorCode.INVALID_HEADER
    assert "X-PAYMENT" in response.json()["error"]
    await assert_nothing_reserved(store_path)


def test_oversized_header(gateway_server):
    # Refused by size before any decoding: over MAX_HEADER_BYTES, even when it is valid base64 JSON.
    header = encode_header({"x402Version": 2, "padding": "A" * MAX_HEADER_BYTES})
    assert len(header) > MAX_HEADER_BYTES
    response = paid_get(gateway_server, header)
    assert error_code(response) == ErrorCode.PAYLOAD_TOO_LARGE
    assert error_code(paid_get(gateway_server, "!" * (MAX_HEADER_BYTES + 1))) == ErrorCode.PAYLOAD_TOO_LARGE
    # Just under the limit, it is decoded (and refused for what it is).
    header = encode_header({"x402Version": 2, "padding": "A" * (MAX_HEADER_BYTES // 2)})
    assert len(header) <= MAX_HEADER_BYTES
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.INVALID_PAYLOAD


def test_deeply_nested_header_is_refused_unparsed(gateway_server):
    # A few KB of nested arrays: refused by count before the JSON decoder sees them.
    nested = "[" * 5000 + "]" * 5000
    header = base64.b64encode(('{"x402Version": 2, "payload": ' + nested + "}").encode()).decode()
    assert len(header) <= MAX_HEADER_BYTES
    response = paid_get(gateway_server, header)
    assert error_code(response) == ErrorCode.INVALID_HEADER and "arrays/objects" in response.json()["error"]
    assert response.status_code == 400


@pytest.mark.parametrize("version", [0, 3, "2", None])
def test_unsupported_x402_version(gateway_server, make_payer, deployment, version):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, version=version)
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.UNSUPPORTED_VERSION


def test_unsupported_scheme(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, accepted=signer.requirement(scheme="upto"))
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.UNSUPPORTED_SCHEME
    v1 = encode_header({"x402Version": 1, "scheme": "deferred", "network": "eip155:31337", "payload": {}})
    assert error_code(paid_get(gateway_server, v1, name="X-PAYMENT")) == ErrorCode.UNSUPPORTED_SCHEME


def test_invalid_payload(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    envelope = {"x402Version": 2, "accepted": signer.requirement(), "payload": {"intentId": "0x12"}}
    response = paid_get(gateway_server, encode_header(envelope))
    assert error_code(response) == ErrorCode.INVALID_PAYLOAD
    assert "payload.intentId" in response.json()["error"]
    envelope = {"x402Version": 2, "payload": {}}
    assert error_code(paid_get(gateway_server, encode_header(envelope))) == ErrorCode.INVALID_PAYLOAD


# -- the offer ------------------------------------------------------------------------------------


def test_wrong_network(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, accepted=signer.requirement(network="eip155:1"))
    response = paid_get(gateway_server, header)
    assert error_code(response) == ErrorCode.NETWORK_MISMATCH
    assert "eip155:1" in response.json()["error"]
    v1 = json.loads(base64.b64decode(signer.header("GET", PATH, version=1)))
    v1_other = encode_header({**v1, "network": "base-sepolia"})
    assert error_code(paid_get(gateway_server, v1_other, name="X-PAYMENT")) == ErrorCode.NETWORK_MISMATCH


def test_wrong_payee(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(), deployment)
    other = Account.create().address
    # In the offer the client says it accepted …
    header = signer.header("GET", PATH, accepted=signer.requirement(payTo=other))
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.PAYEE_MISMATCH
    # … and in the signed mandate itself.
    header = signer.header("GET", PATH, payee=other)
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.PAYEE_MISMATCH


def test_payee_not_in_intent_allowlist(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment, payees=(Account.create().address,))
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.PAYEE_NOT_ALLOWED


def test_wrong_amount(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    # Offer and mandate both for less than the price.
    header = signer.header("GET", PATH, amount=FORECAST_PRICE - 1)
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.AMOUNT_MISMATCH
    # Offer right, mandate for more: still not the price.
    header = signer.header("GET", PATH, amount=FORECAST_PRICE + 1, accepted=signer.requirement(FORECAST_PRICE))
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.AMOUNT_MISMATCH


def test_wrong_asset(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, accepted=signer.requirement(asset=Account.create().address))
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.ASSET_MISMATCH
    # An intent over another token, offered correctly.
    other = signer_for(make_payer(), deployment, asset=Account.create().address)
    assert error_code(paid_get(gateway_server, other.header("GET", PATH))) == ErrorCode.ASSET_MISMATCH


# -- the intent -----------------------------------------------------------------------------------


def test_intent_expired(gateway_server, make_payer, deployment):
    # Valid now, but it ends before the gateway's minimum settlement window (300 s).
    signer = signer_for(make_payer(), deployment, valid_for=120)
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.INTENT_EXPIRED


def test_intent_signature_invalid(gateway_server, make_payer, deployment):
    payer = make_payer()
    forger = Account.create()
    signer = signer_for(payer, deployment, sign_with=forger.key)
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.INVALID_INTENT_SIGNATURE


@pytest.mark.parametrize("domain", ["chain", "contract"])
def test_intent_from_another_domain(gateway_server, make_payer, deployment, domain):
    options = {"chain_id": 1} if domain == "chain" else {"settlement": Account.create().address}
    signer = signer_for(make_payer(), deployment, **options)
    response = paid_get(gateway_server, signer.header("GET", PATH))
    assert error_code(response) == ErrorCode.INTENT_DOMAIN_MISMATCH


def test_intent_for_another_processor(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment, processor=Account.create().address)
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.PROCESSOR_MISMATCH


async def test_processor_never_authorised(gateway_server, make_payer, deployment, store_path):
    # The payer consented to some other processor, never to ours.
    signer = signer_for(make_payer(processor=Account.create().address), deployment)
    response = paid_get(gateway_server, signer.header("GET", PATH))
    assert error_code(response) == ErrorCode.PROCESSOR_NOT_AUTHORIZED
    await assert_nothing_reserved(store_path)


@pytest.mark.parametrize("chain_id", [2**256, 2**256 + 31337, 10**78 - 1])
async def test_intent_chain_id_of_256_bits_or_more(gateway_server, make_payer, deployment, store_path, chain_id):
    """Outside EIP-712's ``uint256``: ``invalid_payload`` naming the field, not ``chain_unavailable``."""
    signer = signer_for(make_payer(), deployment)
    envelope = json.loads(base64.b64decode(signer.header("GET", PATH)))
    envelope["payload"]["intent"]["chainId"] = str(chain_id)
    response = paid_get(gateway_server, encode_header(envelope))
    assert error_code(response) == ErrorCode.INVALID_PAYLOAD
    assert "chainId" in response.json()["error"]
    await assert_nothing_reserved(store_path)


def test_unknown_intent(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, include_intent=False)
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.UNKNOWN_INTENT


def test_intent_id_mismatch(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    # The payload names (and the mandate signs) an intent id that is not the embedded intent's.
    mandate = dataclasses.replace(signer.mandate("GET", PATH), intent_id=bytes(range(32)))
    payload = build_payload(mandate, mandate.sign(signer.key), signer.signed)
    header = encode_header({"x402Version": 2, "accepted": signer.requirement(), "payload": payload})
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.INTENT_ID_MISMATCH


# -- the mandate ----------------------------------------------------------------------------------


def test_mandate_expired(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, deadline=int(time.time()) + 30)
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.MANDATE_EXPIRED


def test_invalid_mandate_signature(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH, sign_key=SessionKey.generate())
    assert error_code(paid_get(gateway_server, header)) == ErrorCode.INVALID_MANDATE_SIGNATURE


async def test_request_mismatch(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", "/v1/forecast/rome")
    assert error_code(paid_get(gateway_server, header, path=PATH)) == ErrorCode.REQUEST_MISMATCH
    # The query string is part of the binding too.
    header = signer.header("GET", PATH)
    assert error_code(paid_get(gateway_server, header, path=PATH + "?days=7")) == ErrorCode.REQUEST_MISMATCH
    await assert_nothing_reserved(store_path)


# -- limits and replay (the store's atomic reservation) -------------------------------------------


def test_per_payment_cap(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(), deployment, max_per_payment=FORECAST_PRICE - 1)
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.PER_PAYMENT_CAP_EXCEEDED


async def test_budget(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(), deployment, max_amount=FORECAST_PRICE * 2 + 500)
    assert paid_get(gateway_server, signer.header("GET", PATH)).status_code == 200
    assert paid_get(gateway_server, signer.header("GET", PATH)).status_code == 200
    response = paid_get(gateway_server, signer.header("GET", PATH))
    assert error_code(response) == ErrorCode.BUDGET_EXCEEDED
    async with open_store(store_path) as store:
        assert [m.mandate.nonce for m in await store.mandates("accepted")] == [0, 1]


async def test_insufficient_escrow(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(escrow=FORECAST_PRICE + 500), deployment)
    assert paid_get(gateway_server, signer.header("GET", PATH)).status_code == 200
    response = paid_get(gateway_server, signer.header("GET", PATH))
    assert error_code(response) == ErrorCode.INSUFFICIENT_ESCROW


async def test_no_escrow_at_all(gateway_server, make_payer, deployment):
    signer = signer_for(make_payer(escrow=0), deployment)
    assert error_code(paid_get(gateway_server, signer.header("GET", PATH))) == ErrorCode.INSUFFICIENT_ESCROW


async def test_replayed_mandate(gateway_server, make_payer, deployment, store_path):
    signer = signer_for(make_payer(), deployment)
    header = signer.header("GET", PATH)
    first = paid_get(gateway_server, header)
    assert first.status_code == 200 and "PAYMENT-RESPONSE" in first.headers
    replay = paid_get(gateway_server, header)
    assert error_code(replay) == ErrorCode.NONCE_USED
    # A new mandate reusing the nonce for another request is refused the same way.
    header = signer.header("GET", "/v1/forecast/oslo", nonce=0)
    assert error_code(paid_get(gateway_server, header, path="/v1/forecast/oslo")) == ErrorCode.NONCE_USED
    async with open_store(store_path) as store:
        assert len(await store.mandates()) == 1



def test_session_key_outside_the_field(gateway_server, make_payer, deployment):
    """Found by the property test: a sessionKey coordinate >= the field modulus made Poseidon raise,
    which the gateway reported as ``chain_unavailable``; it is an invalid payload."""
    signer = signer_for(make_payer(), deployment)
    envelope = json.loads(base64.b64decode(signer.header("GET", PATH)))
    envelope["payload"]["intent"]["sessionKey"][0] = str(2**256 - 1)
    response = paid_get(gateway_server, encode_header(envelope))
    assert error_code(response) == ErrorCode.INVALID_PAYLOAD
    assert "payload.intent.sessionKey" in response.json()["error"]


def test_embedded_intent_must_match_intent_id_even_when_known(gateway_server, make_payer, deployment):
    """Found by the property test: once an intent was known, a tampered embedded copy was ignored
    instead of refused (``parse_payload`` documents ``intent_id_mismatch`` for it)."""
    signer = signer_for(make_payer(), deployment)
    assert paid_get(gateway_server, signer.header("GET", PATH)).status_code == 200
    envelope = json.loads(base64.b64decode(signer.header("GET", "/v1/forecast/oslo")))
    envelope["payload"]["intent"]["maxPerPayment"] = "999999"
    response = paid_get(gateway_server, encode_header(envelope), path="/v1/forecast/oslo")
    assert error_code(response) == ErrorCode.INTENT_ID_MISMATCH
