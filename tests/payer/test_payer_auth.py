"""``AEP2Auth`` driven like httpx's ``tests/test_auth.py``: no network, ``next(flow)``, ``flow.send``."""

from __future__ import annotations

import time

import httpx
import pytest
from payer_fixtures import (
    ASSET,
    PAYEE,
    PROCESSOR,
    SETTLEMENT,
    FakeGateway,
    challenge,
    receipt_response,
    requirement,
    v1_challenge,
)

from aep2.eddsa import Signature, verify
from aep2.errors import ErrorCode
from aep2.mandate import request_hash
from aep2.payload import parse_payload
from aep2.x402 import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    decode_header,
    encode_header,
)
from payer import (
    AEP2Auth,
    BudgetExceeded,
    IntentExpired,
    IntentNotYetValid,
    MalformedChallenge,
    NoAcceptableRequirement,
    PayeeNotAllowed,
    PaymentRefused,
    PerPaymentCapExceeded,
)

URL = "https://api.test/weather?city=Z%C3%BCrich&units=metric"


def start(auth: AEP2Auth, request: httpx.Request):
    """Run the sync wrapper up to the first yielded request (it reads the request body)."""
    flow = auth.sync_auth_flow(request)
    assert next(flow) is request
    return flow


def paid(flow, response: httpx.Response) -> httpx.Request:
    retried = flow.send(response)
    assert PAYMENT_SIGNATURE_HEADER in retried.headers
    return retried


def finish(flow, response: httpx.Response) -> None:
    with pytest.raises(StopIteration):
        flow.send(response)


def test_unpriced_request_passes_through(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    finish(flow, httpx.Response(200))
    assert PAYMENT_SIGNATURE_HEADER not in request.headers
    assert auth.spent == 0 and auth.receipts == []


def test_402_is_answered_with_a_verifiable_mandate(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    body = b'{"q": "weather"}'
    request = httpx.Request("POST", URL, content=body)
    signed_after = int(time.time())
    flow = start(auth, request)
    entry = requirement(10)
    retried = paid(flow, challenge(entry, url=URL))

    payment = decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])
    assert payment["x402Version"] == 2
    assert payment["accepted"] == entry  # verbatim
    assert payment["resource"] == {"url": URL}
    parsed = parse_payload(payment["payload"])
    mandate = parsed.mandate
    assert parsed.intent_id == signed_intent.intent.intent_id
    assert parsed.signed_intent == signed_intent  # first use: intent included
    assert verify(session_key.public_key, mandate.message(), parsed.signature)
    assert mandate.request_hash == request_hash("POST", "/weather?city=Z%C3%BCrich&units=metric", body)
    assert mandate.payee == PAYEE.lower()
    assert (mandate.amount, mandate.nonce) == (10, 0)
    # Default lifetime (above minDeadlineSeconds), counted from when the mandate was signed.
    assert signed_after + 3600 <= mandate.deadline <= int(time.time()) + 3600

    finish(flow, receipt_response(payment))
    assert auth.spent == 10
    assert auth.receipts[0]["amount"] == "10"
    assert auth.remaining == 90


def test_known_intent_is_omitted_until_unknown_intent(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key, raise_on_refusal=False)

    def pay(response_402: httpx.Response, answer=None):
        request = httpx.Request("GET", URL)
        flow = start(auth, request)
        retried = paid(flow, response_402)
        payment = decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])
        finish(flow, answer if answer is not None else receipt_response(payment))
        return payment["payload"]

    assert "intent" in pay(challenge())
    assert "intent" not in pay(challenge())
    assert "intent" in pay(challenge(requirement(intentKnown=False)))
    # The gateway lost the intent: refused, and the next payment carries it again.
    assert "intent" not in pay(challenge(), challenge(error="unknown_intent: payload.intent: required"))
    assert "intent" in pay(challenge())


def test_refusal_releases_the_spend_but_not_the_nonce(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge(requirement(20)))
    with pytest.raises(PaymentRefused) as info:
        flow.send(challenge(requirement(20), error="nonce_used: payload.mandate.nonce: 0"))
    assert info.value.code == ErrorCode.NONCE_USED
    assert info.value.reason == "payload.mandate.nonce: 0"
    assert info.value.response is not None and info.value.response.status_code == 402
    assert auth.spent == 0 and auth.remaining == 100
    assert auth.state.next_nonce(signed_intent.intent.intent_id) == 1


def test_refusal_can_be_returned_instead_of_raised(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key, raise_on_refusal=False)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge())
    finish(flow, challenge(error="amount_mismatch: payload.mandate.amount"))
    assert auth.remaining == 100


def test_never_signs_twice_for_one_request(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key, raise_on_refusal=False)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge())
    finish(flow, challenge())  # a bare 402 again: no second mandate
    assert auth.state.next_nonce(signed_intent.intent.intent_id) == 1


def test_budget_exhaustion_raises_before_a_second_request(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    for _ in range(4):
        flow = start(auth, httpx.Request("GET", URL))
        payment = decode_header(paid(flow, challenge(requirement(25))).headers[PAYMENT_SIGNATURE_HEADER])
        finish(flow, receipt_response(payment))
    assert auth.spent == 100

    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    with pytest.raises(BudgetExceeded, match="amount: 1 would exceed the intent's maxAmount 100"):
        flow.send(challenge(requirement(1)))
    assert PAYMENT_SIGNATURE_HEADER not in request.headers
    assert auth.state.next_nonce(signed_intent.intent.intent_id) == 4


def test_per_payment_cap(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    with pytest.raises(PerPaymentCapExceeded, match="amount: 26 exceeds the intent's maxPerPayment 25"):
        flow.send(challenge(requirement(26)))
    assert PAYMENT_SIGNATURE_HEADER not in request.headers
    assert auth.remaining == 100


def test_expired_and_not_yet_valid_intents(signed_intent, session_key):
    intent = signed_intent.intent
    auth = AEP2Auth(signed_intent, session_key, clock=lambda: intent.valid_before)
    with pytest.raises(IntentExpired, match="validBefore"):
        start(auth, httpx.Request("GET", URL)).send(challenge())
    auth = AEP2Auth(signed_intent, session_key, clock=lambda: intent.valid_after - 1)
    with pytest.raises(IntentNotYetValid, match="validAfter"):
        start(auth, httpx.Request("GET", URL)).send(challenge())


def test_payee_not_allowed(make_intent, session_key):
    allowed = "0x" + "cc" * 20
    signed = make_intent(payees=[allowed])
    auth = AEP2Auth(signed, session_key)
    with pytest.raises(PayeeNotAllowed, match="payTo: 0x" + "be" * 20):
        start(auth, httpx.Request("GET", URL)).send(challenge())
    # An entry with an allowed payee further down is chosen.
    flow = start(auth, httpx.Request("GET", URL))
    retried = paid(flow, challenge(requirement(), requirement(pay_to=allowed)))
    payment = decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])
    assert payment["accepted"]["payTo"] == allowed


@pytest.mark.parametrize(
    "entry",
    [
        requirement(scheme="exact"),
        requirement(chain_id=1),
        requirement(asset="0x" + "a2" * 20),
        requirement(settlement="0x" + "5f" * 20),
        requirement(processor="0x" + "9d" * 20),
    ],
    ids=["scheme", "network", "asset", "settlement", "processor"],
)
def test_no_acceptable_requirement(signed_intent, session_key, entry):
    auth = AEP2Auth(signed_intent, session_key)
    with pytest.raises(NoAcceptableRequirement, match="accepts: no aep2 entry for network eip155:31337"):
        start(auth, httpx.Request("GET", URL)).send(challenge(entry))


def test_an_entry_naming_no_processor_is_tried(signed_intent, session_key):
    """Gateways of other implementations may not say which processor settles: the intent is
    offered (the gateway refuses it with ``processor_mismatch`` if it is not its processor)."""
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    anonymous = requirement(processor=None)
    retried = paid(flow, challenge(requirement(processor="0x" + "9d" * 20), anonymous))
    assert decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])["accepted"] == anonymous


def test_picks_the_matching_entry_among_others(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    ours = requirement(7)
    retried = paid(flow, challenge(requirement(scheme="exact"), requirement(chain_id=8453), ours))
    assert decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])["accepted"] == ours


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("%%%", "PAYMENT-REQUIRED: not base64"),
        (encode_header({"x402Version": 2, "accepts": "nope"}), "PAYMENT-REQUIRED: accepts"),
        (encode_header({"x402Version": 2, "accepts": [requirement(amount=-1)]}), r"accepts\[0\].amount: '-1'"),
        (encode_header({"x402Version": 2, "accepts": [{**requirement(), "payTo": "0x12"}]}), r"accepts\[0\].payTo"),
        (encode_header({"x402Version": 2, "accepts": [{**requirement(), "extra": None}]}), r"accepts\[0\].extra"),
    ],
    ids=["base64", "accepts", "amount", "payTo", "extra"],
)
def test_malformed_challenge_names_the_header(signed_intent, session_key, header, match):
    auth = AEP2Auth(signed_intent, session_key)
    response = httpx.Response(402, headers={PAYMENT_REQUIRED_HEADER: header})
    with pytest.raises(MalformedChallenge, match=match) as info:
        start(auth, httpx.Request("GET", URL)).send(response)
    assert info.value.header == PAYMENT_REQUIRED_HEADER
    if header == "%%%":
        assert info.value.__cause__ is not None


def test_missing_header_and_bad_body_is_malformed(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    with pytest.raises(MalformedChallenge, match="PAYMENT-REQUIRED: header missing") as info:
        start(auth, httpx.Request("GET", URL)).send(httpx.Response(402, text="pay up"))
    assert isinstance(info.value.__cause__, ValueError)


def test_v1_body_fallback_pays_with_x_payment(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    retried = flow.send(v1_challenge(requirement(5)))
    assert PAYMENT_SIGNATURE_HEADER not in retried.headers
    payment = decode_header(retried.headers[X_PAYMENT_HEADER], header=X_PAYMENT_HEADER)
    assert payment["x402Version"] == 1 and payment["scheme"] == "aep2"
    assert payment["network"] == "eip155:31337"
    parsed = parse_payload(payment["payload"])
    assert parsed.mandate.amount == 5
    assert verify(session_key.public_key, parsed.mandate.message(), parsed.signature)


def test_error_status_without_receipt_releases(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge())
    finish(flow, httpx.Response(500))
    assert auth.remaining == 100 and auth.spent == 0


def test_success_without_receipt_stays_reserved(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge())
    finish(flow, httpx.Response(200))
    assert auth.spent == 0 and auth.remaining == 90


def test_deadline_follows_min_deadline_seconds(signed_intent, session_key):
    now = int(time.time())
    auth = AEP2Auth(signed_intent, session_key, deadline_seconds=60, clock=lambda: now)
    flow = start(auth, httpx.Request("GET", URL))
    retried = paid(flow, challenge(requirement(minDeadlineSeconds=7200)))
    payment = decode_header(retried.headers[PAYMENT_SIGNATURE_HEADER])
    assert payment["payload"]["mandate"]["deadline"] == str(now + 7200)


def test_session_key_must_match_the_intent(signed_intent):
    from aep2.eddsa import SessionKey

    with pytest.raises(ValueError, match="session_key"):
        AEP2Auth(signed_intent, SessionKey.generate())


# -- Intent Mode -----------------------------------------------------------------------------


def test_prepay_sends_the_mandate_with_the_first_request(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    entry = requirement(10)
    auth.prepay(entry, method="GET", url="https://api.test/weather")
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    payment = decode_header(request.headers[PAYMENT_SIGNATURE_HEADER])
    assert payment["accepted"] == entry
    assert payment["resource"] == {"url": URL}
    parsed = parse_payload(payment["payload"])
    assert parsed.mandate.request_hash == request_hash("GET", "/weather?city=Z%C3%BCrich&units=metric")
    finish(flow, receipt_response(payment))
    assert auth.spent == 10


def test_prepaid_request_refused_is_not_signed_again(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key, prices={("GET", "/weather"): requirement(10)})
    flow = start(auth, httpx.Request("GET", URL))
    with pytest.raises(PaymentRefused) as info:
        flow.send(challenge(requirement(12), error="amount_mismatch: payload.mandate.amount: 10"))
    assert info.value.code == ErrorCode.AMOUNT_MISMATCH
    assert auth.prices == {} and auth.remaining == 100
    # The next request negotiates through the 402.
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    assert PAYMENT_SIGNATURE_HEADER not in request.headers
    assert paid(flow, challenge(requirement(12)))


def test_prepay_rejects_requirements_the_intent_cannot_pay(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    with pytest.raises(NoAcceptableRequirement):
        auth.prepay(requirement(asset="0x" + "00" * 20), url="/weather")


def test_signature_object_roundtrip(signed_intent, session_key):
    # build_payload encodes the signature fields as decimal strings of the Signature.
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    payload = decode_header(paid(flow, challenge()).headers[PAYMENT_SIGNATURE_HEADER])["payload"]
    signature = Signature(*(int(payload["signature"][k]) for k in ("R8x", "R8y", "S")))
    assert verify(session_key.public_key, parse_payload(payload).mandate.message(), signature)


# -- with real clients -------------------------------------------------------------------------


def test_sync_client_against_a_fake_gateway(signed_intent, session_key):
    gateway = FakeGateway(price=10)
    auth = AEP2Auth(signed_intent, session_key)
    with httpx.Client(transport=httpx.MockTransport(gateway), auth=auth) as client:
        for i in range(3):
            response = client.post(URL, json={"i": i})
            assert response.status_code == 200
            assert [r.status_code for r in response.history] == [402]
    assert gateway.nonces == [0, 1, 2]
    assert "intent" in gateway.payments[0]["payload"]
    assert all("intent" not in p["payload"] for p in gateway.payments[1:])
    assert auth.spent == 30 and len(auth.receipts) == 3


def test_sync_client_refusal(signed_intent, session_key):
    gateway = FakeGateway(price=10, refuse=ErrorCode.INSUFFICIENT_ESCROW)
    auth = AEP2Auth(signed_intent, session_key)
    with httpx.Client(transport=httpx.MockTransport(gateway), auth=auth) as client:
        with pytest.raises(PaymentRefused, match="insufficient_escrow"):
            client.get(URL)
    assert auth.remaining == 100


async def test_async_client_against_a_fake_gateway(signed_intent, session_key):
    gateway = FakeGateway(price=10)
    auth = AEP2Auth(signed_intent, session_key)
    async with httpx.AsyncClient(transport=httpx.MockTransport(gateway), auth=auth) as client:
        response = await client.get(URL)
        assert response.status_code == 200 and len(response.history) == 1
        response = await client.get(URL)
    assert auth.spent == 20 and gateway.nonces == [0, 1]


def test_discover_records_prices_and_prepays(signed_intent, session_key):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/skill.json":
            return httpx.Response(
                200,
                json={
                    "routes": [
                        {"method": "GET", "path": "/weather", "price": "10", "scheme": "aep2"},
                        {"method": "GET", "path": "/other-chain", "price": "10", "network": "eip155:1"},
                        {"method": "GET", "path": "/items/{id}", "price": "3"},
                        {"method": "POST", "path": "/exact", "price": "3", "scheme": "exact"},
                        {"method": "GET", "path": "/elsewhere", "price": "10", "processor": "0x" + "9d" * 20},
                    ],
                    "aep2": {
                        "network": "eip155:31337",
                        "asset": ASSET,
                        "payTo": PAYEE,
                        "settlement": SETTLEMENT,
                        "processor": PROCESSOR,
                        "minDeadlineSeconds": 600,
                    },
                },
            )
        return gateway(request)

    gateway = FakeGateway(price=10)
    auth = AEP2Auth(signed_intent, session_key)
    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client:
        prices = auth.discover(client, "https://api.test")
        assert list(prices) == [("GET", "https://api.test/weather")]  # not /elsewhere: another processor
        assert prices[("GET", "https://api.test/weather")]["extra"]["processor"] == PROCESSOR
        response = client.get(URL)
    assert response.status_code == 200 and response.history == []
    assert gateway.nonces == [0] and auth.spent == 10


async def test_async_discover(signed_intent, session_key):
    doc = {"routes": [{"method": "GET", "path": "/weather", "price": "10"}],
           "aep2": {"network": "eip155:31337", "asset": ASSET, "payTo": PAYEE, "settlement": SETTLEMENT}}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=doc))
    auth = AEP2Auth(signed_intent, session_key)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        prices = await auth.discover(client, "https://api.test")
    assert ("GET", "https://api.test/weather") in prices


def test_malformed_entries_for_other_networks_are_ignored(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    other = {**requirement(chain_id=1), "extra": None}
    flow = start(auth, httpx.Request("GET", URL))
    assert paid(flow, challenge(other, requirement()))


def test_receipt_with_success_false_is_a_refusal(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    flow = start(auth, httpx.Request("GET", URL))
    paid(flow, challenge())
    failed = {"success": False, "errorReason": "insufficient_escrow", "transaction": ""}
    with pytest.raises(PaymentRefused) as info:
        flow.send(httpx.Response(200, headers={"PAYMENT-RESPONSE": encode_header(failed)}))
    assert info.value.code == "insufficient_escrow"
    assert auth.remaining == 100


def test_request_already_carrying_a_payment_is_not_paid_again(signed_intent, session_key):
    auth = AEP2Auth(signed_intent, session_key)
    request = httpx.Request("GET", URL)
    flow = start(auth, request)
    paid(flow, challenge())
    again = start(auth, request)  # the same request object sent a second time
    finish(again, challenge())
    assert auth.state.next_nonce(signed_intent.intent.intent_id) == 1
