"""The EIP-712 ``EIP712Domain`` type shared by every domain this project signs under.

Name, version, chainId and verifyingContract, no salt: the AEP2 intent's domain
(``aep2.intent``) and EIP-2612 / EIP-3009 token domains (``aep2.eip3009``) alike.
"""

from __future__ import annotations

__all__ = ["EIP712_DOMAIN_TYPE"]

EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
