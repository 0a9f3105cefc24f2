"""AgentCards: minting through the policy, the issuer's authorization and its declines, the
ledger through every path, the sweeper, and the secrets shown once and nowhere else.

The wallet is ``test_wallet_service``'s (a real database, the offline deployment); the example
merchant (``examples.merchant``) runs under uvicorn on loopback against the wallet's API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from hypothesis import given
from hypothesis import strategies as st

from examples.merchant import AcquirerClient
from examples.merchant import create_app as merchant_app
from wallet import audit, ledger, webhooks
from wallet.app import create_app
from wallet.cards import (
    AuthorizationStatus,
    CardIssuer,
    CardStatus,
    CardVerdict,
    CouncilCardReviewer,
    DeclineReason,
    IssuerBin,
    card_payee,
    luhn_check_digit,
    luhn_valid,
    to_base_units,
)
from wallet.council import Council, JudgeAnswer, JudgeRole, SpendCase, Vote
from wallet.db import Database, wallet_council_votes
from wallet.keys import OwnerKeystore, Sealer
from wallet.policy import Rules
from wallet.service import InvalidRequest, InvalidState, NotFound, WalletService

from test_wallet_service import (  # noqa: F401  (fixtures)
    FAST_KDF,
    PASSWORD,
    agent_with_intent,
    clock,
    registry,
    requirement,
    wallet,
)
from gateway_fixtures import OFFLINE_DEPLOYMENT, PROCESSOR  # noqa: E402  (on the path test_wallet_service set)

MERCHANT = "shop-1"
MCC = "5734"
OWNER_TOKEN = "owner-token-" + "x" * 32
BUDGET = 100_000


@pytest.fixture
async def cards(wallet):
    return CardIssuer(wallet)


@pytest.fixture
async def acquirer(cards):
    return (await cards.add_acquirer("acquirer")).acquirer_id


async def minted(cards: CardIssuer, agent_id: str, intent_id: str, amount: int = 2_000, **options: Any):
    result = await cards.mint(agent_id, intent_id=intent_id, amount=amount, **options)
    assert result.outcome == "allow" and result.card is not None and result.secrets is not None, result
    return result.card, result.secrets


def presented(card, shown, **overrides: Any) -> dict[str, Any]:
    """What a merchant sends for ``card``: its number, expiry and CVV, MERCHANT and MCC."""
    return {"number": shown.number, "exp_month": card.exp_month, "exp_year": card.exp_year, "cvv": shown.cvv,
            "amount": card.amount, "merchant_id": MERCHANT, "mcc": MCC} | overrides


async def balances(wallet) -> dict[str, dict[str, int]]:
    async with wallet.db.snapshot() as conn:
        return {kind.value: await ledger.balances(conn, kind) for kind in ledger.AccountKind}


def reference_luhn(number: str) -> bool:
    """Luhn as textbooks state it: double every second digit from the right, sum the digits."""
    digits = [int(d) for d in number]
    for i in range(len(digits) - 2, -1, -2):
        digits[i] = sum(divmod(digits[i] * 2, 10))
    return sum(digits) % 10 == 0


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


@given(prefix=st.sampled_from(["424242", "400000", "22230000", "51000000"]), length=st.integers(15, 19),
       draws=st.integers(1, 20))
def test_every_generated_number_is_luhn_valid_and_in_the_bin(prefix, length, draws):
    issuer_bin = IssuerBin(prefix, length)
    for _ in range(draws):
        number = issuer_bin.generate()
        assert number in issuer_bin and luhn_valid(number) and reference_luhn(number)


@given(payload=st.text("0123456789", min_size=11, max_size=18), position=st.integers(0, 18), delta=st.integers(1, 9))
def test_luhn_catches_every_single_digit_error(payload, position, delta):
    number = payload + luhn_check_digit(payload)
    assert luhn_valid(number) and reference_luhn(number)
    position %= len(number)
    wrong = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1:]
    assert not luhn_valid(wrong)


def test_issuer_bin_refuses_bad_ranges():
    for prefix, length in (("4242", 16), ("42424x", 16), ("424242", 12), ("42424242", 14)):
        with pytest.raises(ValueError):
            IssuerBin(prefix, length)


def test_decimal_amounts_convert_with_six_decimals():
    assert to_base_units("25.00") == 25_000_000 and to_base_units("0.000001") == 1
    for bad in ("0", "-1", "1.0000001", "abc", "NaN", "Infinity"):
        with pytest.raises(InvalidRequest):
            to_base_units(bad)


async def test_many_mints_are_luhn_valid_distinct_and_shown_once(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    numbers = set()
    for _ in range(60):
        card, shown = await minted(cards, agent_id, intent_id, 10)
        assert luhn_valid(shown.number) and reference_luhn(shown.number) and shown.number in cards.bin
        assert card.last4 == shown.number[-4:] and len(shown.cvv) == 3 and shown.cvv.isdigit()
        numbers.add(shown.number)
    assert len(numbers) == 60


# ---------------------------------------------------------------------------------------------
# Minting through the policy
# ---------------------------------------------------------------------------------------------


async def test_mint_holds_the_amount_and_announces_the_card(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, _shown = await minted(cards, agent_id, intent_id, 2_500, merchant_id=MERCHANT, mcc=MCC)
    assert card.status is CardStatus.ACTIVE and (card.merchant_id, card.mcc) == (MERCHANT, MCC)
    assert (await wallet.intent(intent_id)).remaining == BUDGET - 2_500
    async with wallet.db.snapshot() as conn:
        assert await ledger.card_held(conn, card.id) == 2_500
        types = [d.event_type.value for d in await webhooks.deliveries(conn)]
    assert "card.created" in types


async def test_mint_is_a_spend_the_policy_counts(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(daily_cap=3_000, payee_denylist=frozenset({card_payee("casino")})))
    await minted(cards, agent_id, intent_id, 2_000)
    denied = await cards.mint(agent_id, intent_id=intent_id, amount=1_001)
    assert (denied.outcome, denied.rule) == ("deny", "daily_cap")
    # The card counts against the x402 spends too, and theirs against the cards.
    paid = await wallet.authorize_payment(agent_id, requirement(1_000), "http://gateway.test/v1/forecast/x")
    assert paid.allowed
    again = await wallet.authorize_payment(agent_id, requirement(1), "http://gateway.test/v1/forecast/y")
    assert again.rule == "daily_cap"
    await wallet.set_rules(Rules(payee_denylist=frozenset({card_payee("casino")})))
    blocked = await cards.mint(agent_id, intent_id=intent_id, amount=10, merchant_id="casino")
    assert blocked.rule == "payee_denylist"
    over = await cards.mint(agent_id, intent_id=intent_id, amount=5_001)
    assert over.rule == "intent_per_payment_cap"


async def test_an_intent_and_rules_naming_hosts_still_fund_a_card_at_an_allowed_merchant(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet, hosts=["api.example.com"])
    await wallet.set_rules(Rules(host_allowlist=frozenset({"api.example.com"}),
                                 payee_denylist=frozenset({card_payee("casino")})))
    await minted(cards, agent_id, intent_id, 1_000, merchant_id=MERCHANT)
    blocked = await cards.mint(agent_id, intent_id=intent_id, amount=10, merchant_id="casino")
    assert blocked.rule == "payee_denylist"
    # An x402 spend without a host still fails both host rules.
    bare = await wallet.authorize_payment(agent_id, requirement(1_000), "/v1/forecast/x")
    assert not bare.allowed and bare.rule == "intent_host"


async def test_the_on_mission_check_reads_the_merchant_a_card_is_locked_to(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet, purpose="ads for the product launch campaign")
    await wallet.set_rules(Rules(off_mission="deny"))
    await minted(cards, agent_id, intent_id, 1_000, merchant_id="adnet-campaigns")
    off = await cards.mint(agent_id, intent_id=intent_id, amount=1_000, merchant_id="casino")
    assert (off.outcome, off.rule) == ("deny", "off_mission")
    anywhere = await cards.mint(agent_id, intent_id=intent_id, amount=1_000)
    assert (anywhere.outcome, anywhere.rule) == ("deny", "off_mission")  # no merchant, nothing on mission


async def test_mint_refuses_an_intent_that_is_not_the_agents(wallet, cards):
    agent_id, _key, _intent = await agent_with_intent(wallet)
    _other, _key2, other_intent = await agent_with_intent(wallet, "other")
    with pytest.raises(NotFound):
        await cards.mint(agent_id, intent_id=other_intent, amount=10)
    with pytest.raises(InvalidRequest):
        await cards.mint(agent_id, intent_id=other_intent, amount=10, mcc="57")


async def test_a_review_is_decided_by_the_owner_and_the_card_shown_once(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(review_above=1_000))
    asked = await cards.mint(agent_id, intent_id=intent_id, amount=2_000, idempotency_key="k1")
    assert asked.outcome == "review" and asked.review_id is not None
    assert (await cards.review_result(agent_id, asked.review_id)).outcome == "review"
    approved = await cards.approve_review(asked.review_id)
    assert approved.outcome == "allow" and approved.secrets is None  # not the owner's to see
    first = await cards.mint(agent_id, intent_id=intent_id, amount=2_000, idempotency_key="k1")
    assert first.replayed and first.secrets is not None and luhn_valid(first.secrets.number)
    again = await cards.review_result(agent_id, asked.review_id)
    assert again.outcome == "allow" and again.secrets is None and again.card.id == first.card.id


async def test_the_reviewer_hook_decides_card_reviews(wallet):
    seen = []

    async def council(review):
        seen.append(review)
        return CardVerdict(approve=review.amount < 3_000, reason="offline council")

    cards = CardIssuer(wallet, reviewer=council)
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(review_above=1_000))
    approved = await cards.mint(agent_id, intent_id=intent_id, amount=2_000)
    assert approved.outcome == "allow" and approved.secrets is not None
    denied = await cards.mint(agent_id, intent_id=intent_id, amount=4_000)
    assert denied.outcome == "deny" and "offline council" in denied.reason
    assert [r.amount for r in seen] == [2_000, 4_000]
    assert (await cards.review(denied.review_id)).decided_by == "council"


async def test_the_ai_council_decides_a_card_in_review_and_its_votes_are_stored(wallet):
    """The real ``Council`` with a scripted backend: approve under 3 000, deny above."""

    class Scripted:
        name = "scripted"

        async def judge(self, role: JudgeRole, case: SpendCase, *, timeout: float) -> JudgeAnswer:
            assert case.method == "CARD" and case.resource == f"card:{MERCHANT}" and case.purpose == "forecasts"
            vote = "approve" if case.amount < 3_000 else "deny"
            return JudgeAnswer(Vote(vote, f"{role.name}: {vote} {case.amount}", 10, 0.9), model="scripted")

        async def aclose(self) -> None:
            return None

    cards = CardIssuer(wallet, reviewer=CouncilCardReviewer(Council(Scripted()), wallet))
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    await wallet.set_rules(Rules(review_above=1_000))
    approved = await cards.mint(agent_id, intent_id=intent_id, amount=2_000, merchant_id=MERCHANT)
    assert approved.outcome == "allow" and approved.secrets is not None
    denied = await cards.mint(agent_id, intent_id=intent_id, amount=4_000, merchant_id=MERCHANT)
    assert denied.outcome == "deny" and (await cards.review(denied.review_id)).decided_by == "council"
    async with wallet.db.snapshot() as conn:
        votes = (await conn.execute(select(wallet_council_votes.c.review_id, wallet_council_votes.c.vote))).all()
    assert sorted(votes) == sorted([(approved.review_id, "approve")] * 5 + [(denied.review_id, "deny")] * 5)
    assert (await balances(wallet))["card"] == {approved.card.id: 2_000}  # only the approved card holds funds


# ---------------------------------------------------------------------------------------------
# Authorization: approvals and every decline
# ---------------------------------------------------------------------------------------------


async def test_each_decline_reason(wallet, cards, acquirer, clock):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id, 2_000, merchant_id=MERCHANT, mcc=MCC)
    wrong_cvv = str((int(shown.cvv) + 1) % 1000).zfill(3)
    other = shown.number[:-2] + str((int(shown.number[-2]) + 1) % 10)
    other += luhn_check_digit(other)
    cases = {
        DeclineReason.INVALID_CARD: [{"number": other}, {"number": "4242"}, {"number": shown.number[:-1] + "x"}],
        DeclineReason.INCORRECT_CVV: [{"cvv": wrong_cvv}, {"cvv": ""}],
        DeclineReason.INCORRECT_EXPIRY: [{"exp_month": card.exp_month % 12 + 1}, {"exp_year": card.exp_year + 1}],
        DeclineReason.WRONG_MERCHANT: [{"merchant_id": "shop-2"}, {"mcc": "7995"}],
        DeclineReason.OVER_AMOUNT: [{"amount": 2_001}],
    }
    for reason, variants in cases.items():
        for variant in variants:
            auth = await cards.authorize(acquirer, **presented(card, shown, **variant))
            assert (auth.approved, auth.decline_reason, auth.card_id) == (False, reason, None), variant
    assert (await cards.authorize(acquirer, **presented(card, shown, exp_year=card.exp_year % 100))).approved

    cancelled, cancelled_shown = await minted(cards, agent_id, intent_id, merchant_id=MERCHANT)
    await cards.cancel(cancelled.id, agent_id=agent_id)
    auth = await cards.authorize(acquirer, **presented(cancelled, cancelled_shown))
    assert auth.decline_reason is DeclineReason.CANCELLED

    expiring, expiring_shown = await minted(cards, agent_id, intent_id, ttl_seconds=60)
    clock.offset = 61
    assert (await cards.authorize(acquirer, **presented(expiring, expiring_shown))).decline_reason is DeclineReason.EXPIRED
    await cards.expire_cards()
    assert (await cards.authorize(acquirer, **presented(expiring, expiring_shown))).decline_reason is DeclineReason.EXPIRED
    # Card data is checked before state: without the CVV nothing is learnt of a cancelled card.
    auth = await cards.authorize(acquirer, **presented(cancelled, cancelled_shown, cvv=wrong_cvv))
    assert auth.decline_reason is DeclineReason.INCORRECT_CVV


async def test_a_used_card_is_declined_the_second_time(wallet, cards, acquirer):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id)
    first = await cards.authorize(acquirer, **presented(card, shown))
    assert first.approved and first.status is AuthorizationStatus.PENDING
    assert (await cards.authorize(acquirer, **presented(card, shown))).decline_reason is DeclineReason.ALREADY_USED
    await cards.capture(acquirer, first.id)
    assert (await cards.card(card.id)).status is CardStatus.USED
    assert (await cards.authorize(acquirer, **presented(card, shown))).decline_reason is DeclineReason.ALREADY_USED
    with pytest.raises(InvalidState):
        await cards.capture(acquirer, first.id)
    with pytest.raises(InvalidState):
        await cards.cancel(card.id)


async def test_200_concurrent_authorizations_approve_exactly_one(wallet, cards, acquirer):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id)
    results = await asyncio.gather(*(cards.authorize(acquirer, **presented(card, shown)) for _ in range(200)))
    assert sum(r.approved for r in results) == 1
    assert {r.decline_reason for r in results if not r.approved} == {DeclineReason.ALREADY_USED}
    assert (await cards.card(card.id)).status is CardStatus.AUTHORIZED
    assert len(await cards.authorizations(card_id=card.id)) == 200


async def test_only_the_authorizing_acquirer_may_capture(wallet, cards, acquirer):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id)
    auth = await cards.authorize(acquirer, **presented(card, shown))
    stranger = (await cards.add_acquirer("stranger")).acquirer_id
    with pytest.raises(NotFound):
        await cards.capture(stranger, auth.id)
    with pytest.raises(InvalidRequest):
        await cards.capture(acquirer, auth.id, card.amount + 1)


# ---------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------


async def test_the_sweeper_expires_cards_and_releases_their_holds(wallet, cards, acquirer, clock):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    short, _ = await minted(cards, agent_id, intent_id, 1_500, ttl_seconds=60)
    long, _ = await minted(cards, agent_id, intent_id, 700, ttl_seconds=600)
    lapsing, lapsing_shown = await minted(cards, agent_id, intent_id, 300, ttl_seconds=600)
    await cards.authorize(acquirer, **presented(lapsing, lapsing_shown))
    assert (await wallet.intent(intent_id)).remaining == BUDGET - 2_500
    clock.offset = 61
    assert await cards.expire_cards() == [short.id]
    assert (await cards.card(short.id)).status is CardStatus.EXPIRED
    assert (await wallet.intent(intent_id)).remaining == BUDGET - 1_000
    clock.offset = cards.authorization_ttl + 1
    assert sorted(await cards.expire_cards()) == sorted([long.id, lapsing.id])
    assert (await cards.card(lapsing.id)).status is CardStatus.CANCELLED
    assert (await wallet.intent(intent_id)).remaining == BUDGET
    assert (await cards.authorizations(card_id=lapsing.id))[0].status is AuthorizationStatus.REVERSED
    async with wallet.db.snapshot() as conn:
        assert [await ledger.card_held(conn, c.id) for c in (short, long, lapsing)] == [0, 0, 0]
        types = [d.event_type.value for d in await webhooks.deliveries(conn)]
    assert types.count("card.expired") == 2 and types.count("card.cancelled") == 1
    assert await cards.expire_cards() == []


async def test_partial_capture_returns_the_remainder_and_refunds_return_to_the_intent(wallet, cards, acquirer):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id, 2_000, merchant_id=MERCHANT)
    auth = await cards.authorize(acquirer, **presented(card, shown, amount=1_800))
    captured = await cards.capture(acquirer, auth.id, 1_200)
    assert (captured.status, captured.captured) == (AuthorizationStatus.CAPTURED, 1_200)
    assert (await wallet.intent(intent_id)).remaining == BUDGET - 1_200
    totals = await balances(wallet)
    assert totals["merchant"] == {MERCHANT: 1_200} and totals["card"][card.id] == 0
    await cards.refund(acquirer, auth.id, 200)
    refunded = await cards.refund(acquirer, auth.id)
    assert refunded.refunded == 1_200
    with pytest.raises(InvalidState):
        await cards.refund(acquirer, auth.id, 1)
    assert (await wallet.intent(intent_id)).remaining == BUDGET
    assert (await balances(wallet))["merchant"] == {MERCHANT: 0}


async def test_reversal_cancels_the_card_and_releases_the_hold(wallet, cards, acquirer):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, shown = await minted(cards, agent_id, intent_id, 900)
    auth = await cards.authorize(acquirer, **presented(card, shown))
    reversed_ = await cards.reverse(acquirer, auth.id)
    assert reversed_.status is AuthorizationStatus.REVERSED
    assert (await cards.card(card.id)).status is CardStatus.CANCELLED
    assert (await wallet.intent(intent_id)).remaining == BUDGET


async def test_a_hold_released_after_the_intent_was_revoked_goes_back_to_the_owner(wallet, cards):
    agent_id, _key, intent_id = await agent_with_intent(wallet)
    card, _ = await minted(cards, agent_id, intent_id, 900)
    await wallet.revoke_intent(intent_id)
    owner_before = (await balances(wallet))["owner"][wallet.owner_ref]
    await cards.cancel(card.id)
    assert (await balances(wallet))["owner"][wallet.owner_ref] == owner_before + 900


@pytest.mark.parametrize("seed", range(4))
async def test_the_ledger_stays_balanced_through_random_card_paths(wallet, cards, acquirer, clock, seed):
    """Random mints, authorizations, captures (full and partial), reversals, refunds, cancels
    and sweeps; after each step every balance sums to zero, nothing in the escrow is negative,
    each card holds its amount while open and nothing once closed, and the intent's budget is
    what neither open cards nor net captures took."""
    rng = random.Random(seed)
    agent_id, _key, intent_id = await agent_with_intent(wallet, budget=50_000, per_payment_cap=5_000)
    open_cards: list[Any] = []
    pending: list[str] = []
    captured: list[str] = []
    for _step in range(40):
        op = rng.choice(["mint", "mint", "authorize", "capture", "reverse", "refund", "cancel", "sweep"])
        if op == "mint":
            card, shown = await minted(cards, agent_id, intent_id, rng.randint(1, 5_000), ttl_seconds=rng.randint(30, 600))
            open_cards.append((card, shown))
        elif op == "authorize" and open_cards:
            card, shown = rng.choice(open_cards)
            auth = await cards.authorize(acquirer, **presented(card, shown, amount=rng.randint(1, card.amount)))
            if auth.approved:
                pending.append(auth.id)
        elif op in ("capture", "reverse") and pending:
            auth_id = pending.pop(rng.randrange(len(pending)))
            try:
                if op == "capture":
                    auth = next(a for a in await cards.authorizations() if a.id == auth_id)
                    await cards.capture(acquirer, auth_id, rng.randint(1, auth.amount))
                    captured.append(auth_id)
                else:
                    await cards.reverse(acquirer, auth_id)
            except InvalidState:  # the sweeper or a cancel closed it first
                pass
        elif op == "refund" and captured:
            auth = next(a for a in await cards.authorizations() if a.id == rng.choice(captured))
            if auth.captured > auth.refunded:
                await cards.refund(acquirer, auth.id, rng.randint(1, auth.captured - auth.refunded))
        elif op == "cancel" and open_cards:
            card, _ = rng.choice(open_cards)
            if (await cards.card(card.id)).status in (CardStatus.ACTIVE, CardStatus.AUTHORIZED):
                await cards.cancel(card.id)
        elif op == "sweep":
            clock.offset += rng.randint(0, 300)
            await cards.expire_cards()
        totals = await balances(wallet)
        assert sum(sum(accounts.values()) for accounts in totals.values()) == 0
        for kind in ("owner", "intent", "reserved", "card", "merchant"):
            assert all(value >= 0 for value in totals[kind].values()), (kind, totals[kind])
        every = await cards.cards()
        for card in every:
            held = card.amount if card.status in (CardStatus.ACTIVE, CardStatus.AUTHORIZED) else 0
            assert totals["card"][card.id] == held
        net_captured = sum(a.captured - a.refunded for a in await cards.authorizations())
        assert totals["merchant"].get(MERCHANT, 0) == net_captured
        assert totals["intent"][intent_id] == 50_000 - sum(totals["card"].values()) - net_captured


# ---------------------------------------------------------------------------------------------
# Over HTTP: the API, the example merchant on loopback, and no secret anywhere
# ---------------------------------------------------------------------------------------------


async def test_the_merchant_checks_out_a_card_over_loopback_and_no_secret_leaks(wallet, cards, served_here, caplog,
                                                                                tmp_path):
    caplog.set_level(logging.DEBUG)
    agent_id, api_key, intent_id = await agent_with_intent(wallet)
    wallet_url = await served_here(create_app(wallet, owner_token=OWNER_TOKEN, cards=cards, webhook_interval=3600))
    seen: list[str] = []  # every response body but the mint answer
    async with httpx.AsyncClient(base_url=wallet_url, timeout=10) as http:
        agent = {"Authorization": f"Bearer {api_key}"}
        owner = {"Authorization": f"Bearer {OWNER_TOKEN}"}
        made = await http.post("/v1/cards", headers=agent, json={
            "intentId": intent_id, "amount": 3_000, "merchantId": MERCHANT, "mcc": MCC})
        assert made.status_code == 201 and made.headers["cache-control"] == "no-store", made.text
        mint = made.json()
        number, cvv, card_id = mint["number"], mint["cvv"], mint["card"]["id"]
        acq = await http.post("/v1/acquirers", headers=owner, json={"name": "loopback acquirer"})
        assert acq.status_code == 201
        for credential in (agent, owner):  # neither opens the issuing routes
            refused = await http.post("/v1/issuing/authorizations", headers=credential, json={})
            assert refused.status_code == 401
            seen.append(refused.text)
        acquirer_key = {"Authorization": f"Bearer {acq.json()['apiKey']}"}
        assert (await http.get("/v1/cards", headers=acquirer_key)).status_code == 401

        shop_url = await served_here(merchant_app(AcquirerClient(wallet_url, acq.json()["apiKey"]),
                                                  merchant_id=MERCHANT, mcc=MCC))
        async with httpx.AsyncClient(base_url=shop_url, timeout=10) as shop:
            card = {"number": number, "expMonth": mint["card"]["expMonth"], "expYear": mint["card"]["expYear"]}
            declined = await shop.post("/v1/checkout", json={"amount": 1_000, "card": card | {"cvv": "xyz"}})
            assert declined.status_code == 402 and declined.json()["declineReason"] == "incorrect_cvv"
            order = await shop.post("/v1/checkout", json={"amount": 2_500, "captureAmount": 2_000,
                                                          "card": card | {"cvv": cvv}})
            assert order.status_code == 201, order.text
            assert order.json()["status"] == "captured" and order.json()["captured"] == 2_000
            refund = await shop.post(f"/v1/orders/{order.json()['id']}/refund", json={"amount": 500})
            assert refund.json()["refunded"] == 500
            again = await shop.post("/v1/checkout", json={"amount": 10, "card": card | {"cvv": cvv}})
            assert again.json()["declineReason"] == "already_used"
            seen += [declined.text, order.text, refund.text, again.text]

        listed = await http.get("/v1/cards", headers=agent)
        assert listed.json()["cards"][0]["status"] == "used" and listed.json()["cards"][0]["last4"] == number[-4:]
        cancel = await http.post(f"/v1/cards/{card_id}/cancel", headers=agent)
        assert cancel.status_code == 409
        seen += [listed.text, cancel.text]
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert {"/v1/cards", "/v1/issuing/authorizations/{authorization_id}/refund"} <= set(paths)

    assert (await wallet.intent(intent_id)).remaining == BUDGET - 1_500
    async with wallet.db.snapshot() as conn:
        trail = json.dumps([r.payload for r in await audit.records(conn, limit=10_000)])
        deliveries = await webhooks.deliveries(conn)
    hooks = json.dumps([d.payload for d in deliveries])
    assert {r["card_id"] for r in json.loads(trail) if "card_id" in r} == {card_id}
    assert {"card.created", "card.authorized", "card.used"} <= {d.event_type.value for d in deliveries}
    used = next(json.loads(d.payload)["data"] for d in deliveries if d.event_type.value == "card.used")
    assert (used["captured"], used["released"], used["last4"]) == (2_000, 1_000, number[-4:])
    logs = "\n".join(record.getMessage() for record in caplog.records)
    stored = b"".join(path.read_bytes() for path in Path(tmp_path).rglob("*.sqlite*"))
    for text in (*seen, trail, hooks, logs):
        assert number not in text and '"cvv"' not in text.lower()
    assert number.encode() not in stored
    assert (await audit.verify(wallet.db)).ok


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


async def test_the_cli_creates_lists_and_cancels_cards(tmp_path):
    deployment = tmp_path / "deployment.json"
    OFFLINE_DEPLOYMENT.save(deployment)
    env = {
        "AEP2_WALLET_DB": f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite'}",
        "AEP2_WALLET_KEY": Sealer.generate_key(),
        "AEP2_WALLET_OWNER_PASSWORD": PASSWORD,
        "AEP2_WALLET_OWNER_KEYSTORE": str(tmp_path / "owner.json"),
        "AEP2_DEPLOYMENT": str(deployment),
        "AEP2_PROCESSOR": PROCESSOR,
        "AEP2_CARD_BIN": "40000000",
    }
    async with Database(env["AEP2_WALLET_DB"]) as db:
        await db.create()
        sealer = Sealer.from_env(env)
        service = WalletService(
            db, owner=OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF),
            sealer=sealer, deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR,
            webhooks=webhooks.Webhooks(db, sealer=sealer),
        )
        await service.record_deposit(10**9)
        _agent, _key, intent_id = await agent_with_intent(service)
        await service.webhooks.aclose()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wallet", "card", *args], cwd=Path(__file__).parents[2],
                              env=os.environ | env, capture_output=True, text=True, timeout=120)

    made = await asyncio.to_thread(cli, "create", "--amount", "0.0025", "--intent", intent_id, "--mcc", MCC)
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines() if ":" in line and not line.startswith("("))
    number, card_id = fields["number"].strip(), fields["card"].split()[0]
    assert luhn_valid(number) and number.startswith("40000000") and "2500 base units" in made.stdout
    listed = await asyncio.to_thread(cli, "list")
    assert listed.returncode == 0 and card_id in listed.stdout and number not in listed.stdout
    assert number[-4:] in listed.stdout and " 2500 " in listed.stdout
    cancelled = await asyncio.to_thread(cli, "cancel", card_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [card_id, "cancelled"]
    assert (await asyncio.to_thread(cli, "cancel", card_id)).returncode == 1
    assert (await asyncio.to_thread(cli, "create", "--amount", "1.0000001", "--intent", intent_id)).returncode == 1
