"""Exceptions raised by the payer SDK.

The hierarchy::

    PayerError
    ├── SpendingLimitError           refused locally: no mandate was signed or sent
    │   ├── BudgetExceeded           spent + reserved + amount would exceed the intent's maxAmount
    │   ├── PerPaymentCapExceeded    amount above the intent's maxPerPayment (circuit cap)
    │   ├── IntentExpired            now >= validBefore
    │   ├── IntentNotYetValid        now < validAfter
    │   └── PayeeNotAllowed          payTo is not in the intent's payees
    ├── NoAcceptableRequirement      the 402 offers no aep2 entry for our network/asset/settlement/processor
    ├── MalformedChallenge           PAYMENT-REQUIRED (or the v1 body) cannot be parsed
    └── PaymentRefused               the gateway answered our mandate with a 402 (`.code`, `.reason`)

Every message names the offending field and value. ``MalformedChallenge`` names the header
and is raised ``from`` the underlying parse error.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:  # pragma: no cover
    import httpx

__all__ = [
    "PayerError",
    "SpendingLimitError",
    "BudgetExceeded",
    "PerPaymentCapExceeded",
    "IntentExpired",
    "IntentNotYetValid",
    "PayeeNotAllowed",
    "NoAcceptableRequirement",
    "MalformedChallenge",
    "PaymentRefused",
]


class PayerError(Exception):
    """Base class of every error the payer SDK raises on purpose."""


class SpendingLimitError(PayerError):
    """The intent does not allow this payment; nothing was signed or sent."""


class BudgetExceeded(SpendingLimitError):
    """Paying ``amount`` would take the intent's spent + reserved total above ``maxAmount``."""


class PerPaymentCapExceeded(SpendingLimitError):
    """``amount`` is above the intent's per-payment cap (``maxPerPayment``)."""


class IntentExpired(SpendingLimitError):
    """The intent's ``validBefore`` has passed."""


class IntentNotYetValid(SpendingLimitError):
    """The intent's ``validAfter`` is still in the future."""


class PayeeNotAllowed(SpendingLimitError):
    """The requirement's ``payTo`` is not one of the intent's ``payees``."""


class NoAcceptableRequirement(PayerError):
    """No ``accepts`` entry has scheme ``aep2`` on the intent's network, asset, settlement contract
    and processor (``extra.processor``, when the entry names one)."""


class MalformedChallenge(PayerError):
    """The 402 challenge (``PAYMENT-REQUIRED`` header, or the v1 JSON body) is malformed."""

    def __init__(self, message: str, *, header: str) -> None:
        super().__init__(f"{header}: {message}")
        self.header = header


class PaymentRefused(PayerError):
    """The gateway refused our mandate: ``code`` is an ``aep2.errors.ErrorCode`` value.

    ``response`` is the refusing 402 response when the flow had one.
    """

    def __init__(self, code: str, reason: str = "", *, response: httpx.Response | None = None) -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason
        self.response = response
