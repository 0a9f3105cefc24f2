"""The ``aep2`` scheme's payment payload: schema, parsing and building (docs/PROTOCOL.md §4).

Integers travel as decimal strings, byte strings and addresses as ``0x`` hex. Parsing is
strict (unknown fields refused) and every failure is a ``PaymentError`` with
``invalid_payload`` naming the offending field, e.g. ``payload.mandate.amount``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .eddsa import Signature
from .errors import ErrorCode, PaymentError
from .fields import FIELD_MODULUS
from .intent import Intent, SignedIntent
from .mandate import Mandate
from .payees import MAX_PAYEES
from .x402.models import SettleResponse

__all__ = ["ParsedPayload", "parse_payload", "build_payload", "accepted_receipt"]

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,77}")
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _decimal(value: Any) -> int:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise ValueError("must be a decimal string without sign or leading zeros")
    return int(value)


def _field_element(value: Any) -> int:
    number = _decimal(value)
    if number >= FIELD_MODULUS:
        raise ValueError("must be a BN254 field element (below the field modulus)")
    return number


def _hex32(value: Any) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise ValueError("must be 0x followed by 64 hex digits")
    return bytes.fromhex(value[2:])


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    return value


def _hexbytes(value: Any) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"0x(?:[0-9a-fA-F]{2}){1,256}", value):
        raise ValueError("must be 0x-prefixed hex bytes")
    return bytes.fromhex(value[2:])


Dec = Annotated[int, BeforeValidator(_decimal)]
FieldElement = Annotated[int, BeforeValidator(_field_element)]
Hex32 = Annotated[bytes, BeforeValidator(_hex32)]
Address = Annotated[str, BeforeValidator(_address)]
HexBytes = Annotated[bytes, BeforeValidator(_hexbytes)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _IntentModel(_Strict):
    payer: Address
    asset: Address
    sessionKey: Annotated[list[FieldElement], Field(min_length=2, max_length=2)]
    maxAmount: Dec
    maxPerPayment: Dec
    validAfter: Dec
    validBefore: Dec
    payees: Annotated[list[Address], Field(max_length=MAX_PAYEES)]
    processor: Address
    salt: Hex32
    chainId: Dec
    verifyingContract: Address
    signature: HexBytes


class _MandateModel(_Strict):
    payee: Address
    amount: Dec
    nonce: Dec
    deadline: Dec
    requestHash: Dec


class _SignatureModel(_Strict):
    R8x: Dec
    R8y: Dec
    S: Dec


class _PayloadModel(_Strict):
    intent: _IntentModel | None = None
    intentId: Hex32
    mandate: _MandateModel
    signature: _SignatureModel


class ParsedPayload:
    """A syntactically valid ``aep2`` payload (signatures not yet checked)."""

    __slots__ = ("signed_intent", "intent_id", "mandate", "signature")

    def __init__(
        self, signed_intent: SignedIntent | None, intent_id: bytes, mandate: Mandate, signature: Signature
    ) -> None:
        self.signed_intent = signed_intent
        self.intent_id = intent_id
        self.mandate = mandate
        self.signature = signature


def parse_payload(data: Any) -> ParsedPayload:
    """Validate an x402 ``payload`` object of scheme ``aep2``.

    Raises ``PaymentError(invalid_payload, "payload.<field>: <why>")`` on the first bad
    field, and ``PaymentError(intent_id_mismatch)`` when an embedded intent's EIP-712
    digest differs from ``intentId``.
    """
    parsed = _parse(data)
    if parsed.signed_intent is not None and parsed.signed_intent.intent.intent_id != parsed.intent_id:
        raise PaymentError(ErrorCode.INTENT_ID_MISMATCH, "payload.intentId: not the EIP-712 digest of payload.intent")
    return parsed


def _parse(data: Any) -> ParsedPayload:
    try:
        model = _PayloadModel.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in ("payload", *error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"{location}: {message}") from None
    try:
        mandate = Mandate(
            intent_id=model.intentId,
            payee=model.mandate.payee,
            amount=model.mandate.amount,
            nonce=model.mandate.nonce,
            deadline=model.mandate.deadline,
            request_hash=model.mandate.requestHash,
        )
    except ValueError as exc:
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"payload.{exc}") from None
    signed_intent = None
    try:
        if model.intent is not None:
            i = model.intent
            intent = Intent(
                payer=i.payer,
                asset=i.asset,
                session_key=(i.sessionKey[0], i.sessionKey[1]),
                max_amount=i.maxAmount,
                max_per_payment=i.maxPerPayment,
                valid_after=i.validAfter,
                valid_before=i.validBefore,
                chain_id=i.chainId,
                verifying_contract=i.verifyingContract,
                payees=tuple(i.payees),
                processor=i.processor,
                salt=i.salt,
            )
            signed_intent = SignedIntent(intent, i.signature)
    except ValueError as exc:
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"payload.intent.{exc}") from None
    signature = Signature(model.signature.R8x, model.signature.R8y, model.signature.S)
    return ParsedPayload(signed_intent, model.intentId, mandate, signature)


def build_payload(
    mandate: Mandate, signature: Signature, signed_intent: SignedIntent | None = None
) -> dict[str, Any]:
    """The JSON ``payload`` object for a signed mandate (include the intent on first use)."""
    payload: dict[str, Any] = {
        "intentId": "0x" + mandate.intent_id.hex(),
        "mandate": {
            "payee": mandate.payee_checksum,
            "amount": str(mandate.amount),
            "nonce": str(mandate.nonce),
            "deadline": str(mandate.deadline),
            "requestHash": str(mandate.request_hash),
        },
        "signature": {"R8x": str(signature.R8x), "R8y": str(signature.R8y), "S": str(signature.S)},
    }
    if signed_intent is not None:
        payload["intent"] = intent_json(signed_intent)
    return payload


def intent_json(signed_intent: SignedIntent) -> dict[str, Any]:
    """The wire form of a signed intent (also what the discovery and payer SDK store)."""
    intent = signed_intent.intent
    return {
        "payer": intent.payer,
        "asset": intent.asset,
        "sessionKey": [str(intent.session_key[0]), str(intent.session_key[1])],
        "maxAmount": str(intent.max_amount),
        "maxPerPayment": str(intent.max_per_payment),
        "validAfter": str(intent.valid_after),
        "validBefore": str(intent.valid_before),
        "payees": list(intent.payees),
        "processor": intent.processor,
        "salt": "0x" + intent.salt.hex(),
        "chainId": str(intent.chain_id),
        "verifyingContract": intent.verifying_contract,
        "signature": "0x" + signed_intent.signature.hex(),
    }


def parse_intent(data: Any) -> SignedIntent:
    """Parse the wire form of a signed intent; raises ``PaymentError(invalid_payload)``."""
    parsed = _parse(
        {
            "intent": data,
            "intentId": "0x" + "00" * 32,
            "mandate": {"payee": "0x" + "00" * 20, "amount": "0", "nonce": "0", "deadline": "0", "requestHash": "0"},
            "signature": {"R8x": "0", "R8y": "1", "S": "0"},
        }
    )
    assert parsed.signed_intent is not None
    return parsed.signed_intent


def accepted_receipt(payment_id: str, payer: str, amount: int, network: str) -> SettleResponse:
    """The x402 ``SettleResponse`` of an ``aep2`` mandate accepted for settlement
    (docs/PROTOCOL.md §4): ``success``, no transaction yet (the processor settles it in a
    batch, §7), ``amount`` in base units, and ``extra`` = ``{paymentId, scheme: "aep2",
    status: "accepted"}``."""
    return SettleResponse(
        success=True,
        transaction="",
        network=network,
        payer=payer,
        amount=str(amount),
        extra={"paymentId": payment_id, "scheme": "aep2", "status": "accepted"},
    )
