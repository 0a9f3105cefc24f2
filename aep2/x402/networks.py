"""x402 network ids: CAIP-2 (``eip155:<chainId>``) in v2, legacy names in v1.

x402 v2 names networks by CAIP-2 id (``specs/x402-specification-v2.md`` §11.1). v1 clients
know EVM networks by name (``base-sepolia``, ``base``, …); a v1 quote must use the name
where the chain has one, or a v1 client cannot pay it. Chains without a v1 name keep their
CAIP-2 id in v1 too.
"""

from __future__ import annotations

__all__ = ["V1_NETWORK_NAMES", "caip2", "chain_id_of", "v1_network"]

#: v1 network name → EVM chain id, as x402 v1 clients name them.
V1_NETWORK_NAMES: dict[str, int] = {
    "ethereum": 1,
    "base": 8453,
    "base-sepolia": 84532,
    "polygon": 137,
    "polygon-amoy": 80002,
    "avalanche": 43114,
    "avalanche-fuji": 43113,
    "abstract": 2741,
    "abstract-testnet": 11124,
    "iotex": 4689,
    "sei": 1329,
    "sei-testnet": 1328,
    "peaq": 3338,
    "story": 1513,
    "educhain": 656476,
    "skale-base-sepolia": 1444673419,
    "megaeth": 4326,
    "monad": 143,
    "monad-testnet": 10143,
    "stable": 988,
    "stable-testnet": 2201,
    "celo": 42220,
    "flare": 14,
}

_NAME_OF_CHAIN = {chain_id: name for name, chain_id in V1_NETWORK_NAMES.items()}


def caip2(chain_id: int) -> str:
    """The CAIP-2 id of an EVM chain: ``eip155:<chainId>``."""
    return f"eip155:{chain_id}"


def v1_network(chain_id: int) -> str:
    """The v1 network name of ``chain_id`` (``84532`` → ``"base-sepolia"``), or its CAIP-2 id
    when v1 has no name for it."""
    return _NAME_OF_CHAIN.get(chain_id) or caip2(chain_id)


def chain_id_of(network: str) -> int:
    """The EVM chain id of a CAIP-2 ``eip155:<id>`` network or of a v1 network name.

    Raises ``ValueError`` naming ``network`` for anything else.
    """
    if network in V1_NETWORK_NAMES:
        return V1_NETWORK_NAMES[network]
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isdigit() or reference != str(int(reference)):
        raise ValueError(f"network: {network!r} is neither a CAIP-2 eip155 id nor a v1 network name")
    return int(reference)
