"""Reading a gateway's side of the x402 exchange: the 402 challenge, its refusals, its receipt.

Shared by the payer's two ways to pay, ``AEP2Auth`` (the agent signs) and ``WalletAuth`` (a
co-wallet signs): both read the same wire (x402 HTTP transport: v2 ``PAYMENT-REQUIRED``
header or the v1 JSON body; the refusal's ``error`` as ``"<code>: <reason>"``; the receipt in
``PAYMENT-RESPONSE`` or v1 ``X-PAYMENT-RESPONSE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from aep2.errors import ErrorCode, PaymentError
from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER, decode_header
from aep2.x402.models import PaymentRequirements, PaymentRequirementsV1

from .errors import MalformedChallenge

__all__ = ["BODY", "Challenge", "check_challenge", "check_entry", "is_refusal", "parse_challenge", "read_receipt", "refusal"]

#: The ``source`` of a challenge read from the v1 JSON body.
BODY = "402 body"


@dataclass(frozen=True)
class Challenge:
    """A parsed 402: ``version`` 2 (``PAYMENT-REQUIRED`` header, or a v2 body) or 1 (the v1
    body); ``accepts`` the raw entries; ``resource`` the v2 ``ResourceInfo`` (the request's URL
    when the gateway gave none) or the v1 body's; ``source`` the header name or ``BODY``."""

    version: int
    error: str | None
    resource: Any
    accepts: list[dict[str, Any]]
    source: str


def parse_challenge(response: httpx.Response, request: httpx.Request) -> Challenge:
    """Read the 402 ``response`` to ``request`` (its body must have been read).

    Raises ``MalformedChallenge`` naming the header (or ``"402 body"``) and the field.
    """
    header = response.headers.get(PAYMENT_REQUIRED_HEADER)
    if header is not None:
        try:
            data = decode_header(header, header=PAYMENT_REQUIRED_HEADER)
        except PaymentError as exc:
            raise MalformedChallenge(exc.reason, header=PAYMENT_REQUIRED_HEADER) from exc
        source, version = PAYMENT_REQUIRED_HEADER, 2
    else:
        try:
            data = response.json()
        except ValueError as exc:
            raise MalformedChallenge("header missing and the 402 body is not JSON", header=PAYMENT_REQUIRED_HEADER) from exc
        if not isinstance(data, dict):
            raise MalformedChallenge("header missing and the 402 body is not a JSON object", header=PAYMENT_REQUIRED_HEADER)
        source = BODY
        version = 2 if data.get("x402Version") == 2 else 1
    check_challenge(data, source, version=version)
    resource = data.get("resource")
    if version == 2 and resource is None:
        resource = {"url": str(request.url)}
    return Challenge(version, data.get("error"), resource, data["accepts"], source)


def check_challenge(data: dict[str, Any], source: str, *, version: int = 2) -> None:
    """Check the shape of an x402 ``PaymentRequired`` object read from ``source`` (a header
    name, ``"402 body"``, or an MCP result field): ``accepts`` a list of objects, ``error``
    a string or absent, and in v2 ``resource`` an object or absent.

    Raises ``MalformedChallenge`` naming ``source`` and the field.
    """
    accepts = data.get("accepts")
    if not isinstance(accepts, list) or not all(isinstance(entry, dict) for entry in accepts):
        raise MalformedChallenge(f"accepts: {accepts!r:.80} is not a list of objects", header=source)
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise MalformedChallenge(f"error: {error!r:.80} is not a string", header=source)
    resource = data.get("resource")
    if version == 2 and resource is not None and not isinstance(resource, dict):
        raise MalformedChallenge(f"resource: {resource!r:.80} is not an object", header=source)


def check_entry(index: int, entry: dict[str, Any], source: str) -> None:
    """Validate ``accepts[index]``, an ``aep2`` offer, with the x402 wire model (v2 ``amount``
    or v1 ``maxAmountRequired``), then what ``aep2`` adds: an ``extra`` object, an EVM
    ``payTo`` and a non-negative integer ``extra.minDeadlineSeconds``.

    Raises ``MalformedChallenge`` naming ``accepts[index].<field>``.
    """
    where = f"accepts[{index}]"
    extra = entry.get("extra")
    if not isinstance(extra, dict):
        raise MalformedChallenge(f"{where}.extra: {extra!r:.80} is not an object", header=source)
    model = PaymentRequirementsV1 if "maxAmountRequired" in entry else PaymentRequirements
    try:
        model.model_validate(entry)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise MalformedChallenge(f"{where}.{field}: {error.get('input')!r:.80} ({error['msg']})", header=source) from None
    pay_to = entry["payTo"]
    if len(pay_to) != 42 or not pay_to.startswith("0x"):
        raise MalformedChallenge(f"{where}.payTo: {pay_to!r:.80} is not an address", header=source)
    try:
        int(pay_to, 16)
    except ValueError as exc:
        raise MalformedChallenge(f"{where}.payTo: {pay_to!r:.80} is not an address", header=source) from exc
    minimum = extra.get("minDeadlineSeconds", 0)
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
        raise MalformedChallenge(f"{where}.extra.minDeadlineSeconds: {minimum!r:.80} is not a non-negative integer", header=source)


def refusal(response: httpx.Response) -> tuple[str, str]:
    """``(code, reason)`` from a refusing 402's ``error`` (header first, then body)."""
    error: Any = None
    header = response.headers.get(PAYMENT_REQUIRED_HEADER)
    try:
        if header is not None:
            error = decode_header(header, header=PAYMENT_REQUIRED_HEADER).get("error")
        else:
            body = response.json()
            error = body.get("error") if isinstance(body, dict) else None
    except (PaymentError, ValueError):
        return ErrorCode.PAYMENT_REQUIRED, "the refusing 402 carries no readable error"
    if not isinstance(error, str) or not error:
        return ErrorCode.PAYMENT_REQUIRED, "the gateway answered the payment with a 402 without an error"
    code, _, reason = error.partition(": ")
    return code.strip(), reason


def read_receipt(response: httpx.Response, *, payment_id: str, amount: int) -> dict[str, Any] | None:
    """The gateway's receipt for the paid ``response``: the decoded ``PAYMENT-RESPONSE`` (an
    x402 ``SettleResponse``) with ``paymentId`` lifted from its ``extra`` to the top, or None
    when the response carries none (or is a 402). An unreadable header still proves the
    gateway committed the payment: it becomes ``{paymentId, amount, raw}``.
    """
    header = response.headers.get(PAYMENT_RESPONSE_HEADER) or response.headers.get(X_PAYMENT_RESPONSE_HEADER)
    if header is None or response.status_code == 402:
        return None
    try:
        receipt = decode_header(header, header=PAYMENT_RESPONSE_HEADER)
    except PaymentError:
        return {"paymentId": payment_id, "amount": str(amount), "raw": header}
    extra = receipt.get("extra") if isinstance(receipt.get("extra"), dict) else {}
    receipt.setdefault("paymentId", extra.get("paymentId", payment_id))
    return receipt


def is_refusal(response: httpx.Response) -> bool:
    """The gateway refused the payment: a 402, or a 400 with a challenge (x402 HTTP transport:
    the gateway could not read the payment)."""
    return response.status_code == 402 or (response.status_code == 400 and PAYMENT_REQUIRED_HEADER in response.headers)
