"""Session keys, intents, and the pinned public API."""

from __future__ import annotations

import time

import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from payer_fixtures import ASSET, CHAIN_ID, PROCESSOR, SETTLEMENT

import payer
from aep2.intent import ZERO_ADDRESS
from payer import create_intent, create_session_key


def test_create_intent_is_signed_by_the_owner(owner):
    key = create_session_key()
    signed = create_intent(
        owner.key,
        session_key=key,
        asset=ASSET,
        max_amount=1000,
        max_per_payment=100,
        valid_for_seconds=60,
        chain_id=CHAIN_ID,
        settlement=SETTLEMENT,
        processor=PROCESSOR.lower(),
        payees=["0x" + "02" * 20, "0x" + "01" * 20],
    )
    intent = signed.intent
    assert signed.is_valid() and signed.recover_signer() == owner.address
    assert intent.session_key == key.public_key
    assert intent.payees == ("0x" + "01" * 20, "0x" + "02" * 20)
    assert intent.processor == to_checksum_address(PROCESSOR)
    # validAfter sits a minute before now (clock skew); validBefore is valid_for_seconds after now.
    assert intent.valid_before - intent.valid_after == 120
    assert abs(intent.valid_after + 60 - time.time()) < 5


def test_create_intent_accepts_an_account_and_fixed_validity(owner):
    signed = create_intent(
        owner,
        session_key=create_session_key().public_key,
        asset=ASSET,
        max_amount=5,
        max_per_payment=5,
        valid_after=100,
        valid_before=200,
        chain_id=CHAIN_ID,
        settlement=SETTLEMENT,
        processor=PROCESSOR,
        salt=b"\x07" * 32,
    )
    assert (signed.intent.valid_after, signed.intent.valid_before, signed.intent.salt) == (100, 200, b"\x07" * 32)


@pytest.mark.parametrize("validity", [{}, {"valid_for_seconds": 5, "valid_before": 10**10}, {"valid_for_seconds": 0}])
def test_create_intent_needs_one_validity(validity):
    with pytest.raises(ValueError, match="valid"):
        create_intent(
            Account.create().key,
            session_key=create_session_key(),
            asset=ASSET,
            max_amount=5,
            max_per_payment=5,
            chain_id=CHAIN_ID,
            settlement=SETTLEMENT,
            processor=PROCESSOR,
            **validity,
        )


def test_create_intent_requires_a_processor(owner):
    """The intent names the one processor that may settle it: never omitted, never zero."""
    options = dict(
        session_key=create_session_key(), asset=ASSET, max_amount=5, max_per_payment=5, valid_for_seconds=60,
        chain_id=CHAIN_ID, settlement=SETTLEMENT,
    )
    with pytest.raises(TypeError, match="processor"):
        create_intent(owner.key, **options)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="^processor"):
        create_intent(owner.key, processor=ZERO_ADDRESS, **options)
    with pytest.raises(ValueError, match="^processor"):
        create_intent(owner.key, processor="0x1234", **options)


def test_exported_members():
    assert sorted(payer.__all__) == sorted(
        [
            "AEP2Auth",
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
            "WalletAuth",
            "PolicyDenied",
            "CouncilDenied",
            "ReviewPending",
            "WalletRequestError",
            "WalletUnavailable",
        ]
    )
    for name in payer.__all__:
        assert getattr(payer, name).__module__.startswith(("payer", "aep2"))


def test_error_tree():
    assert issubclass(payer.BudgetExceeded, payer.SpendingLimitError)
    assert issubclass(payer.SpendingLimitError, payer.PayerError)
    for name in ("NoAcceptableRequirement", "MalformedChallenge", "PaymentRefused", "ReviewPending", "WalletRequestError"):
        assert issubclass(getattr(payer, name), payer.PayerError)
    assert issubclass(payer.PolicyDenied, payer.SpendingLimitError)
    assert issubclass(payer.CouncilDenied, payer.PolicyDenied)  # like the local limits: nothing was signed
    assert issubclass(payer.WalletUnavailable, payer.WalletRequestError)
    refused = payer.PaymentRefused("nonce_used", "payload.mandate.nonce: 3")
    assert (refused.code, refused.reason, str(refused)) == ("nonce_used", "payload.mandate.nonce: 3", "nonce_used: payload.mandate.nonce: 3")


def test_payer_imports_only_aep2():
    import ast
    import pathlib

    for path in pathlib.Path(payer.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in {"gateway", "settlement"}, path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in {"gateway", "settlement"} for a in node.names), path
