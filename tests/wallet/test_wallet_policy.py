"""The co-wallet's policy engine (wallet/policy.py): each rule denies with its name and allows at
its boundary, rules are checked in one order, calendar days and active hours follow the owner's
time zone, and an ``allow`` never exceeds a cap (hypothesis)."""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet import policy
from wallet.policy import (
    RULE_ORDER,
    Decision,
    IntentLimits,
    KillSwitch,
    Rule,
    Rules,
    Spend,
    SpendHistory,
    SpendRequest,
    evaluate,
    history_since,
)

AGENT = "agent-1"
OTHER_AGENT = "agent-2"
PAYEE = "0x" + "ab" * 20
PAYEE_CHECKSUM_CASE = "0x" + "AB" * 20
OTHER = "0x" + "22" * 20
HOST = "api.example.com"
#: Tuesday 2024-03-05 12:00:00 UTC.
T0 = datetime(2024, 3, 5, 12, 0, tzinfo=timezone.utc).timestamp()

Case = dict[str, Any]


def spend(seconds_before: float, amount: int, payee: str = PAYEE, agent: str = AGENT) -> Spend:
    return Spend(agent, T0 - seconds_before, amount, payee, HOST)


def build(case: Case) -> tuple[SpendRequest, SpendHistory, Rules, IntentLimits, KillSwitch]:
    """The five inputs of ``evaluate`` for a case: overrides of a request that passes everything."""
    request = {"agent_id": AGENT, "intent_id": "intent-1", "payee": PAYEE, "host": HOST, "amount": 100, "at": T0}
    intent = {"remaining": 10**9, "per_payment_cap": 10**9, "valid_before": T0 + 3600}
    return (
        SpendRequest(**{**request, **case.get("request", {})}),
        SpendHistory(tuple(case.get("history", ())), frozenset(case.get("paid_by", ()))),
        Rules(**case.get("rules", {})),
        IntentLimits(**{**intent, **case.get("intent", {})}),
        KillSwitch(**case.get("kill", {})),
    )


def decide(case: Case) -> Decision:
    return evaluate(*build(case))


def merge(a: Case, b: Case) -> Case:
    """Both cases at once: dicts of overrides are united, histories concatenated."""
    merged: Case = dict(a)
    for key, value in b.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict):
            assert not merged[key].keys() & value.keys(), (key, merged[key], value)
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = [*merged[key], *value]
    return merged


# --------------------------------------------------------------------------------------------
# Every rule: denies (or sends to review) with its name, allows at its boundary
# --------------------------------------------------------------------------------------------

#: rule -> (a case the rule rejects, the closest case it lets through).
BOUNDARIES: dict[Rule, tuple[Case, Case]] = {
    Rule.KILL_SWITCH_GLOBAL: ({"kill": {"engaged": True}}, {"kill": {"engaged": False, "agents": {OTHER_AGENT}}}),
    Rule.KILL_SWITCH_AGENT: ({"kill": {"agents": {AGENT}}}, {"kill": {"agents": {OTHER_AGENT}}}),
    Rule.INTENT_REVOKED: ({"intent": {"revoked": True}}, {"intent": {"revoked": False}}),
    Rule.INTENT_NOT_YET_VALID: ({"intent": {"valid_after": math.nextafter(T0, math.inf)}}, {"intent": {"valid_after": T0}}),
    # valid_before is exclusive: the last usable instant is the float just below it.
    Rule.INTENT_EXPIRED: ({"intent": {"valid_before": T0}}, {"intent": {"valid_before": math.nextafter(T0, math.inf)}}),
    Rule.INTENT_PAYEE: ({"intent": {"payees": {OTHER}}}, {"intent": {"payees": {OTHER, PAYEE_CHECKSUM_CASE}}}),
    Rule.INTENT_HOST: ({"intent": {"hosts": {"example.org"}}}, {"intent": {"hosts": {"*.example.com"}}}),
    Rule.INTENT_PER_PAYMENT_CAP: ({"intent": {"per_payment_cap": 99}}, {"intent": {"per_payment_cap": 100}}),
    Rule.INTENT_BUDGET: ({"intent": {"remaining": 99}}, {"intent": {"remaining": 100}}),
    Rule.PAYEE_DENYLIST: ({"rules": {"payee_denylist": {PAYEE_CHECKSUM_CASE}}}, {"rules": {"payee_denylist": {OTHER}}}),
    Rule.HOST_DENYLIST: ({"rules": {"host_denylist": {"*.example.com"}}}, {"rules": {"host_denylist": {"example.com"}}}),
    Rule.PAYEE_ALLOWLIST: ({"rules": {"payee_allowlist": {OTHER}}}, {"rules": {"payee_allowlist": {PAYEE_CHECKSUM_CASE}}}),
    Rule.HOST_ALLOWLIST: ({"rules": {"host_allowlist": {"example.com"}}}, {"rules": {"host_allowlist": {HOST}}}),
    Rule.PER_TRANSACTION_CAP: ({"rules": {"per_transaction_cap": 99}}, {"rules": {"per_transaction_cap": 100}}),
    # 400 to the payee today; other payees and yesterday do not count (12:00 UTC - 13 h is yesterday).
    Rule.PER_PAYEE_DAILY_CAP: tuple(  # type: ignore[assignment]
        {
            "rules": {"per_payee_daily_caps": {PAYEE: cap}},
            "history": [spend(3600, 400), spend(60, 1000, payee=OTHER), spend(13 * 3600, 1000)],
        }
        for cap in (499, 500)
    ),
    # 400 one second inside the window; 10^6 exactly 24 h ago, outside (the window is (at-86400, at]).
    Rule.ROLLING_24H_CAP: tuple(  # type: ignore[assignment]
        {"rules": {"rolling_24h_cap": cap}, "history": [spend(86_399, 400), spend(86_400, 10**6)]}
        for cap in (499, 500)
    ),
    # 400 at 00:00:00 today (counts), 1000 at 23:59:59 yesterday (does not).
    Rule.DAILY_CAP: tuple(  # type: ignore[assignment]
        {"rules": {"daily_cap": cap}, "history": [spend(12 * 3600, 400), spend(12 * 3600 + 1, 1000)]}
        for cap in (499, 500)
    ),
    # Two calls in the last 60 s (one exactly 60 s ago does not count): this one is the third.
    Rule.VELOCITY: tuple(  # type: ignore[assignment]
        {"rules": {"max_calls_per_minute": limit}, "history": [spend(59.5, 1), spend(1, 1), spend(60, 1)]}
        for limit in (2, 3)
    ),
    # 12:00 UTC: one minute before the start, then exactly at the (inclusive) start.
    Rule.ACTIVE_HOURS: ({"rules": {"active_hours": ("12:01", "18:00")}}, {"rules": {"active_hours": ("12:00", "18:00")}}),
    # One purpose term in the host (``example``) is enough; none sends the spend to review.
    Rule.OFF_MISSION: (
        {"rules": {"off_mission": "review"}, "intent": {"purpose": "weather forecasts"}},
        {"rules": {"off_mission": "review"}, "intent": {"purpose": "weather examples"}},
    ),
    Rule.REVIEW_ABOVE: ({"rules": {"review_above": 99}}, {"rules": {"review_above": 100}}),
    Rule.REVIEW_NEW_PAYEE: (
        {"rules": {"review_new_payee": True}, "paid_by": {OTHER_AGENT}},
        {"rules": {"review_new_payee": True}, "paid_by": {AGENT}},
    ),
}

REVIEW_RULES = {Rule.OFF_MISSION, Rule.REVIEW_ABOVE, Rule.REVIEW_NEW_PAYEE}


def expected_outcome(rule: Rule) -> str:
    return "review" if rule in REVIEW_RULES else "deny"


def test_every_rule_has_a_boundary_case() -> None:
    assert set(BOUNDARIES) == set(Rule) - {Rule.DEFAULT}


@pytest.mark.parametrize("rule", list(BOUNDARIES), ids=str)
def test_rule_rejects_with_its_name(rule: Rule) -> None:
    decision = decide(BOUNDARIES[rule][0])

    assert (decision.outcome, decision.rule) == (expected_outcome(rule), rule)
    assert decision.rule == rule.value  # a plain string for the API and the stored decision


@pytest.mark.parametrize("rule", list(BOUNDARIES), ids=str)
def test_rule_allows_at_its_boundary(rule: Rule) -> None:
    decision = decide(BOUNDARIES[rule][1])

    assert (decision.outcome, decision.rule, decision.reason) == ("allow", Rule.DEFAULT, "no rule objected")


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (Rule.PER_TRANSACTION_CAP, "amount 100 > per_transaction_cap 99"),
        (Rule.ROLLING_24H_CAP, "spent 400 + amount 100 = 500 > rolling_24h_cap 499"),
        (Rule.DAILY_CAP, "spent 400 + amount 100 = 500 > daily_cap 499 on 2024-03-05 (UTC)"),
        (Rule.PER_PAYEE_DAILY_CAP, f"spent 400 + amount 100 = 500 > per_payee_daily_cap of {PAYEE} 499 on 2024-03-05"),
        (Rule.VELOCITY, "2 calls in the last 60 s + this one > max_calls_per_minute 2"),
        (Rule.INTENT_BUDGET, "amount 100 > intent remaining budget 99"),
        (Rule.INTENT_PER_PAYMENT_CAP, "amount 100 > intent per_payment_cap 99"),
        (Rule.ACTIVE_HOURS, "local time 12:00:00 (UTC) is outside active_hours 12:01-18:00"),
        (Rule.REVIEW_ABOVE, "amount 100 > review_above 99"),
    ],
    ids=str,
)
def test_reason_names_the_numbers(rule: Rule, reason: str) -> None:
    assert decide(BOUNDARIES[rule][0]).reason == reason


def test_rule_names_are_stable() -> None:
    assert [str(rule) for rule in RULE_ORDER] == [
        "kill_switch_global",
        "kill_switch_agent",
        "intent_revoked",
        "intent_not_yet_valid",
        "intent_expired",
        "intent_payee",
        "intent_host",
        "intent_per_payment_cap",
        "intent_budget",
        "payee_denylist",
        "host_denylist",
        "payee_allowlist",
        "host_allowlist",
        "per_transaction_cap",
        "per_payee_daily_cap",
        "rolling_24h_cap",
        "daily_cap",
        "max_calls_per_minute",
        "active_hours",
        "off_mission",
        "review_above",
        "review_new_payee",
        "default",
    ]


def test_exported_members() -> None:
    assert sorted(policy.__all__) == sorted(
        [
            "Decision", "IntentLimits", "KillSwitch", "MissionCheck", "Outcome", "RULE_ORDER", "Rule", "Rules", "Spend",
            "SpendHistory", "SpendRequest", "Usage", "evaluate", "history_since", "measure", "mission_check",
            "AutoApprove", "host_matches",
        ]
    )


# --------------------------------------------------------------------------------------------
# Order: the first rule in RULE_ORDER decides; deny beats review
# --------------------------------------------------------------------------------------------

PAIRS = [
    (first, second)
    for first, second in itertools.combinations([r for r in RULE_ORDER if r in BOUNDARIES], 2)
]


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=lambda rule: str(rule))
def test_request_breaking_two_rules_reports_the_earlier(first: Rule, second: Rule) -> None:
    decision = decide(merge(BOUNDARIES[second][0], BOUNDARIES[first][0]))

    assert (decision.outcome, decision.rule) == (expected_outcome(first), first)


def test_deny_beats_review_whatever_the_order_of_the_rules() -> None:
    case = merge(BOUNDARIES[Rule.REVIEW_ABOVE][0], BOUNDARIES[Rule.ACTIVE_HOURS][0])

    assert (decide(case).outcome, decide(case).rule) == ("deny", Rule.ACTIVE_HOURS)


# --------------------------------------------------------------------------------------------
# On mission: the owner picks deny or review; the heuristic at its edges
# --------------------------------------------------------------------------------------------

OFF = {"rules": {"off_mission": "deny"}, "intent": {"purpose": "weather forecasts for trips"}}


def test_off_mission_denies_when_the_owner_chose_deny_and_deny_still_beats_review() -> None:
    assert (decide(OFF).outcome, decide(OFF).rule) == ("deny", Rule.OFF_MISSION)
    assert decide(OFF).reason == "the spend (api.example.com) shares no term with the intent's purpose"
    assert decide(merge(OFF, {"rules": {"review_above": 1}})).outcome == "deny"


def test_off_mission_is_not_checked_unless_the_owner_asks() -> None:
    assert decide({"intent": {"purpose": "weather forecasts for trips"}}).outcome == "allow"


def test_the_url_path_counts_and_its_query_does_not() -> None:
    on = merge(OFF, {"request": {"path": "/v1/forecast/paris"}})
    query_only = merge(OFF, {"request": {"path": "/v1/x?topic=forecast"}})

    assert decide(on).outcome == "allow"
    assert decide(query_only).rule == Rule.OFF_MISSION


def test_a_reviewer_allow_turns_off_the_review_rules_but_keeps_an_off_mission_deny() -> None:
    rules = Rules(review_above=1, review_new_payee=True, off_mission="review")

    assert rules.without_review() == Rules()
    assert Rules(off_mission="deny", review_above=1).without_review() == Rules(off_mission="deny")


@pytest.mark.parametrize(
    ("purpose", "host", "path", "on_mission", "matched"),
    [
        ("weather forecasts", "api.openweathermap.org", None, True, ("weather",)),  # 7 letters inside a host label
        ("maps", "api.openweathermap.org", None, False, ()),  # 3 letters never match inside a word
        ("for the 42", "api.example.com", "/v1", True, ()),  # no purpose term: nothing to be off from
        ("Sentiment analysis", None, "/v1/sentiment", True, ("sentiment",)),
        ("news", "api.example.com", "/v1/new", True, ("new",)),  # plural s dropped on both sides
        ("news", "api.example.com", "/v1/nest", False, ()),
    ],
)
def test_mission_check_at_its_edges(purpose: str, host: str | None, path: str | None, on_mission: bool,
                                    matched: tuple[str, ...]) -> None:
    check = policy.mission_check(purpose, host, path)

    assert (check.on_mission, check.matched) == (on_mission, matched)


def test_off_mission_must_be_deny_review_or_none() -> None:
    with pytest.raises(ValueError, match="off_mission"):
        Rules(off_mission="allow")  # type: ignore[arg-type]


def test_kill_switch_for_one_agent_leaves_the_others_spending() -> None:
    kill = {"kill": {"agents": {AGENT}}}

    assert decide(kill).rule == Rule.KILL_SWITCH_AGENT
    assert decide({**kill, "request": {"agent_id": OTHER_AGENT}}).outcome == "allow"


def test_global_kill_switch_reports_global_even_with_the_agent_engaged() -> None:
    decision = decide({"kill": {"engaged": True, "agents": {AGENT}}})

    assert decision.rule == Rule.KILL_SWITCH_GLOBAL


# --------------------------------------------------------------------------------------------
# Time: calendar days in the owner's zone, active hours that wrap midnight
# --------------------------------------------------------------------------------------------

NEW_YORK = "America/New_York"


def local(zone: str, *fields: int, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=ZoneInfo(zone), fold=fold).timestamp()  # type: ignore[misc]


def at_local(case: Case, at: float) -> Case:
    return {**case, "request": {**case.get("request", {}), "at": at}, "intent": {"valid_before": at + 3600}}


@pytest.mark.parametrize(
    ("earlier", "later", "same_day"),
    [
        # Midnight in New York is 05:00 UTC: 23:30 and 00:30 local are the same UTC day, not the same day here.
        ((2024, 3, 4, 23, 30), (2024, 3, 5, 0, 30), False),
        ((2024, 3, 5, 0, 0), (2024, 3, 5, 23, 59), True),
        # 2024-03-10 is 23 hours long (02:00 EST -> 03:00 EDT).
        ((2024, 3, 9, 23, 50), (2024, 3, 10, 0, 10), False),
        ((2024, 3, 10, 0, 10), (2024, 3, 10, 23, 50), True),
        # 2024-11-03 is 25 hours long (02:00 EDT -> 01:00 EST): 24 h 50 min apart, same day.
        ((2024, 11, 3, 0, 5), (2024, 11, 3, 23, 55), True),
        ((2024, 11, 2, 23, 55), (2024, 11, 3, 0, 5), False),
    ],
)
def test_daily_cap_follows_the_owner_calendar_day(
    earlier: tuple[int, ...], later: tuple[int, ...], same_day: bool
) -> None:
    spent_at, at = local(NEW_YORK, *earlier), local(NEW_YORK, *later)
    case = at_local(
        {"rules": {"daily_cap": 150, "timezone": NEW_YORK}, "history": [Spend(AGENT, spent_at, 100, PAYEE)]}, at
    )

    decision = decide(case)

    assert (decision.outcome, decision.rule) == (("deny", Rule.DAILY_CAP) if same_day else ("allow", Rule.DEFAULT))


def test_on_the_25_hour_day_the_daily_cap_counts_what_the_rolling_cap_has_dropped() -> None:
    spent_at, at = local(NEW_YORK, 2024, 11, 3, 0, 5), local(NEW_YORK, 2024, 11, 3, 23, 55)
    assert at - spent_at == 24 * 3600 + 50 * 60
    history = [Spend(AGENT, spent_at, 100, PAYEE)]

    rolling = decide(at_local({"rules": {"rolling_24h_cap": 150, "timezone": NEW_YORK}, "history": history}, at))
    daily = decide(at_local({"rules": {"daily_cap": 150, "timezone": NEW_YORK}, "history": history}, at))

    assert rolling.outcome == "allow"
    assert daily.rule == Rule.DAILY_CAP


def test_per_payee_daily_cap_is_per_calendar_day_in_the_owner_zone() -> None:
    yesterday_local = local(NEW_YORK, 2024, 3, 4, 23, 30)  # 04:30 UTC on 2024-03-05
    at = local(NEW_YORK, 2024, 3, 5, 0, 30)
    case = {
        "rules": {"per_payee_daily_caps": {PAYEE: 150}, "timezone": NEW_YORK},
        "history": [Spend(AGENT, yesterday_local, 100, PAYEE)],
    }

    assert decide(at_local(case, at)).outcome == "allow"
    assert decide(at_local({**case, "rules": {**case["rules"], "timezone": "UTC"}}, at)).rule == Rule.PER_PAYEE_DAILY_CAP


@pytest.mark.parametrize(
    ("hour", "minute", "second", "inside"),
    [
        (21, 59, 59, False),
        (22, 0, 0, True),  # start inclusive
        (23, 59, 59, True),
        (0, 0, 0, True),
        (5, 59, 59, True),
        (6, 0, 0, False),  # end exclusive
        (12, 0, 0, False),
    ],
)
def test_active_hours_wrap_midnight(hour: int, minute: int, second: int, inside: bool) -> None:
    at = local(NEW_YORK, 2024, 3, 5, hour, minute, second)
    case = at_local({"rules": {"active_hours": ("22:00", "06:00"), "timezone": NEW_YORK}}, at)

    decision = decide(case)

    assert (decision.outcome, decision.rule) == (("allow", Rule.DEFAULT) if inside else ("deny", Rule.ACTIVE_HOURS))


@pytest.mark.parametrize(("seconds_after", "inside"), [(-0.001, True), (0.0, False)])
def test_active_hours_end_is_exclusive_to_the_fraction_of_a_second(seconds_after: float, inside: bool) -> None:
    at = T0 + 6 * 3600 + seconds_after  # 18:00 UTC
    decision = decide(at_local({"rules": {"active_hours": ("09:00", "18:00")}}, at))

    assert decision.outcome == ("allow" if inside else "deny")


def test_history_since_covers_the_rolling_window_and_the_whole_local_day() -> None:
    at = local(NEW_YORK, 2024, 11, 3, 23, 55)
    rules = Rules(timezone=NEW_YORK)

    since = history_since(at, rules)

    assert since <= at - 86_400
    assert since < local(NEW_YORK, 2024, 11, 3, 0, 0)


# --------------------------------------------------------------------------------------------
# Hosts, addresses, scope
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "API.Example.COM.", True),
        ("*.example.com", "example.com", False),  # like a TLS wildcard: subdomains only
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "example.com.evil.io", False),
        ("example.com", "example.com", True),
        ("example.com", "api.example.com", False),
        ("EXAMPLE.com.", "example.com", True),
    ],
)
def test_host_lists_match_exactly_or_by_suffix(pattern: str, host: str, matches: bool) -> None:
    denied = decide({"rules": {"host_denylist": {pattern}}, "request": {"host": host}})
    allowed = decide({"rules": {"host_allowlist": {pattern}}, "request": {"host": host}})

    assert denied.rule == (Rule.HOST_DENYLIST if matches else Rule.DEFAULT)
    assert allowed.rule == (Rule.DEFAULT if matches else Rule.HOST_ALLOWLIST)


def test_a_request_without_host_fails_a_host_allowlist_and_passes_a_host_denylist() -> None:
    no_host = {"request": {"host": None}}

    assert decide({**no_host, "rules": {"host_allowlist": {"*.example.com"}}}).rule == Rule.HOST_ALLOWLIST
    assert decide({**no_host, "rules": {"host_denylist": {"*.example.com"}}}).rule == Rule.DEFAULT
    assert decide({**no_host, "intent": {"hosts": {"*.example.com"}}}).rule == Rule.INTENT_HOST


def test_host_rules_do_not_apply_to_a_card_but_the_payee_rules_do() -> None:
    card = {"request": {"host": None, "card": True}}

    assert decide({**card, "rules": {"host_allowlist": {"*.example.com"}}}).rule == Rule.DEFAULT
    assert decide({**card, "intent": {"hosts": {"*.example.com"}}}).rule == Rule.DEFAULT
    assert decide({**card, "rules": {"payee_allowlist": set()}}).rule == Rule.PAYEE_ALLOWLIST
    assert decide({**card, "kill": {"engaged": True}}).rule == Rule.KILL_SWITCH_GLOBAL


def test_an_empty_allowlist_allows_nothing() -> None:
    assert decide({"rules": {"payee_allowlist": set()}}).rule == Rule.PAYEE_ALLOWLIST
    assert decide({"rules": {"host_allowlist": set()}}).rule == Rule.HOST_ALLOWLIST


def test_addresses_compare_case_insensitively_everywhere() -> None:
    case = {
        "request": {"payee": PAYEE_CHECKSUM_CASE},
        "rules": {"per_payee_daily_caps": {PAYEE: 450}},
        "history": [Spend(AGENT, T0 - 10, 400, PAYEE_CHECKSUM_CASE)],
    }

    assert decide(case).rule == Rule.PER_PAYEE_DAILY_CAP


@pytest.mark.parametrize(("scope", "rule"), [("agent", Rule.DEFAULT), ("owner", Rule.DAILY_CAP)])
def test_scope_decides_whose_spends_count(scope: str, rule: Rule) -> None:
    case = {"rules": {"daily_cap": 450, "scope": scope}, "history": [spend(10, 400, agent=OTHER_AGENT)]}

    assert decide(case).rule == rule


@pytest.mark.parametrize(("scope", "outcome"), [("agent", "review"), ("owner", "allow")])
def test_a_new_payee_is_new_to_the_scope(scope: str, outcome: str) -> None:
    case = {"rules": {"review_new_payee": True, "scope": scope}, "paid_by": {OTHER_AGENT}}

    assert decide(case).outcome == outcome


def test_a_payee_in_the_recent_history_is_not_new() -> None:
    case = {"rules": {"review_new_payee": True}, "history": [spend(10, 1)]}

    assert decide(case).outcome == "allow"


def test_a_daily_cap_of_100_calls_allows_exactly_100_of_300_requests_from_3_agents() -> None:
    rules = Rules(daily_cap=100 * 7, scope="owner")
    intent = IntentLimits(remaining=10**9, per_payment_cap=10**9, valid_before=T0 + 3600)
    history: list[Spend] = []
    agents = [f"agent-{i % 3}" for i in range(300)]
    random.Random(10).shuffle(agents)

    for i, agent in enumerate(agents):
        request = SpendRequest(agent, "intent-1", PAYEE, HOST, 7, T0 + i)
        if evaluate(request, SpendHistory(tuple(history)), rules, intent, KillSwitch()).outcome == "allow":
            history.append(Spend(agent, request.at, request.amount, PAYEE))

    assert len(history) == 100


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"per_transaction_cap": -1}, "per_transaction_cap"),
        ({"per_transaction_cap": 1.5}, "per_transaction_cap"),
        ({"per_transaction_cap": True}, "per_transaction_cap"),
        ({"rolling_24h_cap": -1}, "rolling_24h_cap"),
        ({"daily_cap": -1}, "daily_cap"),
        ({"max_calls_per_minute": -1}, "max_calls_per_minute"),
        ({"review_above": -1}, "review_above"),
        ({"per_payee_daily_caps": {PAYEE: -1}}, "per_payee_daily_caps"),
        ({"per_payee_daily_caps": {"0x1234": 1}}, "per_payee_daily_caps"),
        ({"per_payee_daily_caps": {PAYEE: 1, PAYEE_CHECKSUM_CASE: 2}}, "per_payee_daily_caps"),
        ({"payee_allowlist": {"alice"}}, "payee_allowlist"),
        ({"payee_denylist": PAYEE}, "payee_denylist"),  # a bare string, not a collection
        ({"host_allowlist": {"exa mple.com"}}, "host_allowlist"),
        ({"host_denylist": {"*.*.example.com"}}, "host_denylist"),
        ({"host_denylist": {"api.*.com"}}, "host_denylist"),
        ({"active_hours": ("9:00", "17:00")}, "active_hours"),
        ({"active_hours": ("24:00", "06:00")}, "active_hours"),
        ({"active_hours": ("09:60", "17:00")}, "active_hours"),
        ({"active_hours": ("09:00", "09:00")}, "active_hours"),
        ({"active_hours": ("09:00",)}, "active_hours"),
        ({"active_hours": "09:00-17:00"}, "active_hours"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"scope": "team"}, "scope"),
        ({"review_new_payee": "yes"}, "review_new_payee"),
        ({"auto_approve": {"max_budget": -1, "max_duration_seconds": 60}}, "auto_approve.max_budget"),
        ({"auto_approve": {"max_budget": 1}}, "auto_approve"),
        ({"auto_approve": {"max_budget": 1, "max_duration_seconds": 60, "hosts": ["http://x"]}}, "auto_approve.hosts"),
        ({"auto_approve": {"max_budget": 1, "max_duration_seconds": 60, "payees": "0xab"}}, "auto_approve.payees"),
        ({"auto_approve": 5}, "auto_approve"),
    ],
)
def test_rules_validation_names_the_field(rules: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        Rules(**rules)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": 1.0}, "amount"),
        ({"payee": "0xnope"}, "payee"),
        ({"host": "http://api.example.com"}, "host"),
        ({"host": "*.example.com"}, "host"),
        ({"at": math.nan}, "at"),
    ],
)
def test_request_validation_names_the_field(overrides: dict[str, Any], field: str) -> None:
    request = {"agent_id": AGENT, "intent_id": "i", "payee": PAYEE, "host": HOST, "amount": 1, "at": T0}
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        SpendRequest(**{**request, **overrides})


def test_rules_normalize_what_they_compare() -> None:
    rules = Rules(payee_allowlist=[PAYEE_CHECKSUM_CASE], host_denylist=["*.Example.COM."],
                  per_payee_daily_caps={PAYEE_CHECKSUM_CASE: 5}, active_hours=["22:00", "06:00"])

    assert rules.payee_allowlist == frozenset({PAYEE})
    assert rules.host_denylist == frozenset({"*.example.com"})
    assert dict(rules.per_payee_daily_caps) == {PAYEE: 5}
    assert rules.active_hours == ("22:00", "06:00")


# --------------------------------------------------------------------------------------------
# The decision and its inputs
# --------------------------------------------------------------------------------------------


def test_decision_serializes_with_the_numbers_it_was_made_on() -> None:
    decision = decide(BOUNDARIES[Rule.DAILY_CAP][0])

    stored = json.loads(json.dumps(decision.to_json()))

    assert stored["outcome"] == "deny"
    assert stored["rule"] == "daily_cap"
    assert stored["inputs"]["request"]["amount"] == 100
    assert stored["inputs"]["usage"]["day"] == 400
    assert stored["inputs"]["usage"]["local_date"] == "2024-03-05"
    assert stored["inputs"]["rules"]["daily_cap"] == 499
    assert stored["inputs"]["kill_switch"] == {"engaged": False, "agents": []}


# --------------------------------------------------------------------------------------------
# Properties: determinism, and an allow never exceeds a cap
# --------------------------------------------------------------------------------------------

ZONES = ["UTC", NEW_YORK, "Europe/Paris", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
PAYEES = [PAYEE, OTHER, "0x" + "33" * 20]
AGENTS = [AGENT, OTHER_AGENT]
#: New York's 25-hour day (2024-11-03) and Europe's last October Sunday are within two days.
BASE = datetime(2024, 11, 3, 6, 0, tzinfo=timezone.utc).timestamp()

def rarely(value: Any, otherwise: Any) -> st.SearchStrategy[Any]:
    """``value`` one time in ten, else ``otherwise``: early rules must not hide the later ones."""
    return st.sampled_from([False] * 9 + [True]).map(lambda hit: value if hit else otherwise)


def day_bounds(at: float, zone: str) -> tuple[float, float]:
    """The local day of ``at`` as ``[start, end)`` in unix seconds: by midnights, unlike the engine."""
    tz = ZoneInfo(zone)
    today: date = datetime.fromtimestamp(at, tz).date()
    start = datetime.combine(today, time(0), tz).timestamp()
    end = datetime.combine(today + timedelta(days=1), time(0), tz).timestamp()
    return start, end


def spent(request: SpendRequest, spends: tuple[Spend, ...], zone: str, scope: str) -> dict[Rule, int]:
    """What each cap or count rule has used before the request, computed from scratch."""
    at = request.at
    mine = [s for s in spends if scope == "owner" or s.agent_id == request.agent_id]
    start, end = day_bounds(at, zone)
    today = [s for s in mine if start <= s.at < end]
    return {
        Rule.PER_PAYEE_DAILY_CAP: sum(s.amount for s in today if s.payee == request.payee),
        Rule.ROLLING_24H_CAP: sum(s.amount for s in mine if at - 86_400 < s.at <= at),
        Rule.DAILY_CAP: sum(s.amount for s in today),
        Rule.VELOCITY: sum(1 for s in mine if at - 60 < s.at <= at),
    }


def cap(used: int) -> st.SearchStrategy[int | None]:
    """Off, anywhere, or within two of the boundary ``used`` (where off-by-ones show)."""
    return st.none() | st.integers(0, 3_000) | st.integers(-2, 2).map(lambda d: max(0, used + d))


@st.composite
def scenarios(
    draw: st.DrawFn, only_caps: bool = False
) -> tuple[SpendRequest, SpendHistory, Rules, IntentLimits, KillSwitch]:
    """Random inputs; ``only_caps`` turns off every rule that is not an amount or count cap."""
    zone = draw(st.sampled_from(ZONES))
    scope = draw(st.sampled_from(["agent", "owner"]))
    at = BASE + draw(st.integers(-2 * 86_400, 2 * 86_400)) + draw(st.sampled_from([0.0, 0.25, 0.999]))
    # Spends cluster around the window edges: local midnight, 24 h and 60 s ago.
    since_midnight = at - day_bounds(at, zone)[0]
    edges = st.sampled_from([since_midnight, 60, 86_400]).flatmap(
        lambda edge: st.integers(-3, 3).map(lambda d: edge + d)
    )
    ago = st.integers(0, 2 * 86_400) | edges | st.floats(since_midnight - 7200, since_midnight + 7200)
    request = SpendRequest(
        draw(st.sampled_from(AGENTS)), "intent-1", draw(st.sampled_from(PAYEES)),
        draw(st.sampled_from([HOST, HOST, "x.example.org", None])), draw(st.integers(1, 1_000)), at,
    )
    spends = tuple(
        Spend(agent, at - seconds, amount, payee, HOST)
        for agent, seconds, amount, payee in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(AGENTS),
                    ago.filter(lambda seconds: seconds >= 0),
                    st.integers(0, 500),
                    st.sampled_from(PAYEES),
                ),
                max_size=30,
            )
        )
    )
    history = SpendHistory(spends, frozenset(draw(st.sets(st.sampled_from(AGENTS)))))
    used = spent(request, spends, zone, scope)
    payee_cap = draw(cap(used[Rule.PER_PAYEE_DAILY_CAP] + request.amount))
    hours = None if only_caps else draw(st.none() | st.tuples(st.integers(0, 1439), st.integers(0, 1439)).filter(lambda h: h[0] != h[1]))
    rules = Rules(
        per_transaction_cap=draw(cap(request.amount)),
        rolling_24h_cap=draw(cap(used[Rule.ROLLING_24H_CAP] + request.amount)),
        daily_cap=draw(cap(used[Rule.DAILY_CAP] + request.amount)),
        per_payee_daily_caps={} if payee_cap is None else {draw(st.sampled_from(PAYEES)): payee_cap},
        payee_denylist=None if only_caps else draw(rarely(frozenset({request.payee}), None)),
        host_allowlist=None if only_caps else draw(
            st.sampled_from([None, frozenset({"*.example.com", "x.example.org"}), frozenset({"x.example.org"})])
        ),
        max_calls_per_minute=draw(st.none() | st.integers(0, 8)),
        active_hours=None if hours is None else tuple(f"{m // 60:02d}:{m % 60:02d}" for m in hours),
        timezone=zone,
        review_above=None if only_caps else draw(st.none() | st.integers(0, 1_000)),
        review_new_payee=False if only_caps else draw(st.booleans()),
        scope=scope,
    )
    intent = IntentLimits(
        remaining=draw(st.just(10**9) | cap(request.amount).map(lambda c: 10**9 if c is None else c)),
        per_payment_cap=draw(st.just(10**9) | cap(request.amount).map(lambda c: 10**9 if c is None else c)),
        valid_before=at + (3600 if only_caps else draw(rarely(0, 3600))),
        revoked=False if only_caps else draw(rarely(True, False)),
    )
    if only_caps:
        return request, history, rules, intent, KillSwitch()
    kill = KillSwitch(draw(rarely(True, False)), draw(rarely(frozenset({request.agent_id}), frozenset())))
    return request, history, rules, intent, kill


CAP_RULES = {
    Rule.INTENT_PER_PAYMENT_CAP, Rule.INTENT_BUDGET, Rule.PER_TRANSACTION_CAP,
    Rule.PER_PAYEE_DAILY_CAP, Rule.ROLLING_24H_CAP, Rule.DAILY_CAP, Rule.VELOCITY,
}


def exceeded(request: SpendRequest, history: SpendHistory, rules: Rules, intent: IntentLimits) -> set[Rule]:
    """Every amount or count rule that the request would break."""
    amount = request.amount
    used = spent(request, history.spends, rules.timezone, rules.scope)
    limits = {
        Rule.INTENT_PER_PAYMENT_CAP: (0, intent.per_payment_cap),
        Rule.INTENT_BUDGET: (0, intent.remaining),
        Rule.PER_TRANSACTION_CAP: (0, rules.per_transaction_cap),
        Rule.PER_PAYEE_DAILY_CAP: (used[Rule.PER_PAYEE_DAILY_CAP], rules.per_payee_daily_caps.get(request.payee)),
        Rule.ROLLING_24H_CAP: (used[Rule.ROLLING_24H_CAP], rules.rolling_24h_cap),
        Rule.DAILY_CAP: (used[Rule.DAILY_CAP], rules.daily_cap),
    }
    broken = {rule for rule, (before, limit) in limits.items() if limit is not None and before + amount > limit}
    if rules.max_calls_per_minute is not None and used[Rule.VELOCITY] + 1 > rules.max_calls_per_minute:
        broken.add(Rule.VELOCITY)
    return broken


@given(scenarios())
def test_the_same_inputs_give_the_same_decision(scenario: tuple[Any, ...]) -> None:
    request, history, rules, intent, kill = scenario
    shuffled = SpendHistory(tuple(reversed(history.spends)), history.payee_paid_by)

    first = evaluate(request, history, rules, intent, kill)

    assert evaluate(request, history, rules, intent, kill) == first
    assert evaluate(request, shuffled, rules, intent, kill) == first
    assert json.dumps(first.to_json(), sort_keys=True) == json.dumps(
        evaluate(*scenario).to_json(), sort_keys=True
    )


@given(scenarios())
def test_an_allow_never_exceeds_a_cap_and_a_cap_denies_only_when_exceeded(scenario: tuple[Any, ...]) -> None:
    request, history, rules, intent, kill = scenario
    broken = exceeded(request, history, rules, intent)

    decision = evaluate(request, history, rules, intent, kill)

    if decision.outcome != "deny":  # allow, or review: a reviewer's allow signs as it stands
        assert not broken, decision
    if decision.rule in CAP_RULES:
        assert decision.rule in broken, decision


@given(scenarios(only_caps=True))
def test_with_only_caps_on_the_first_exceeded_cap_decides(scenario: tuple[Any, ...]) -> None:
    request, history, rules, intent, kill = scenario
    broken = exceeded(request, history, rules, intent)

    decision = evaluate(request, history, rules, intent, kill)

    assert decision.rule == min(broken, key=RULE_ORDER.index, default=Rule.DEFAULT)
