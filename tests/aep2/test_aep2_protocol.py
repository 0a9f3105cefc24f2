"""Protocol core: signatures, intent digests (cross-checked with the contract), payload encoding."""

from __future__ import annotations

import base64

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from aep2 import babyjubjub as bjj
from aep2.deployment import contract_artifact
from aep2.eddsa import SessionKey, Signature, verify
from aep2.errors import ErrorCode, PaymentError
from aep2.fields import FIELD_MODULUS
from aep2.intent import Intent
from aep2.mandate import MAX_AMOUNT, MAX_DEADLINE, MAX_NONCE, Mandate, request_hash
from aep2.payload import build_payload, parse_payload
from aep2.x402 import decode_header, encode_header

KEY = SessionKey(0xABCDEF)
OWNER = Account.create()
PROCESSOR = "0x" + "55" * 20


def intent(**overrides) -> Intent:
    fields = dict(
        payer=OWNER.address, asset="0x" + "11" * 20, session_key=KEY.public_key, max_amount=10**6,
        max_per_payment=10**4, valid_after=0, valid_before=2**40, chain_id=31337,
        verifying_contract="0x" + "22" * 20, payees=("0x" + "44" * 20, "0x" + "33" * 20), processor=PROCESSOR,
        salt=b"\x07" * 32,
    )
    fields.update(overrides)
    return Intent(**fields)


@settings(max_examples=30, deadline=None)
@given(message=st.integers(0, FIELD_MODULUS - 1), secret=st.integers(1, bjj.SUBGROUP_ORDER - 1))
def test_signatures_verify_and_bind_the_message(message, secret):
    key = SessionKey(secret)
    signature = key.sign(message)
    assert verify(key.public_key, message, signature)
    assert not verify(key.public_key, (message + 1) % FIELD_MODULUS, signature)
    assert not verify(KEY.public_key if secret != KEY.secret else SessionKey(2).public_key, message, signature)


def test_malformed_signatures_are_false_not_errors():
    signature = KEY.sign(42)
    assert not verify(KEY.public_key, 42, Signature(signature.R8x, signature.R8y, signature.S + bjj.SUBGROUP_ORDER))
    assert not verify(KEY.public_key, 42, Signature(1, 1, signature.S))  # R8 off the curve
    assert not verify((1, 1), 42, signature)  # key off the curve
    assert not verify(bjj.IDENTITY, 42, signature)  # small-order key


def test_request_hash_binds_method_path_and_body():
    base = request_hash("GET", "/v1/forecast/paris")
    assert base < 2**160
    assert len({base, request_hash("POST", "/v1/forecast/paris"), request_hash("GET", "/v1/forecast/rome"),
                request_hash("GET", "/v1/forecast/paris?x=1"), request_hash("GET", "/v1/forecast/paris", b"x")}) == 5
    assert request_hash("get", "/v1/forecast/paris") == base


_mandates = st.builds(
    Mandate,
    intent_id=st.binary(min_size=32, max_size=32),
    payee=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    amount=st.integers(0, MAX_AMOUNT),
    nonce=st.integers(0, MAX_NONCE),
    deadline=st.integers(0, MAX_DEADLINE),
    request_hash=st.integers(0, 2**160 - 1),
)


@settings(max_examples=60, deadline=None)
@given(m=_mandates)
def test_payload_round_trips_through_the_header(m):
    signature = KEY.sign(m.message())
    header = encode_header({"x402Version": 2, "payload": build_payload(m, signature)})
    parsed = parse_payload(decode_header(header)["payload"])
    assert (parsed.mandate, parsed.signature, parsed.intent_id) == (m, signature, m.intent_id)
    assert verify(KEY.public_key, parsed.mandate.message(), parsed.signature)


@settings(max_examples=60, deadline=None)
@given(m=_mandates, other=_mandates)
def test_distinct_mandates_sign_distinct_messages(m, other):
    # The packed Poseidon(3) message is injective over in-range fields.
    if m != other:
        assert m.message() != other.message()


def test_signed_intent_with_embedded_copy_round_trips():
    signed = intent().sign(OWNER.key)
    m = Mandate(signed.intent.intent_id, "0x" + "33" * 20, 5, 0, 10**9, 1)
    parsed = parse_payload(build_payload(m, KEY.sign(m.message()), signed))
    assert parsed.signed_intent == signed and parsed.signed_intent.is_valid()


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda p: p["mandate"].update(amount="01"), "payload.mandate.amount"),
        (lambda p: p["mandate"].update(nonce=str(2**40)), "payload.mandate.nonce"),
        (lambda p: p["mandate"].update(payee="0x12"), "payload.mandate.payee"),
        (lambda p: p.update(intentId="0x00"), "payload.intentId"),
        (lambda p: p["signature"].pop("S"), "payload.signature.S"),
        (lambda p: p.update(extra="x"), "payload.extra"),
    ],
)
def test_schema_errors_name_the_field(mutate, field):
    m = Mandate(b"\x01" * 32, "0x" + "33" * 20, 5, 0, 10**9, 1)
    payload = build_payload(m, KEY.sign(m.message()))
    mutate(payload)
    with pytest.raises(PaymentError) as refused:
        parse_payload(payload)
    assert refused.value.code == ErrorCode.INVALID_PAYLOAD and refused.value.reason.startswith(field)


@pytest.mark.parametrize("value", ["%%%", base64.b64encode(b"not json").decode(), base64.b64encode(b"[1]").decode()])
def test_bad_headers_are_invalid_payment_header(value):
    with pytest.raises(PaymentError) as refused:
        decode_header(value)
    assert refused.value.code == ErrorCode.INVALID_HEADER


def test_intent_validation_names_the_field():
    with pytest.raises(ValueError, match="validBefore"):
        intent(valid_after=10, valid_before=10)
    with pytest.raises(ValueError, match="payees"):
        intent(payees=("0x" + "33" * 20, "0x" + "33" * 20))
    with pytest.raises(ValueError, match="^processor"):
        intent(processor="0x" + "00" * 20)
    for chain_id in (0, 2**256):
        with pytest.raises(ValueError, match="^chainId"):
            intent(chain_id=chain_id)


@pytest.mark.parametrize(
    "field, value",
    [("chainId", str(2**256)), ("chainId", str(10**77 * 9)), ("chainId", "0"), ("processor", "0x" + "00" * 20)],
)
def test_out_of_range_intent_fields_are_invalid_payload(field, value):
    """Values the schema's shape admits but the intent refuses are ``invalid_payload`` naming the
    field (never an exception the gateway would misreport as ``chain_unavailable``)."""
    signed = intent().sign(OWNER.key)
    m = Mandate(signed.intent.intent_id, "0x" + "33" * 20, 5, 0, 10**9, 1)
    payload = build_payload(m, KEY.sign(m.message()), signed)
    payload["intent"][field] = value
    with pytest.raises(PaymentError) as refused:
        parse_payload(payload)
    assert refused.value.code == ErrorCode.INVALID_PAYLOAD and field in refused.value.reason


@pytest.mark.chain
def test_intent_id_matches_the_contracts_eip712_digest(deployment):
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    settlement = w3.eth.contract(address=deployment.settlement, abi=contract_artifact("Settlement")["abi"])
    i = intent(chain_id=deployment.chain_id, verifying_contract=deployment.settlement)
    message = i.message()
    on_chain = settlement.functions.intentDigest(tuple(message[k] for k in (
        "payer", "asset", "sessionKeyHash", "maxAmount", "maxPerPayment", "validAfter", "validBefore", "payeesRoot",
        "processor", "salt"))).call()
    assert bytes(on_chain) == i.intent_id
