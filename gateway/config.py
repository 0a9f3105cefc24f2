"""Gateway configuration: who is paid, in what, on which chain."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address

from aep2.deployment import Deployment
from aep2.intent import ZERO_ADDRESS

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Static settings of one gateway.

    ``payee``: address paid by every priced route. ``asset``: the ERC-20 token (base units
    everywhere). ``settlement``: the Settlement contract (the intents' EIP-712 verifying
    contract). ``processor``: the settlement processor's address; intents naming another
    processor are refused. ``min_deadline_seconds``: a mandate must stay settleable this
    long (its deadline and its intent's ``validBefore`` at least this far in the future).
    ``max_timeout_seconds``: x402 ``maxTimeoutSeconds``. ``token_name``/``token_version``:
    the asset's EIP-712 domain, which ``exact`` (EIP-3009) signatures need.
    """

    chain_id: int
    payee: str
    asset: str
    settlement: str
    processor: str = ZERO_ADDRESS
    min_deadline_seconds: int = 300
    max_timeout_seconds: int = 300
    token_name: str = "USD Coin"
    token_version: str = "2"
    exact_enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("payee", "asset", "settlement", "processor"):
            object.__setattr__(self, name, to_checksum_address(getattr(self, name)))

    @property
    def network(self) -> str:
        """CAIP-2 network id."""
        return f"eip155:{self.chain_id}"

    @classmethod
    def from_deployment(cls, deployment: Deployment, payee: str, **options: object) -> GatewayConfig:
        """Settings for ``payee`` on a deployment written by ``settlement.deploy``."""
        return cls(
            chain_id=deployment.chain_id,
            payee=payee,
            asset=deployment.token,
            settlement=deployment.settlement,
            **options,  # type: ignore[arg-type]
        )
