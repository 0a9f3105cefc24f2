"""Session keys and intents: what an agent's owner sets up once before the agent pays.

The owner's Ethereum key signs one EIP-712 intent (docs/PROTOCOL.md §2) that lets a fresh
BabyJubJub session key spend up to ``max_amount`` of ``asset``; the agent keeps only the
session key and the signed intent.
"""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.signers.local import LocalAccount

from aep2.babyjubjub import Point
from aep2.eddsa import SessionKey
from aep2.intent import Intent, SignedIntent

__all__ = ["create_session_key", "create_intent"]


def create_session_key() -> SessionKey:
    """A fresh session key from the OS's CSPRNG (save it with ``SessionKey.to_hex``)."""
    return SessionKey.generate()


def create_intent(
    owner_key: bytes | str | LocalAccount,
    *,
    session_key: SessionKey | Point,
    asset: str,
    max_amount: int,
    max_per_payment: int,
    chain_id: int,
    settlement: str,
    valid_for_seconds: int | None = None,
    valid_before: int | None = None,
    valid_after: int | None = None,
    processor: str,
    payees: tuple[str, ...] | list[str] = (),
    salt: bytes | None = None,
) -> SignedIntent:
    """Build the intent for ``session_key`` and sign it with ``owner_key`` (the payer).

    Give exactly one of ``valid_for_seconds`` (from now) and ``valid_before`` (unix
    seconds). ``valid_after`` defaults to a minute ago, so clocks a little behind ours
    (a gateway's, a chain's latest block) already see it valid. ``settlement`` is the Settlement contract
    (the EIP-712 verifying contract); ``processor`` the settlement processor of the gateways the
    agent pays (their ``/skill.json`` names it): only it can settle the intent's mandates.
    ``payees`` (at most 256) is the owner's allowlist, enforced in the settlement proof.
    Raises ``ValueError`` naming the field on bad input.
    """
    account = owner_key if isinstance(owner_key, LocalAccount) else Account.from_key(owner_key)
    now = int(time.time())
    if (valid_for_seconds is None) == (valid_before is None):
        raise ValueError("validBefore: give exactly one of valid_for_seconds and valid_before")
    if valid_for_seconds is not None:
        if valid_for_seconds <= 0:
            raise ValueError(f"valid_for_seconds: {valid_for_seconds} must be positive")
        valid_before = now + valid_for_seconds
    assert valid_before is not None
    public_key = session_key.public_key if isinstance(session_key, SessionKey) else session_key
    extra = {} if salt is None else {"salt": salt}
    intent = Intent(
        payer=account.address,
        asset=asset,
        session_key=public_key,
        max_amount=max_amount,
        max_per_payment=max_per_payment,
        valid_after=now - 60 if valid_after is None else valid_after,
        valid_before=valid_before,
        chain_id=chain_id,
        verifying_contract=settlement,
        payees=tuple(payees),
        processor=processor,
        **extra,
    )
    return intent.sign(account.key)
