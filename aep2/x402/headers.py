"""x402 HTTP transport: header names and the base64 JSON header codec.

Follows ``specs/transports-v2/http.md`` (and v1's): v2 sends ``PAYMENT-REQUIRED`` /
``PAYMENT-SIGNATURE`` / ``PAYMENT-RESPONSE`` headers carrying base64 JSON; v1 sends the
requirements as the 402 JSON body and the payment in ``X-PAYMENT`` (answer in
``X-PAYMENT-RESPONSE``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import ErrorCode, PaymentError

__all__ = [
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "X_PAYMENT_HEADER",
    "X_PAYMENT_RESPONSE_HEADER",
    "MAX_HEADER_BYTES",
    "canonical_json",
    "encode_header",
    "decode_header",
]

PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE_HEADER = "PAYMENT-RESPONSE"
X_PAYMENT_HEADER = "X-PAYMENT"
X_PAYMENT_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"

#: Largest payment header accepted (base64 characters). A full aep2 payload with an
#: intent and a few payees is about 2 KiB; anything far larger is refused unparsed.
MAX_HEADER_BYTES = 16 * 1024
#: Most JSON arrays and objects a payment header may hold. A payment has a few dozen; the cap
#: keeps a hostile header from nesting thousands deep (importing eth_account raises Python's
#: recursion limit past what the C stack holds, so depth is not bounded by RecursionError).
MAX_HEADER_CONTAINERS = 256


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace (docs/PROTOCOL.md §4)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_header(obj: Any) -> str:
    """Standard base64 (with padding) of ``canonical_json(obj)``."""
    return base64.b64encode(canonical_json(obj)).decode("ascii")


def decode_header(value: str | bytes, *, header: str = PAYMENT_SIGNATURE_HEADER) -> dict[str, Any]:
    """Decode a base64 JSON payment header into a JSON object.

    Raises ``PaymentError`` with ``payload_too_large`` beyond ``MAX_HEADER_BYTES``, or
    ``invalid_payment_header`` (naming ``header``) when it is not base64 of a JSON object.
    """
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError as exc:
            raise PaymentError(ErrorCode.INVALID_HEADER, f"{header}: not ASCII base64") from exc
    if len(value) > MAX_HEADER_BYTES:
        raise PaymentError(ErrorCode.PAYLOAD_TOO_LARGE, f"{header}: {len(value)} bytes > {MAX_HEADER_BYTES}")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PaymentError(ErrorCode.INVALID_HEADER, f"{header}: not base64") from exc
    if raw.count(b"[") + raw.count(b"{") > MAX_HEADER_CONTAINERS:
        raise PaymentError(ErrorCode.INVALID_HEADER, f"{header}: more than {MAX_HEADER_CONTAINERS} JSON arrays/objects")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PaymentError(ErrorCode.INVALID_HEADER, f"{header}: not JSON") from exc
    if not isinstance(data, dict):
        raise PaymentError(ErrorCode.INVALID_HEADER, f"{header}: not a JSON object")
    return data

