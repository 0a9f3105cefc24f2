"""The wallet service end to end on a real database: an agent holding only an API key gets a
header our real gateway accepts; the policy, the kill switch and idempotency hold; 300
concurrent spends against a cap of 100 sign exactly 100; the audit trail verifies and carries
no secret.

The gateway is the in-process harness of the gateway tests (``InProcessGateway`` on a
``StaticChainReader``: the real middleware and verification, no node), so no Anvil is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import func, select

from aep2.x402 import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, decode_header
from wallet import audit, ledger, webhooks
from wallet.keys import OwnerKeystore, Sealer, parse_api_key, session_key_aad
from wallet.policy import Rules
from wallet.service import (
    ChainFailure,
    IdempotencyConflict,
    IntentStatus,
    InvalidRequest,
    InvalidState,
    NoMatchingIntent,
    PaymentStatus,
    ReviewExpired,
    ReviewStatus,
    Unauthenticated,
    WalletService,
    wallet_intents,
    wallet_payments,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_fixtures import (  # noqa: E402  (the gateway tests' harness lives next to them)
    FORECAST_PRICE,
    OFFLINE_DEPLOYMENT,
    PAYEE,
    PROCESSOR,
    InProcessGateway,
    StaticChainReader,
)

FAST_KDF: dict[str, Any] = {"kdf": "scrypt", "iterations": 2**10}  # tests only
PASSWORD = "correct horse battery staple"
URL = "http://gateway.test/v1/forecast/paris"


class Clock:
    """Real time plus an offset the test can move; ``freeze()`` stops real time, for tests of
    a boundary a slow machine would otherwise cross on its own."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def freeze(self) -> None:
        self.frozen = time.time()

    def __call__(self) -> float:
        return (time.time() if self.frozen is None else self.frozen) + self.offset


class FakeRegistry:
    """Records the chain calls. ``failures``: how many registrations fail next; ``on_chain``:
    the ids the contract knows (the processor may register one behind the wallet's back)."""

    def __init__(self) -> None:
        self.registered: list[bytes] = []
        self.revoked: list[bytes] = []
        self.failures = 0
        self.on_chain: set[bytes] = set()

    def register_intent(self, signed_intent: Any) -> bytes:
        intent_id = signed_intent.intent.intent_id
        if self.failures or intent_id in self.on_chain:
            self.failures = max(0, self.failures - 1)
            raise RuntimeError("registerIntent reverted" if intent_id in self.on_chain else "RPC timeout")
        self.registered.append(intent_id)
        self.on_chain.add(intent_id)
        return intent_id

    def revoke_intent(self, intent_id: bytes) -> None:
        self.revoked.append(intent_id)

    def is_registered(self, intent_id: bytes) -> bool:
        return intent_id in self.on_chain


def requirement(amount: int = FORECAST_PRICE, **overrides: Any) -> dict[str, Any]:
    """The ``aep2`` accepts entry the in-process gateway offers for the forecast route."""
    entry = {
        "scheme": "aep2",
        "network": OFFLINE_DEPLOYMENT.network,
        "asset": OFFLINE_DEPLOYMENT.token,
        "amount": str(amount),
        "payTo": PAYEE,
        "maxTimeoutSeconds": 300,
        "extra": {"settlement": OFFLINE_DEPLOYMENT.settlement, "processor": PROCESSOR, "minDeadlineSeconds": 300},
    }
    entry.update(overrides)
    return entry


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
async def wallet(wallet_db, tmp_path, clock, registry):
    owner = OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF)
    sealer = Sealer(os.urandom(32))
    hooks = webhooks.Webhooks(wallet_db, sealer=sealer, allow_private_targets=True)  # owner.example: no DNS
    service = WalletService(
        wallet_db,
        owner=owner,
        sealer=sealer,
        deployment=OFFLINE_DEPLOYMENT,
        processor=PROCESSOR,
        webhooks=hooks,
        chain=registry,
        clock=clock,
    )
    await hooks.add_endpoint("https://owner.example/hooks", [e.value for e in webhooks.EventType])
    await service.record_deposit(10**9)
    yield service
    await hooks.aclose()


async def agent_with_intent(wallet: WalletService, name: str = "agent", **draft: Any) -> tuple[str, str, str]:
    """``(agent_id, api_key, intent_id)``: a new agent and its approved intent."""
    agent_id, api_key = await wallet.add_agent(name)
    options = {"budget": 100_000, "purpose": "forecasts", "duration_seconds": 3600, "per_payment_cap": 5_000}
    intent = await wallet.draft_intent(agent_id, **(options | draft))
    assert intent.status is IntentStatus.PENDING_APPROVAL
    approved = await wallet.approve_intent(intent.id)
    assert approved.status is IntentStatus.ACTIVE and approved.remaining == approved.budget
    return agent_id, api_key, intent.id


async def event_types(wallet: WalletService) -> list[str]:
    async with wallet.db.snapshot() as conn:
        return [d.event_type.value for d in await webhooks.deliveries(conn)]


async def reservations(wallet: WalletService) -> int:
    async with wallet.db.snapshot() as conn:
        return (
            await conn.execute(
                select(func.count()).select_from(ledger.transactions).where(ledger.transactions.c.kind == "reserve")
            )
        ).scalar_one()


# ---------------------------------------------------------------------------------------------
# The signing path, checked by the real gateway
# ---------------------------------------------------------------------------------------------


async def test_an_agent_with_only_an_api_key_pays_the_gateway(wallet, registry):
    agent_id, api_key, intent_id = await agent_with_intent(wallet)
    assert registry.registered == [bytes.fromhex((await wallet.intent(intent_id)).chain_intent_id[2:])]
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    try:
        async with gateway.client() as client:
            challenge = await client.get("/v1/forecast/paris")
            assert challenge.status_code == 402
            offered = decode_header(challenge.headers[PAYMENT_REQUIRED_HEADER], header=PAYMENT_REQUIRED_HEADER)
            entry = next(e for e in offered["accepts"] if e["scheme"] == "aep2")

            # The agent process: an API key, the 402's entry and its request; no key material.
            authorization = await wallet.authorize_payment(await wallet.authenticate(api_key), entry, URL, "GET")
            assert authorization.allowed and authorization.rule == "default"

            paid = await client.get("/v1/forecast/paris", headers={"PAYMENT-SIGNATURE": authorization.header})
            assert paid.status_code == 200, paid.text
            receipt = decode_header(paid.headers[PAYMENT_RESPONSE_HEADER], header=PAYMENT_RESPONSE_HEADER)
            assert receipt["extra"]["paymentId"] == authorization.payment_id
            assert [m.payment_id for m in await gateway.store.mandates()] == [authorization.payment_id]

            # A second call signs the next nonce; it too is accepted.
            second = await wallet.authorize_payment(agent_id, entry, "http://gateway.test/v1/forecast/rome")
            again = await client.get("/v1/forecast/rome", headers={"PAYMENT-SIGNATURE": second.header})
            assert again.status_code == 200, again.text
    finally:
        await gateway.aclose()

    settled = await wallet.confirm(authorization.payment_id, receipt)
    assert settled.status is PaymentStatus.SETTLED
    assert (await wallet.confirm(authorization.payment_id, receipt)).status is PaymentStatus.SETTLED  # a retry
    async with wallet.db.snapshot() as conn:
        assert await ledger.settled(conn, intent_id) == FORECAST_PRICE
        assert await ledger.reserved(conn, second.payment_id) == FORECAST_PRICE
        assert await ledger.escrow(conn, wallet.owner_ref) == 10**9 - FORECAST_PRICE
    assert {"intent.requested", "intent.approved", "payment.authorized", "payment.settled"} <= set(
        await event_types(wallet)
    )


async def test_authenticate_refuses_anything_but_the_issued_key(wallet):
    agent_id, api_key = await wallet.add_agent("a")
    assert await wallet.authenticate(api_key) == agent_id
    prefix, key_id, secret = parse_api_key(api_key)
    last = "A" if secret[-1] != "A" else "B"  # a one-character change, never the secret itself
    for presented in (None, "", api_key + "x", f"{prefix}{key_id}.{secret[:-1]}{last}", f"{prefix}{'0' * 16}.{secret}"):
        with pytest.raises(Unauthenticated):
            await wallet.authenticate(presented)


async def test_a_rotated_key_stops_at_once_or_after_its_grace_period(wallet, clock):
    clock.freeze()
    agent_id, first = await wallet.add_agent("a")
    other_id, other_key = await wallet.add_agent("b")
    second = await wallet.rotate_api_key(agent_id)
    assert second.agent_id == agent_id and second.api_key != first
    with pytest.raises(Unauthenticated):
        await wallet.authenticate(first)
    assert await wallet.authenticate(second.api_key) == agent_id

    third = await wallet.rotate_api_key(agent_id, grace_seconds=60)
    assert {await wallet.authenticate(k) for k in (second.api_key, third.api_key)} == {agent_id}
    clock.offset = 59.9
    assert await wallet.authenticate(second.api_key) == agent_id
    clock.offset = 60
    with pytest.raises(Unauthenticated):  # the grace is over
        await wallet.authenticate(second.api_key)
    clock.offset = 0
    fourth = await wallet.rotate_api_key(agent_id, grace_seconds=60)
    for stale in (first, second.api_key):  # only the key just replaced gets a grace period
        with pytest.raises(Unauthenticated):
            await wallet.authenticate(stale)
    assert {await wallet.authenticate(k) for k in (third.api_key, fourth.api_key)} == {agent_id}
    assert await wallet.authenticate(other_key) == other_id
    for bad in (-1, 604_801, True, 1.5):
        with pytest.raises(InvalidRequest):
            await wallet.rotate_api_key(agent_id, grace_seconds=bad)
    async with wallet.db.snapshot() as conn:
        rotated = [r.payload for r in await audit.records(conn, limit=1000) if r.action == "agent.key_rotated"]
    assert [p["key_id"] for p in rotated] == [second.key_id, third.key_id, fourth.key_id]
    assert all(fourth.api_key.split(".")[1] not in json.dumps(p) for p in rotated)


async def test_a_failed_registration_is_retried_until_the_chain_has_it(wallet, registry):
    registry.failures = 2
    agent_id, _key, intent_id = await agent_with_intent(wallet)  # approval's registration fails
    assert (await wallet.intent(intent_id)).registered_at is None
    with pytest.raises(ChainFailure):  # the chain still fails, and does not know the intent
        await wallet.retry_registration(intent_id)
    record = await wallet.retry_registration(intent_id)
    assert record.registered_at is not None and record.status is IntentStatus.ACTIVE
    assert (await wallet.retry_registration(intent_id)).registered_at == record.registered_at
    assert len(registry.registered) == 1  # once registered, never sent again

    # The processor registered this one first: the retry finds it on chain and records it.
    registry.failures = 1
    _b, _k, other = await agent_with_intent(wallet, "b")
    registry.on_chain.add(bytes.fromhex((await wallet.intent(other)).chain_intent_id[2:]))
    assert (await wallet.retry_registration(other)).registered_at is not None
    async with wallet.db.snapshot() as conn:
        actions = [(r.action, r.payload.get("found_on_chain")) for r in await audit.records(conn, limit=1000)
                   if r.action.startswith("intent.regist")]
    assert actions == [("intent.register_failed", None)] * 2 + [("intent.registered", None)] + [
        ("intent.register_failed", None), ("intent.register_failed", None), ("intent.registered", True)]

    pending = await wallet.draft_intent(agent_id, budget=10, purpose="x", duration_seconds=60, per_payment_cap=1)
    with pytest.raises(InvalidState):
        await wallet.retry_registration(pending.id)
    wallet.chain = None
    with pytest.raises(InvalidState, match="no chain"):
        await wallet.retry_registration(intent_id)


# ---------------------------------------------------------------------------------------------
# Policy, kill switch, idempotency, review
# ---------------------------------------------------------------------------------------------


async def test_a_policy_denial_signs_nothing_and_is_stored(wallet):
    agent_id, _key, _intent = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(per_transaction_cap=999))
    denied = await wallet.authorize_payment(agent_id, requirement(1_000), URL)
    assert (denied.outcome, denied.rule, denied.header, denied.payment_id) == ("deny", "per_transaction_cap", None, None)
    assert await reservations(wallet) == 0 and await wallet.payments() == []
    [stored] = await wallet.decisions(agent_id=agent_id)
    assert stored["id"] == denied.decision_id and stored["rule"] == "per_transaction_cap"
    assert stored["record"]["inputs"]["request"]["amount"] == 1_000
    assert stored["record"]["inputs"]["rules"]["per_transaction_cap"] == 999
    assert "payment.denied" in await event_types(wallet)
    allowed = await wallet.authorize_payment(agent_id, requirement(999), URL)  # at the boundary
    assert allowed.allowed


async def test_intent_limits_decide_through_the_policy(wallet, clock):
    agent_id, _key, intent_id = await agent_with_intent(wallet, budget=2_000, per_payment_cap=1_500, payees=[PAYEE])
    assert (await wallet.authorize_payment(agent_id, requirement(1_501), URL)).rule == "intent_per_payment_cap"
    other = Account.create().address
    assert (await wallet.authorize_payment(agent_id, requirement(1, payTo=other), URL)).rule == "intent_payee"
    assert (await wallet.authorize_payment(agent_id, requirement(1_500), URL)).allowed
    assert (await wallet.authorize_payment(agent_id, requirement(501), URL)).rule == "intent_budget"
    clock.offset = 3601
    assert (await wallet.authorize_payment(agent_id, requirement(1), URL)).rule == "intent_expired"
    assert await wallet.expire_intents() == [intent_id]
    record = await wallet.intent(intent_id)
    assert record.status is IntentStatus.EXPIRED and record.remaining == 0  # 500 went back to the owner
    with pytest.raises(NoMatchingIntent):
        await wallet.authorize_payment(agent_id, requirement(1, asset=Account.create().address), URL)


# ---------------------------------------------------------------------------------------------
# Standing auto-approval of intents
# ---------------------------------------------------------------------------------------------

AUTO = {"max_budget": 50_000, "max_duration_seconds": 3600, "max_per_payment_cap": 2_000,
        "payees": [PAYEE], "hosts": ["*.example.com"]}
WITHIN = {"budget": 50_000, "purpose": "forecasts", "duration_seconds": 3600, "per_payment_cap": 2_000,
          "payees": [PAYEE], "hosts": ["api.example.com"]}


@pytest.mark.parametrize("outside", [
    {"budget": 50_001}, {"duration_seconds": 3601}, {"per_payment_cap": 2_001}, {"payees": []},
    {"payees": [PAYEE, "0x" + "11" * 20]}, {"hosts": []}, {"hosts": ["example.com"]}, {"hosts": ["*.com"]},
])
async def test_a_standing_rule_approves_a_draft_within_it_and_only_within(wallet, registry, outside):
    agent_id, _key = await wallet.add_agent("auto")
    await wallet.set_rules(Rules(auto_approve=AUTO))
    within = await wallet.draft_intent(agent_id, **WITHIN)  # every bound met exactly
    assert within.status is IntentStatus.ACTIVE and within.chain_intent_id is not None
    assert registry.registered[-1] == bytes.fromhex(within.chain_intent_id[2:])
    async with wallet.db.snapshot() as conn:
        [approval] = [r for r in await audit.records(conn, limit=1000)
                      if r.action == "intent.approved" and r.payload["intent_id"] == within.id]
    assert approval.actor == "owner:auto-approve"
    beyond = await wallet.draft_intent(agent_id, **(WITHIN | outside))
    assert beyond.status is IntentStatus.PENDING_APPROVAL and beyond.chain_intent_id is None


async def test_no_auto_approval_under_the_kill_switch_or_beyond_the_escrow(wallet):
    agent_id, _key = await wallet.add_agent("auto")
    await wallet.set_rules(Rules(auto_approve=AUTO | {"max_budget": 10**10}), agent_id=agent_id)
    await wallet.engage_kill_switch(agent_id=agent_id)
    assert (await wallet.draft_intent(agent_id, **WITHIN)).status is IntentStatus.PENDING_APPROVAL
    await wallet.disengage_kill_switch(agent_id=agent_id)
    assert (await wallet.draft_intent(agent_id, **WITHIN)).status is IntentStatus.ACTIVE
    # The owner escrowed 10**9 (the fixture): a budget beyond it waits for the owner.
    assert (await wallet.draft_intent(agent_id, **(WITHIN | {"budget": 2 * 10**9}))).status is IntentStatus.PENDING_APPROVAL
    # Another agent, under the owner's default rules (none): nothing is approved on its own.
    other, _ = await wallet.add_agent("other")
    assert (await wallet.draft_intent(other, **WITHIN)).status is IntentStatus.PENDING_APPROVAL


async def test_the_kill_switch_denies_every_later_spend_and_revokes(wallet, registry):
    first, _k1, first_intent = await agent_with_intent(wallet, "one")
    second, _k2, second_intent = await agent_with_intent(wallet, "two")
    assert (await wallet.authorize_payment(first, requirement(), URL)).allowed

    assert await wallet.engage_kill_switch(agent_id=first, reason="runaway loop") == [first_intent]
    assert (await wallet.authorize_payment(first, requirement(), URL)).rule == "kill_switch_agent"
    assert (await wallet.authorize_payment(second, requirement(), URL)).allowed
    assert (await wallet.intent(first_intent)).status is IntentStatus.REVOKED

    await wallet.engage_kill_switch(reason="stop everything")
    for agent_id in (first, second):
        assert (await wallet.authorize_payment(agent_id, requirement(), URL)).rule == "kill_switch_global"
    assert len(registry.revoked) == 2  # both intents revoked on chain
    assert (await wallet.intent(second_intent)).chain_revoked_at is not None
    assert (await event_types(wallet)).count("killswitch.engaged") == 2
    async with wallet.db.snapshot() as conn:
        actions = [r.action for r in await audit.records(conn, limit=1000)]
    assert actions.count("killswitch.engaged") == 2 and actions.count("intent.chain_revoked") == 2

    await wallet.disengage_kill_switch()
    await wallet.disengage_kill_switch(agent_id=first)
    assert (await wallet.authorize_payment(second, requirement(), URL)).rule == "intent_revoked"


async def test_an_idempotency_key_returns_the_same_header_once_reserved(wallet):
    agent_id, _key, _intent = await agent_with_intent(wallet)
    first = await wallet.authorize_payment(agent_id, requirement(), URL, idempotency_key="req-1")
    again = await asyncio.gather(
        *(wallet.authorize_payment(agent_id, requirement(), URL, idempotency_key="req-1") for _ in range(5))
    )
    assert {a.header for a in again} == {first.header} and all(a.replayed for a in again)
    assert {a.payment_id for a in again} == {first.payment_id}
    assert await reservations(wallet) == 1 and len(await wallet.payments()) == 1
    with pytest.raises(IdempotencyConflict):
        await wallet.authorize_payment(agent_id, requirement(), URL + "?days=7", idempotency_key="req-1")
    other, _k, _i = await agent_with_intent(wallet, "other")  # keys are per agent
    assert (await wallet.authorize_payment(other, requirement(), URL, idempotency_key="req-1")).header != first.header


async def test_a_review_waits_for_the_owner_and_is_evaluated_again(wallet):
    agent_id, _key, _intent = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(review_above=1_000, daily_cap=4_000))
    pending = await wallet.authorize_payment(agent_id, requirement(2_000), URL, idempotency_key="big")
    assert (pending.outcome, pending.rule, pending.header) == ("review", "review_above", None)
    assert [r.id for r in await wallet.reviews()] == [pending.review_id]
    assert (await wallet.authorize_payment(agent_id, requirement(2_000), URL, idempotency_key="big")).outcome == "review"

    approved = await wallet.approve_review(pending.review_id)
    assert approved.allowed and approved.review_id == pending.review_id
    replay = await wallet.authorize_payment(agent_id, requirement(2_000), URL, idempotency_key="big")
    assert replay.header == approved.header and replay.replayed
    assert (await wallet.review(pending.review_id)).status is ReviewStatus.APPROVED
    with pytest.raises(InvalidState):
        await wallet.approve_review(pending.review_id)

    # A second big spend goes to review; meanwhile the day's cap fills up: approving it denies.
    late = await wallet.authorize_payment(agent_id, requirement(1_001), URL)
    assert (await wallet.authorize_payment(agent_id, requirement(1_000), URL)).allowed
    refused = await wallet.approve_review(late.review_id)
    assert (refused.outcome, refused.rule) == ("deny", "daily_cap")
    assert (await wallet.review(late.review_id)).status is ReviewStatus.DENIED

    third = await wallet.authorize_payment(agent_id, requirement(1_500), "/v1/other")
    assert (third.outcome, third.rule) == ("deny", "daily_cap")  # over the cap: deny beats review
    await wallet.set_rules(Rules(review_above=0))
    asked = await wallet.authorize_payment(agent_id, requirement(1), URL)
    assert (await wallet.deny_review(asked.review_id, reason="no")).status is ReviewStatus.DENIED
    assert (await wallet.review_authorization(agent_id, asked.review_id)).outcome == "deny"


async def test_an_undecided_review_expires_and_can_no_longer_be_signed(wallet, clock):
    clock.freeze()
    agent_id, _key, _intent = await agent_with_intent(wallet, duration_seconds=86_400)
    await wallet.set_rules(Rules(review_above=0))
    early = await wallet.authorize_payment(agent_id, requirement(), URL, idempotency_key="early")
    late = await wallet.authorize_payment(agent_id, requirement(), URL + "/2", idempotency_key="late")
    clock.offset = 3599.9  # just inside the hour
    assert (await wallet.approve_review(early.review_id)).allowed
    assert await wallet.expire_reviews() == []
    clock.offset = 3600  # the boundary: expired
    with pytest.raises(ReviewExpired):
        await wallet.approve_review(late.review_id)
    record = await wallet.review(late.review_id)
    assert record.status is ReviewStatus.EXPIRED and record.payment_id is None
    for attempt in (
        wallet.review_authorization(agent_id, late.review_id),
        wallet.authorize_payment(agent_id, requirement(), URL + "/2", idempotency_key="late"),
        wallet.deny_review(late.review_id),
    ):
        with pytest.raises(ReviewExpired, match="expired"):
            await attempt
    assert (await wallet.review(early.review_id)).status is ReviewStatus.APPROVED  # decided in time
    assert await reservations(wallet) == 1  # the expired one never reserved anything
    assert [r.id for r in await wallet.reviews(status=ReviewStatus.EXPIRED)] == [late.review_id]
    async with wallet.db.snapshot() as conn:
        expired = [r.payload for r in await audit.records(conn, limit=1000) if r.action == "payment.review_expired"]
    assert [p["review_id"] for p in expired] == [late.review_id]


async def test_a_review_overdue_but_not_yet_swept_is_refused_in_the_same_transaction(wallet, clock):
    agent_id, _key, _intent = await agent_with_intent(wallet, duration_seconds=86_400)
    await wallet.set_rules(Rules(review_above=0))
    asked = await wallet.authorize_payment(agent_id, requirement(), URL)
    wallet.expire_reviews = _no_sweep  # the sweep missed it (a clock step between the two)
    clock.offset = 4000
    with pytest.raises(ReviewExpired):
        await wallet.approve_review(asked.review_id)
    assert await reservations(wallet) == 0


async def _no_sweep(**_options: Any) -> list[str]:
    return []


async def test_a_released_payment_stops_counting(wallet):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(daily_cap=1_000))
    paid = await wallet.authorize_payment(agent_id, requirement(), URL)
    assert (await wallet.authorize_payment(agent_id, requirement(), URL)).rule == "daily_cap"
    released = await wallet.release_payment(paid.payment_id, reason="gateway answered 500")
    assert released.status is PaymentStatus.RELEASED
    assert (await wallet.intent(intent_id)).remaining == 100_000
    assert (await wallet.authorize_payment(agent_id, requirement(), URL)).allowed
    with pytest.raises(InvalidState):
        await wallet.confirm(paid.payment_id)


# ---------------------------------------------------------------------------------------------
# The concurrency guarantee
# ---------------------------------------------------------------------------------------------


async def test_300_concurrent_spends_against_a_cap_of_100_sign_exactly_100(wallet):
    agents = [(await agent_with_intent(wallet, f"agent-{n}", budget=1_000, per_payment_cap=10))[0] for n in range(3)]
    await wallet.set_rules(Rules(daily_cap=100, scope="owner"))  # 100 calls of 1 base unit, all agents

    results = await asyncio.gather(
        *(
            wallet.authorize_payment(agents[n % 3], requirement(1), f"http://gateway.test/v1/forecast/c{n}")
            for n in range(300)
        )
    )
    signed = [r for r in results if r.allowed]
    assert len(signed) == 100 and len({r.header for r in signed}) == 100
    assert {r.rule for r in results if not r.allowed} == {"daily_cap"}
    assert await reservations(wallet) == 100
    async with wallet.db.snapshot() as conn:
        assert (await conn.execute(select(func.count()).select_from(wallet_payments))).scalar_one() == 100
        assert sum((await ledger.balances(conn, "reserved")).values()) == 100
    assert len(await wallet.decisions()) == 300


# ---------------------------------------------------------------------------------------------
# The audit trail and secrets
# ---------------------------------------------------------------------------------------------


async def test_the_audit_verifies_and_nothing_carries_a_secret(wallet):
    agent_id, api_key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(per_transaction_cap=2_000))
    returned: list[Any] = [await wallet.add_agent("second"), await wallet.intent(intent_id), wallet]
    returned.append(await wallet.authorize_payment(agent_id, requirement(), URL + "?token=abc"))
    returned.append(await wallet.authorize_payment(agent_id, requirement(5_000), URL))
    returned += [await wallet.payments(), await wallet.decisions(), await wallet.agents()]
    await wallet.engage_kill_switch()

    report = await audit.verify(wallet.db)
    assert report.ok and report.records > 5

    async with wallet.db.snapshot() as conn:
        records = await audit.records(conn, limit=10_000)
        row = (await conn.execute(select(wallet_intents).where(wallet_intents.c.id == intent_id))).one()
    session_key = wallet.sealer.open_session_key(
        row.sealed_session_key, aad=session_key_aad(intent_id=intent_id, agent_id=agent_id)
    )
    secrets = [
        api_key,
        api_key.split(".")[1],
        returned[0].api_key.split(".")[1],
        wallet.owner.account.key.hex(),
        str(session_key.secret),
        session_key.to_hex()[2:],
    ]
    payloads = [json.dumps(r.payload) for r in records]
    for text in [repr(item) for item in returned] + payloads:
        for secret in secrets:
            assert secret not in text
    # The audit log names the resource without its query, which may carry credentials.
    assert all("token=abc" not in text for text in payloads)


# ---------------------------------------------------------------------------------------------
# On a real chain: registration at approval, revocation
# ---------------------------------------------------------------------------------------------


@pytest.mark.chain
async def test_approval_registers_and_revocation_revokes_on_anvil(wallet_db, tmp_path, deployment, make_payer):
    payer = make_payer(escrow=100_000)  # a payer.Escrow: the wallet's IntentRegistry
    owner = OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, private_key=payer.account.key, **FAST_KDF)
    sealer = Sealer(os.urandom(32))
    hooks = webhooks.Webhooks(wallet_db, sealer=sealer)
    service = WalletService(
        wallet_db, owner=owner, sealer=sealer, deployment=deployment,
        processor=payer.processor, webhooks=hooks, chain=payer,
    )
    try:
        await service.record_deposit(100_000)
        agent_id, _api_key = await service.add_agent("on-chain")
        draft = await service.draft_intent(
            agent_id, budget=50_000, purpose="chain", duration_seconds=3600, per_payment_cap=1_000
        )
        approved = await service.approve_intent(draft.id)
        assert approved.registered_at is not None
        chain_id = bytes.fromhex(approved.chain_intent_id[2:])
        record = payer.settlement.functions.getIntent(chain_id).call()
        assert (record[0], record[3], record[10]) == (owner.address, 50_000, 0)  # payer, maxAmount, revokedAt

        revoked = await service.revoke_intent(draft.id, reason="done")
        assert revoked.status is IntentStatus.REVOKED and revoked.chain_revoked_at is not None
        assert payer.settlement.functions.getIntent(chain_id).call()[10] > 0
        assert (await audit.verify(wallet_db)).ok
    finally:
        await hooks.aclose()


# ---------------------------------------------------------------------------------------------
# The kill switch thrown mid-run
# ---------------------------------------------------------------------------------------------


async def audit_positions(wallet: WalletService) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """action -> ``[(seq, payload)]``, in chain order: the witness of what happened when."""
    async with wallet.db.snapshot() as conn:
        records = await audit.records(conn, limit=100_000)
    positions: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for record in records:
        positions.setdefault(record.action, []).append((record.seq, record.payload))
    return positions


@pytest.mark.parametrize(("scope", "revoke"), [("global", False), ("agent", True)])
async def test_no_mandate_is_signed_after_the_kill_switch_returns(wallet, scope, revoke):
    """Five agents spend in a loop and a reviewer approves queued reviews while the owner
    throws the switch. Every signature (from either path) sits before the switch in the audit
    chain, and every call begun after ``engage_kill_switch`` returned is denied."""
    agents = [(await agent_with_intent(wallet, f"a{n}", budget=10**6, per_payment_cap=10))[0] for n in range(5)]
    stopped = agents if scope == "global" else agents[:1]
    await wallet.set_rules(Rules(review_above=5))
    queued = [(a, await wallet.authorize_payment(a, requirement(6), f"{URL}/review/{a}/{i}"))
              for a in agents for i in range(4)]
    assert {q.outcome for _a, q in queued} == {"review"}

    engaged = asyncio.Event()
    late: list[tuple[str, Any]] = []  # (agent, answer) of the calls begun after engage returned
    allowed: list[Any] = []
    straddling = 0  # calls begun before engage returned that answered after it: in flight


    async def spend(agent_id: str) -> None:
        nonlocal straddling
        for n in range(10_000):
            begun_after = engaged.is_set()
            answer = await wallet.authorize_payment(agent_id, requirement(1), f"{URL}/{agent_id}/{n}")
            straddling += engaged.is_set() and not begun_after
            if answer.allowed:
                allowed.append(answer)
            if begun_after:
                late.append((agent_id, answer))
                if agent_id in stopped or len(late) > 20:
                    return
        raise AssertionError("the spend loop never saw the switch")

    async def review() -> None:
        for agent_id, item in queued:
            begun_after = engaged.is_set()
            answer = await wallet.approve_review(item.review_id)
            if answer.allowed:
                allowed.append(answer)
            if begun_after:
                late.append((agent_id, answer))
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(spend(a)) for a in agents] + [asyncio.create_task(review())]
    while len(allowed) < 20:
        await asyncio.sleep(0.001)
    await wallet.engage_kill_switch(agent_id=None if scope == "global" else stopped[0], reason="mid-run", revoke=revoke)
    engaged.set()
    await asyncio.gather(*tasks)

    assert straddling > 0
    rule = "kill_switch_global" if scope == "global" else "kill_switch_agent"
    for agent_id, answer in late:
        if agent_id in stopped:
            assert (answer.outcome, answer.rule) == ("deny", rule), answer
    positions = await audit_positions(wallet)
    [(switch_at, _payload)] = positions["killswitch.engaged"]
    signed = positions["payment.authorized"]
    assert len(signed) == len(allowed) == len(await wallet.payments())  # one record per signature
    stopped_signatures = [seq for seq, payload in signed if payload["agent_id"] in stopped]
    assert stopped_signatures and max(stopped_signatures) < switch_at
    if scope == "agent":  # the others went on spending after the switch
        assert any(seq > switch_at for seq, payload in signed if payload["agent_id"] not in stopped)
    assert (await audit.verify(wallet.db)).ok

