"""Exceptions raised by the payer SDK.

The hierarchy::

    PayerError
    ├── SpendingLimitError           refused locally: no mandate was signed or sent
    │   ├── BudgetExceeded           spent + reserved + amount would exceed the intent's maxAmount
    │   ├── PerPaymentCapExceeded    amount above the intent's maxPerPayment (circuit cap)
    │   ├── IntentExpired            now >= validBefore
    │   ├── IntentNotYetValid        now < validAfter
    │   ├── PayeeNotAllowed          payTo is not in the intent's payees
    │   └── PolicyDenied             the co-wallet's policy denied the spend (`.rule`, `.reason`)
    │       └── CouncilDenied        the co-wallet's AI review council denied it (`.votes`, `.reasons`)
    ├── NoAcceptableRequirement      the 402 offers no aep2 entry for our network/asset/settlement/processor
    ├── MalformedChallenge           PAYMENT-REQUIRED (or the v1 body) cannot be parsed
    ├── PaymentRefused               the gateway answered our mandate with a 402 (`.code`, `.reason`)
    ├── ReviewPending                the co-wallet sent the spend to review, still undecided (`.review_id`)
    └── WalletRequestError           the co-wallet refused the call itself (`.status`, `.code`)
        └── WalletUnavailable        the co-wallet did not answer, after the retries

``WalletAuth`` (the co-wallet signs) raises the same errors as ``AEP2Auth`` (the agent signs)
where the cause is the same, plus the last three, which only a co-wallet can cause.

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
    "PolicyDenied",
    "CouncilDenied",
    "ReviewPending",
    "WalletRequestError",
    "WalletUnavailable",
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


class PolicyDenied(SpendingLimitError):
    """The co-wallet's policy engine denied the spend; nothing was signed or sent to the payee.

    ``rule`` is the deciding rule (``wallet.policy.Rule`` value, e.g. ``daily_cap``),
    ``reason`` the policy's explanation, ``decision_id`` the wallet's stored decision.
    """

    def __init__(self, rule: str, reason: str = "", *, decision_id: int | None = None) -> None:
        super().__init__(f"{rule}: {reason}" if reason else rule)
        self.rule = rule
        self.reason = reason
        self.decision_id = decision_id


class CouncilDenied(PolicyDenied):
    """The co-wallet's AI review council denied a spend the policy sent to review.

    ``votes``: every judge's ballot as the wallet returned it (``judge``, ``vote`` approve,
    deny or None for an abstention, ``rationale``, ``riskScore`` 0-100, ``confidence`` 0-1,
    ``error`` when it abstained, token counts and ``latencyMs``). ``reasons``: the deny
    rationales and abstentions, ``judge: text``.
    """

    def __init__(
        self, rule: str, reason: str = "", *, decision_id: int | None = None, votes: typing.Sequence[dict[str, typing.Any]] = ()
    ) -> None:
        super().__init__(rule, reason, decision_id=decision_id)
        self.votes = tuple(votes)

    @property
    def reasons(self) -> list[str]:
        return [
            f"{v.get('judge')}: {v.get('rationale') if v.get('vote') is not None else 'abstained: ' + str(v.get('error'))}"
            for v in self.votes if v.get("vote") != "approve"
        ]


class ReviewPending(PayerError):
    """The co-wallet sent the spend to review and no reviewer decided within the wait; nothing
    was signed. Poll ``review_id`` later, or raise ``review_timeout``."""

    def __init__(self, review_id: str, rule: str = "", reason: str = "") -> None:
        super().__init__(f"review {review_id} pending ({rule}: {reason})" if rule else f"review {review_id} pending")
        self.review_id = review_id
        self.rule = rule
        self.reason = reason


class WalletRequestError(PayerError):
    """The co-wallet refused the call: ``status`` (HTTP), ``code`` (its problem-details code,
    e.g. ``unauthenticated``, ``idempotency_conflict``), ``detail``."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"wallet {status} {code}: {detail}" if detail else f"wallet {status} {code}")
        self.status = status
        self.code = code
        self.detail = detail


class WalletUnavailable(WalletRequestError):
    """The co-wallet did not answer (a network error, a 5xx or a 429) after the retries. A
    spend retried with the same idempotency key is never signed twice."""
