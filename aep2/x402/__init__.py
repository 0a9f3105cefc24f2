"""The x402 wire protocol: HTTP headers and their codec, network ids, and typed wire objects."""

from .headers import (
    MAX_HEADER_BYTES,
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    canonical_json,
    decode_header,
    encode_header,
)
from .networks import V1_NETWORK_NAMES, caip2, chain_id_of, v1_network

__all__ = [
    "MAX_HEADER_BYTES",
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "X_PAYMENT_HEADER",
    "X_PAYMENT_RESPONSE_HEADER",
    "V1_NETWORK_NAMES",
    "canonical_json",
    "decode_header",
    "encode_header",
    "caip2",
    "chain_id_of",
    "v1_network",
]
