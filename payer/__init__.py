"""The payer agent SDK: pay x402 ``402`` challenges with AEP2 mandates from an httpx client.

``PROCESSOR`` is the settlement processor the gateways name (``/skill.json`` ``aep2.processor``,
or ``extra.processor`` in a 402); the owner escrows funds *with that processor* and authorises
it once with ``Escrow`` (escrow is held per processor: a gateway counts only the payer's
account with its own processor)::

    escrow = Escrow(deployment, owner_key, processor=PROCESSOR)
    escrow.deposit(5_000_000)
    escrow.authorize_processor(PROCESSOR)

Then the agent pays::

    key = create_session_key()
    intent = create_intent(owner_key, session_key=key, asset=USDC, max_amount=10_000_000,
                           max_per_payment=100_000, valid_for_seconds=86400,
                           chain_id=31337, settlement=SETTLEMENT, processor=PROCESSOR)
    auth = AEP2Auth(intent, key, PayerState("payer.sqlite"))
    with httpx.Client(auth=auth) as client:
        client.get("https://api.example/weather")
    auth.receipts, auth.spent

Or the agent holds no key at all: a co-wallet (``python -m wallet serve``) keeps the keys,
checks every spend against the owner's policy and signs; the agent has an API key::

    with WalletAuth("http://127.0.0.1:8080", api_key) as auth, httpx.Client(auth=auth) as client:
        client.get("https://api.example/weather")    # PolicyDenied if the policy says no
"""

from aep2.eddsa import SessionKey
from aep2.intent import SignedIntent

from .auth import AEP2Auth
from .remote import WalletAuth
from .errors import (
    BudgetExceeded,
    CouncilDenied,
    IntentExpired,
    IntentNotYetValid,
    MalformedChallenge,
    NoAcceptableRequirement,
    PayeeNotAllowed,
    PayerError,
    PaymentRefused,
    PerPaymentCapExceeded,
    PolicyDenied,
    ReviewPending,
    SpendingLimitError,
    WalletRequestError,
    WalletUnavailable,
)
from .escrow import Escrow, EscrowError
from .state import PayerState
from .wallet import create_intent, create_session_key

__all__ = [
    "AEP2Auth",
    "WalletAuth",
    "Escrow",
    "EscrowError",
    "PayerState",
    "SessionKey",
    "SignedIntent",
    "create_intent",
    "create_session_key",
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
