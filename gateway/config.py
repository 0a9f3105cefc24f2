"""Gateway configuration: who is paid, in what, on which chain."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address

from aep2.deployment import Deployment

__all__ = ["GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Static settings of one gateway.

    ``payee``: address paid by every priced route. ``asset``: the ERC-20 token (base units
    everywhere). ``settlement``: the Settlement contract (the intents' EIP-712 verifying
    contract). ``processor``: the settlement processor's address (required, non-zero): the
    gateway accepts only intents naming it and only payers whose consent to it stands, and
    reserves against the payer's escrow account with it (escrow is per processor).
    ``min_deadline_seconds``: a mandate must stay settleable this long (its deadline and its
    intent's ``validBefore`` at least this far in the future). ``settlement_window``: the
    Settlement contract's ``settlementWindow()`` in seconds (``None``: unknown), the grace a
    served mandate has to settle after its payer revokes, de-authorises or withdraws; the
    gateway's chain view must stay well inside it (``max_chain_staleness``).
    ``max_timeout_seconds``: x402 ``maxTimeoutSeconds``. ``token_name``/``token_version``:
    the asset's EIP-712 domain, which ``exact`` (EIP-3009) signatures need; ``None`` reads it
    from the token (EIP-5267 ``eip712Domain()``), and a value given here must match what the
    token reports or the gateway refuses to start. ``exact_enabled``: offer ``exact`` (when the
    gateway has a facilitator).

    Raises ``ValueError`` naming the field: ``processor`` missing or zero, an address that is
    not one, or a non-positive duration.
    """

    chain_id: int
    payee: str
    asset: str
    settlement: str
    processor: str
    min_deadline_seconds: int = 300
    settlement_window: int | None = None
    max_timeout_seconds: int = 300
    token_name: str | None = None
    token_version: str | None = None
    exact_enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("payee", "asset", "settlement", "processor"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, to_checksum_address(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {value!r} is not an address") from exc
        if int(self.processor, 16) == 0:
            raise ValueError("processor: must be the settlement processor's address, not the zero address")
        if self.min_deadline_seconds <= 0:
            raise ValueError(f"min_deadline_seconds: {self.min_deadline_seconds} must be positive")
        if self.settlement_window is not None and self.settlement_window <= 0:
            raise ValueError(f"settlement_window: {self.settlement_window} must be positive")

    @property
    def network(self) -> str:
        """CAIP-2 network id."""
        return f"eip155:{self.chain_id}"

    @property
    def max_chain_staleness(self) -> float:
        """Oldest chain state (seconds) the gateway acts on: a tenth of the settlement window,
        at most 60 s (60 s when the window is unknown). A payer's revocation, de-authorisation
        or withdrawal request is seen within it, while mandates served before still settle."""
        if self.settlement_window is None:
            return 60.0
        return min(60.0, self.settlement_window / 10)

    @classmethod
    def from_deployment(
        cls, deployment: Deployment, payee: str, *, processor: str, **options: object
    ) -> GatewayConfig:
        """Settings for ``payee`` on a deployment written by ``settlement.deploy``, settled by
        ``processor``; ``options`` are the other fields. Raises ``ValueError`` as the constructor."""
        fields: dict[str, object] = {"settlement_window": getattr(deployment, "settlement_window", None), **options}
        return cls(
            chain_id=deployment.chain_id,
            payee=payee,
            asset=deployment.token,
            settlement=deployment.settlement,
            processor=processor,
            **fields,  # type: ignore[arg-type]
        )
