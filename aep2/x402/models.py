"""Typed x402 wire objects (pydantic): snake_case attributes, camelCase on the wire.

Shapes follow ``specs/x402-specification-v2.md`` (§5 ``PaymentRequired``, ``PaymentPayload``,
§7 facilitator ``/verify`` ``/settle`` ``/supported``), the v1 specification for the
``…V1`` models, and ``specs/schemes/exact/scheme_exact_evm.md`` for ``ExactEvmPayload``.
Amounts are decimal strings of token base units; addresses are 0x hex. Unknown fields are
ignored on input, so newer clients still parse. ``model_validate`` raises pydantic's
``ValidationError``, whose ``errors()`` name the offending field by its wire name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

__all__ = [
    "X402Model",
    "Uint256",
    "ResourceInfo",
    "PaymentRequirements",
    "PaymentRequired",
    "PaymentPayload",
    "PaymentRequirementsV1",
    "PaymentRequiredV1",
    "PaymentPayloadV1",
    "ExactEvmAuthorization",
    "ExactEvmPayload",
    "VerifyRequest",
    "VerifyResponse",
    "SettleRequest",
    "SettleResponse",
    "SupportedKind",
    "SupportedResponse",
]

#: A uint256 as a decimal string without leading zeros.
Uint256 = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,77})$")]
Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
Bytes32 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{64}$")]
HexBytes = Annotated[str, StringConstraints(pattern=r"^0x(?:[0-9a-fA-F]{2})+$", max_length=16_384)]


class X402Model(BaseModel):
    """Base of every wire object: camelCase aliases, either name accepted on input."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the wire: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ResourceInfo(X402Model):
    """The resource a payment is for (v2 ``ResourceInfo``); ``service_name`` and ``tags`` are
    the bazaar extension's service metadata (``specs/extensions/bazaar.md``)."""

    url: str
    description: str = ""
    mime_type: str = ""
    service_name: str | None = None
    tags: list[str] | None = None


class PaymentRequirements(X402Model):
    """One way to pay (v2 ``PaymentRequirements``, an ``accepts`` entry): ``amount`` base
    units of ``asset`` on ``network`` (CAIP-2) to ``pay_to``."""

    scheme: str
    network: str
    asset: str
    amount: Uint256
    pay_to: str
    max_timeout_seconds: int = Field(ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)


class PaymentRequired(X402Model):
    """The 402 quote (v2 ``PaymentRequired``, base64 JSON in ``PAYMENT-REQUIRED``)."""

    x402_version: Literal[2] = 2
    error: str | None = None
    resource: ResourceInfo
    accepts: list[PaymentRequirements]
    extensions: dict[str, Any] | None = None


class PaymentPayload(X402Model):
    """A client's payment (v2 ``PaymentPayload``, base64 JSON in ``PAYMENT-SIGNATURE``):
    the requirements it ``accepted`` and the scheme's ``payload``."""

    x402_version: Literal[2]
    resource: ResourceInfo | None = None
    accepted: PaymentRequirements
    payload: dict[str, Any]
    extensions: dict[str, Any] | None = None


class PaymentRequirementsV1(X402Model):
    """A v1 ``accepts`` entry: v1 network names, ``maxAmountRequired``, resource inline."""

    scheme: str
    network: str
    max_amount_required: Uint256
    resource: str
    description: str = ""
    mime_type: str = ""
    pay_to: str
    max_timeout_seconds: int = Field(ge=0)
    asset: str
    output_schema: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    @classmethod
    def from_v2(cls, requirements: PaymentRequirements, resource: ResourceInfo, network: str) -> PaymentRequirementsV1:
        """The v1 form of v2 ``requirements`` for ``resource``, on v1 ``network`` (a v1 name
        where the chain has one: ``aep2.x402.networks.v1_network``)."""
        return cls(
            scheme=requirements.scheme,
            network=network,
            max_amount_required=requirements.amount,
            resource=resource.url,
            description=resource.description,
            mime_type=resource.mime_type,
            pay_to=requirements.pay_to,
            max_timeout_seconds=requirements.max_timeout_seconds,
            asset=requirements.asset,
            extra=requirements.extra,
        )


class PaymentRequiredV1(X402Model):
    """The v1 402 JSON body."""

    x402_version: Literal[1] = 1
    error: str = ""
    accepts: list[PaymentRequirementsV1]


class PaymentPayloadV1(X402Model):
    """A v1 payment (base64 JSON in ``X-PAYMENT``)."""

    x402_version: Literal[1]
    scheme: str
    network: str
    payload: dict[str, Any]


class ExactEvmAuthorization(X402Model):
    """EIP-3009 ``TransferWithAuthorization`` message: ``value`` base units from ``from_``
    to ``to``, valid strictly between ``valid_after`` and ``valid_before`` (unix seconds)."""

    from_: Address = Field(alias="from")
    to: Address
    value: Uint256
    valid_after: Uint256
    valid_before: Uint256
    nonce: Bytes32


class ExactEvmPayload(X402Model):
    """The ``exact`` EVM scheme's payload: an EIP-3009 authorization and its signature (65-byte
    ECDSA, or any bytes an ERC-1271 wallet at ``authorization.from`` accepts)."""

    signature: HexBytes
    authorization: ExactEvmAuthorization


class VerifyRequest(X402Model):
    """Body of facilitator ``POST /verify`` (and ``/settle``): a v2 or v1 payment and the
    requirements it must meet (v1 requirements for a v1 payment)."""

    x402_version: Literal[1, 2]
    payment_payload: PaymentPayload | PaymentPayloadV1
    payment_requirements: PaymentRequirements | PaymentRequirementsV1


SettleRequest = VerifyRequest


class VerifyResponse(X402Model):
    """Answer of ``POST /verify``: ``is_valid``, else ``invalid_reason`` (an x402 error code)
    and a human ``invalid_message``."""

    is_valid: bool
    invalid_reason: str | None = None
    invalid_message: str | None = None
    payer: str | None = None
    extensions: dict[str, Any] | None = None


class SettleResponse(X402Model):
    """Answer of ``POST /settle``, and the ``PAYMENT-RESPONSE`` header: ``transaction`` is the
    hash ("" when nothing was sent). Our own fields (payment id, scheme, status) go in
    ``extra``, where SDK clients keep them."""

    success: bool
    error_reason: str | None = None
    error_message: str | None = None
    payer: str | None = None
    transaction: str = ""
    network: str
    amount: str | None = None
    extensions: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


class SupportedKind(X402Model):
    """One ``(x402Version, scheme, network)`` a facilitator verifies and settles."""

    x402_version: int
    scheme: str
    network: str
    extra: dict[str, Any] | None = None


class SupportedResponse(X402Model):
    """Answer of ``GET /supported``: ``signers`` maps CAIP-2 patterns (``eip155:*``) to the
    addresses the facilitator sends transactions from."""

    kinds: list[SupportedKind]
    extensions: list[str] = Field(default_factory=list)
    signers: dict[str, list[str]] = Field(default_factory=dict)
