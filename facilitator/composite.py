"""One facilitator serving several schemes: ``Facilitators([exact, aep2])``.

x402 lets a facilitator support several ``(x402Version, scheme, network)`` kinds
(``specs/x402-specification-v2.md`` §7 ``/supported``). ``Facilitators`` routes each payment
to the member serving its scheme — ``paymentPayload.accepted.scheme`` in v2,
``paymentPayload.scheme`` in v1 — and merges the members' ``/supported`` answers, so one
``facilitator.create_app`` serves them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from aep2.errors import ErrorCode
from aep2.x402.models import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

__all__ = ["Facilitators", "SchemeFacilitator"]

Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1


class SchemeFacilitator(Protocol):
    """An ``aep2.x402.facilitator.Facilitator`` for one x402 scheme, named by ``scheme``
    (``facilitator.ExactEvmFacilitator``: ``"exact"``, ``facilitator.AEP2Facilitator``: ``"aep2"``)."""

    scheme: str

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse: ...

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse: ...

    async def supported(self) -> SupportedResponse: ...

    async def aclose(self) -> None: ...


def _scheme_of(payload: Payload) -> str:
    return payload.accepted.scheme if isinstance(payload, PaymentPayload) else payload.scheme


class Facilitators:
    """The ``Facilitator`` of ``members``, one per scheme, in ``/supported`` order.

    A payment of a scheme no member serves is refused with ``unsupported_scheme``. Raises
    ``ValueError`` for no members or two serving one scheme. Satisfies
    ``aep2.x402.facilitator.Facilitator``.
    """

    def __init__(self, members: Iterable[SchemeFacilitator]) -> None:
        self.members: dict[str, SchemeFacilitator] = {}
        for member in members:
            if member.scheme in self.members:
                raise ValueError(f"facilitators: two members serve scheme {member.scheme!r}")
            self.members[member.scheme] = member
        if not self.members:
            raise ValueError("facilitators: give at least one member")

    def _unsupported(self, payload: Payload) -> str:
        field = "paymentPayload.accepted.scheme" if isinstance(payload, PaymentPayload) else "paymentPayload.scheme"
        return f"{field}: {_scheme_of(payload)!r} is not one of {', '.join(map(repr, self.members))}"

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        """The verification of the member serving the payment's scheme."""
        member = self.members.get(_scheme_of(payload))
        if member is None:
            return VerifyResponse(
                is_valid=False, invalid_reason=ErrorCode.UNSUPPORTED_SCHEME, invalid_message=self._unsupported(payload)
            )
        return await member.verify(payload, requirements)

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        """The settlement of the member serving the payment's scheme."""
        member = self.members.get(_scheme_of(payload))
        if member is None:
            return SettleResponse(
                success=False,
                error_reason=ErrorCode.UNSUPPORTED_SCHEME,
                error_message=self._unsupported(payload),
                network=requirements.network,
            )
        return await member.settle(payload, requirements)

    async def supported(self) -> SupportedResponse:
        """Every member's kinds, in member order; their extensions and signers merged (each
        address listed once per network pattern). Raises what a member raises."""
        answers = await asyncio.gather(*(member.supported() for member in self.members.values()))
        kinds = [kind for answer in answers for kind in answer.kinds]
        extensions: list[str] = []
        signers: dict[str, list[str]] = {}
        for answer in answers:
            extensions += [name for name in answer.extensions if name not in extensions]
            for pattern, addresses in answer.signers.items():
                listed = signers.setdefault(pattern, [])
                listed += [address for address in addresses if address not in listed]
        return SupportedResponse(kinds=kinds, extensions=extensions, signers=signers)

    async def aclose(self) -> None:
        """Close every member, even when one fails to close; then raise its error."""
        results = await asyncio.gather(*(member.aclose() for member in self.members.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
