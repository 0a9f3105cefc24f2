"""What every payment scheme of the gateway provides: one registry, no per-scheme branches.

A scheme turns a price into its x402 ``accepts`` entry, verifies a client's payment against
it before the request is served, and, once the app has answered below 400, settles it:
``exact`` on chain before the response leaves (``settles_before_response``), ``aep2`` by
recording the reserved mandate, which the processor settles in a batch later. A payment
whose request was not served (the app answered ≥ 400 or raised) is released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aep2.x402.models import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    ResourceInfo,
    SettleResponse,
)
from aep2.x402.networks import v1_network

from ..config import GatewayConfig

__all__ = ["AcceptedPayment", "PaidRequest", "Scheme", "offer"]


def offer(config: GatewayConfig, scheme: str, amount: int, extra: dict[str, object]) -> PaymentRequirements:
    """The ``accepts`` entry of ``scheme`` for ``amount`` base units paid to the gateway's
    payee in its asset on its network, with the scheme's ``extra``."""
    return PaymentRequirements(
        scheme=scheme,
        network=config.network,
        asset=config.asset,
        amount=str(amount),
        pay_to=config.payee,
        max_timeout_seconds=config.max_timeout_seconds,
        extra=extra,
    )


@dataclass(frozen=True)
class AcceptedPayment:
    """A verified, reserved payment: ``amount`` base units from ``payer``.

    ``payment_id`` names it in receipts and ``/payments/{paymentId}``; ``release_key`` is what
    the scheme's store needs to undo the reservation.
    """

    payment_id: str
    scheme: str
    payer: str
    amount: int
    release_key: str


@dataclass(frozen=True)
class PaidRequest:
    """One priced request with its payment: the client's ``envelope`` (v2 or v1), the
    gateway's own ``requirements`` for the scheme it chose and the ``resource``, plus what a
    mandate binds to (``chain_id`` names the network in v1)."""

    envelope: PaymentPayload | PaymentPayloadV1
    requirements: PaymentRequirements
    resource: ResourceInfo
    chain_id: int
    method: str
    path_and_query: str
    body: bytes

    @property
    def version(self) -> int:
        """x402 version of the client's payment (1 or 2)."""
        return self.envelope.x402_version

    @property
    def network(self) -> str:
        """The network as the client's version names it (CAIP-2 in v2, v1 name in v1)."""
        return self.requirements.network if self.version == 2 else v1_network(self.chain_id)

    def versioned_requirements(self) -> PaymentRequirements | PaymentRequirementsV1:
        """The requirements in the client's version, as a facilitator expects them with its payload."""
        if self.version == 2:
            return self.requirements
        return PaymentRequirementsV1.from_v2(self.requirements, self.resource, self.network)


class Scheme(Protocol):
    """A payment scheme (x402 ``scheme``) of the gateway."""

    #: x402 ``scheme`` name, as in ``accepts[].scheme``.
    name: str
    #: Whether ``settle`` moves funds on chain and so must finish before the response is sent.
    settles_before_response: bool

    def requirements(self, amount: int) -> PaymentRequirements:
        """The ``accepts`` entry for a price of ``amount`` base units."""

    async def verify(self, request: PaidRequest, amount: int) -> AcceptedPayment:
        """Verify and reserve the payment of ``request`` for ``amount`` base units.

        Raises ``aep2.errors.PaymentError`` with the code of the first failed check; other
        exceptions mean a dependency (chain, store, facilitator) could not be reached.
        """

    async def settle(self, request: PaidRequest, accepted: AcceptedPayment) -> SettleResponse:
        """Settle a payment whose request was served; ``success=False`` with an x402
        ``error_reason`` when it cannot be. May raise when a dependency is unreachable."""

    async def release(self, accepted: AcceptedPayment) -> None:
        """Undo the reservation of a payment whose request was not served."""
