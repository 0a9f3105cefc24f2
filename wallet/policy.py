"""The co-wallet's policy engine: may this agent spend this amount, to this payee, now?

Every spend an agent asks the co-wallet for is evaluated here before any mandate is signed.
The engine is pure: no I/O and no clock (time is the request's ``at``), and the same inputs
always give the same :class:`Decision`. The service reads the history, the owner's rules, the
intent's limits and the kill switch inside one serialized transaction, calls :func:`evaluate`,
stores the decision with :meth:`Decision.to_json`, and signs only on ``allow``.

Units: amounts are integers in the token's base units; times are unix seconds (floats).
Addresses are compared case-insensitively; hosts are compared lower-case.

Rules are checked in the order of :data:`RULE_ORDER` and the first one that fails decides, so
a request that breaks two rules reports the earlier one. All deny rules come before the review
rules: ``deny`` always wins over ``review``. A request no rule objects to is allowed by
:attr:`Rule.DEFAULT`.

Windows (all end at the request's ``at``):

- rolling 24 h: spends with ``at - 86400 < spend.at <= at``;
- calendar day: spends whose local date in ``Rules.timezone`` is the local date of ``at``
  (a day is 23 or 25 hours long across a DST change);
- velocity: spends with ``at - 60 < spend.at <= at``.

Caps are inclusive: ``spent + amount == cap`` is allowed, one base unit more is denied.

On mission. :func:`mission_check` compares a spend (its host and URL path) with the purpose
the owner approved with the intent: a keyword overlap heuristic, cheap and explainable, not a
classifier. ``Rules.off_mission`` chooses what an off-mission spend gets: ``deny`` or
``review`` (the AI review council, ``wallet.council``, sees the same check).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "AutoApprove",
    "Decision",
    "IntentLimits",
    "KillSwitch",
    "MissionCheck",
    "Outcome",
    "RULE_ORDER",
    "Rule",
    "Rules",
    "Spend",
    "SpendHistory",
    "SpendRequest",
    "Usage",
    "evaluate",
    "history_since",
    "host_matches",
    "measure",
    "mission_check",
]

Outcome = Literal["allow", "deny", "review"]

#: Seconds in the rolling window of ``rolling_24h_cap``.
ROLLING_WINDOW = 86_400
#: Seconds in the velocity window of ``max_calls_per_minute``.
VELOCITY_WINDOW = 60

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HOST = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class Rule(StrEnum):
    """The stable name of every rule, as stored with each decision and returned by the API.

    The values are API: tests, the service and stored decisions use them. Add, never rename.
    """

    #: The owner engaged the global kill switch: nothing is signed for any agent.
    KILL_SWITCH_GLOBAL = "kill_switch_global"
    #: The owner engaged the kill switch for this agent.
    KILL_SWITCH_AGENT = "kill_switch_agent"
    #: The intent was revoked.
    INTENT_REVOKED = "intent_revoked"
    #: ``at`` is before the intent's ``valid_after``.
    INTENT_NOT_YET_VALID = "intent_not_yet_valid"
    #: ``at`` is at or after the intent's ``valid_before``.
    INTENT_EXPIRED = "intent_expired"
    #: The intent names its payees and this payee is not one of them.
    INTENT_PAYEE = "intent_payee"
    #: The intent names its hosts and this request's host is not one of them.
    INTENT_HOST = "intent_host"
    #: The amount is above the intent's per-payment cap.
    INTENT_PER_PAYMENT_CAP = "intent_per_payment_cap"
    #: The amount is above what remains of the intent's budget.
    INTENT_BUDGET = "intent_budget"
    #: The payee is on the owner's payee denylist.
    PAYEE_DENYLIST = "payee_denylist"
    #: The host matches the owner's host denylist.
    HOST_DENYLIST = "host_denylist"
    #: The owner keeps a payee allowlist and this payee is not on it.
    PAYEE_ALLOWLIST = "payee_allowlist"
    #: The owner keeps a host allowlist and this host (or a missing host) does not match it.
    HOST_ALLOWLIST = "host_allowlist"
    #: The amount is above the owner's per-transaction cap.
    PER_TRANSACTION_CAP = "per_transaction_cap"
    #: Today's spends to this payee plus the amount are above the payee's daily cap.
    PER_PAYEE_DAILY_CAP = "per_payee_daily_cap"
    #: The last 24 hours' spends plus the amount are above the rolling cap.
    ROLLING_24H_CAP = "rolling_24h_cap"
    #: Today's spends (owner's calendar day) plus the amount are above the daily cap.
    DAILY_CAP = "daily_cap"
    #: This request would be one call too many in the last 60 seconds.
    VELOCITY = "max_calls_per_minute"
    #: ``at`` is outside the owner's active hours.
    ACTIVE_HOURS = "active_hours"
    #: The spend shares nothing with the intent's purpose and ``off_mission`` is ``deny`` or
    #: ``review`` (after every other deny rule, before the other review rules).
    OFF_MISSION = "off_mission"
    #: The amount is above ``review_above``: a reviewer decides.
    REVIEW_ABOVE = "review_above"
    #: The payee was never paid before: a reviewer decides.
    REVIEW_NEW_PAYEE = "review_new_payee"
    #: No rule objected.
    DEFAULT = "default"


#: The order in which rules are checked; the first that fails decides.
RULE_ORDER: tuple[Rule, ...] = tuple(Rule)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _address(value: object, name: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValueError(f"{name}: {value!r} is not a 0x-prefixed 20-byte hex address")
    return value.lower()


def _host(value: object, name: str, *, wildcard: bool) -> str:
    host = value.lower().rstrip(".") if isinstance(value, str) else ""
    if not _HOST.match(host) or (host.startswith("*.") and not wildcard):
        raise ValueError(f"{name}: {value!r} is not a host name" + (" or *.suffix" if wildcard else ""))
    return host


def _amount(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not an integer >= {minimum}")
    return value


def _timestamp(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a finite unix time in seconds")
    return float(value)


def _minutes(value: object, name: str) -> int:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name}: {value!r} is not a time of day 'HH:MM' (00:00 to 23:59)")
    return int(match[1]) * 60 + int(match[2])


@dataclass(frozen=True)
class SpendRequest:
    """One spend an agent asks for.

    ``payee`` is the EVM address to be paid; ``host`` the host name of the paid URL (no port),
    or None when the agent sent a bare challenge; ``amount`` in base units (> 0); ``at`` the
    unix time of the request in seconds, read once by the service; ``path`` the paid URL's
    path without its query (which may carry credentials), or None, for the on-mission check.
    ``card``: a single-use AgentCard authorization, which has no URL: the host rules (the
    intent's ``hosts``, the host allow- and denylists) do not apply to it, the card being
    locked to its merchant, whose pseudo-payee the payee rules check. Any other spend without
    a host fails an allowlist of hosts.

    Raises:
        ValueError: naming the field, for a malformed address or host, a non-positive or
            non-integer amount, or a non-finite time.
    """

    agent_id: str
    intent_id: str
    payee: str
    host: str | None
    amount: int
    at: float
    path: str | None = None
    card: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "payee", _address(self.payee, "payee"))
        if self.host is not None:
            object.__setattr__(self, "host", _host(self.host, "host", wildcard=False))
        _amount(self.amount, "amount", minimum=1)
        object.__setattr__(self, "at", _timestamp(self.at, "at"))


@dataclass(frozen=True)
class Spend:
    """One spend the wallet already authorized (signed): the ``agent_id`` that spent, ``at`` in
    unix seconds, ``amount`` in base units, the ``payee`` address and the ``host`` if known.

    ``agent_id`` is required: with ``Rules.scope == "agent"`` a spend counts only for its agent,
    and a missing one would silently count for nobody."""

    agent_id: str
    at: float
    amount: int
    payee: str
    host: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _timestamp(self.at, "at"))
        _amount(self.amount, "amount", minimum=0)
        object.__setattr__(self, "payee", _address(self.payee, "payee"))


@dataclass(frozen=True)
class SpendHistory:
    """What the service read from its store for one evaluation.

    ``spends``: every authorized spend of the owner (all its agents) with ``spend.at >
    history_since(request.at, rules)``. The service reads it with one range query, e.g.
    ``SELECT agent_id, at, amount, payee, host FROM spends WHERE owner = ? AND at > ?``.
    Older rows may be included; they are ignored. With ``Rules.scope == "agent"`` the engine
    counts only the requesting agent's spends, so the service need not filter by agent.

    ``payee_paid_by``: the agents that ever paid ``request.payee`` (at any time, for
    ``review_new_payee``), e.g. ``SELECT DISTINCT agent_id FROM spends WHERE owner = ? AND
    payee = ?``; only read when ``review_new_payee`` is on.

    Which spends count is the service's choice and must be the same for every evaluation:
    a conservative service counts every signed mandate, settled or not, until it is released.
    """

    spends: tuple[Spend, ...] = ()
    payee_paid_by: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "spends", tuple(self.spends))
        object.__setattr__(self, "payee_paid_by", frozenset(self.payee_paid_by))


@dataclass(frozen=True)
class AutoApprove:
    """A standing owner rule: an agent's drafted intent within these bounds is approved at
    once, without waiting for the owner (``WalletService.draft_intent``).

    ``max_budget`` and ``max_per_payment_cap`` in base units, ``max_duration_seconds`` in
    seconds, all inclusive. ``payees`` / ``hosts`` (``None``: any): the intent must name a
    non-empty subset of them (an intent open to every payee or host is never within a list);
    hosts match as ``Rules.host_allowlist`` does, and an intent's ``*.sub.example.com`` is
    within ``*.example.com``.

    Raises ``ValueError`` naming the field for a negative or non-integer bound, a malformed
    address or host.
    """

    max_budget: int
    max_duration_seconds: int
    max_per_payment_cap: int | None = None
    payees: frozenset[str] | None = None
    hosts: frozenset[str] | None = None

    def __post_init__(self) -> None:
        _amount(self.max_budget, "auto_approve.max_budget", minimum=0)
        _amount(self.max_duration_seconds, "auto_approve.max_duration_seconds", minimum=0)
        if self.max_per_payment_cap is not None:
            _amount(self.max_per_payment_cap, "auto_approve.max_per_payment_cap", minimum=0)
        for name, check in (("payees", _address), ("hosts", lambda v, n: _host(v, n, wildcard=True))):
            items = getattr(self, name)
            if items is None:
                continue
            if isinstance(items, str) or not isinstance(items, Iterable):
                raise ValueError(f"auto_approve.{name}: expected a collection of strings, got {items!r}")
            object.__setattr__(self, name, frozenset(check(item, f"auto_approve.{name}") for item in items))

    def refusal(
        self, *, budget: int, duration_seconds: int, per_payment_cap: int, payees: Iterable[str], hosts: Iterable[str]
    ) -> str | None:
        """None when a draft with these terms is within the rule, else the first term outside it."""
        if budget > self.max_budget:
            return f"budget {budget} above {self.max_budget}"
        if duration_seconds > self.max_duration_seconds:
            return f"duration {duration_seconds} s above {self.max_duration_seconds} s"
        if self.max_per_payment_cap is not None and per_payment_cap > self.max_per_payment_cap:
            return f"per-payment cap {per_payment_cap} above {self.max_per_payment_cap}"
        wanted = {p.lower() for p in payees}
        if self.payees is not None and (not wanted or not wanted <= self.payees):
            return "payees: not a non-empty subset of the rule's"
        asked = {h.lower() for h in hosts}
        if self.hosts is not None and (not asked or not all(_host_within(h, self.hosts) for h in asked)):
            return "hosts: not a non-empty subset of the rule's"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_budget": self.max_budget,
            "max_duration_seconds": self.max_duration_seconds,
            "max_per_payment_cap": self.max_per_payment_cap,
            "payees": _sorted(self.payees),
            "hosts": _sorted(self.hosts),
        }


def _host_within(host: str, patterns: frozenset[str]) -> bool:
    if host.startswith("*."):  # a wildcard is within an equal or wider wildcard
        return any(p.startswith("*.") and host[1:].endswith(p[1:]) for p in patterns)
    return _host_matches(host, patterns)


@dataclass(frozen=True)
class Rules:
    """The owner's spending rules for one agent (or for all its agents). ``None`` turns a rule off.

    Caps are in base units and inclusive (``spent + amount <= cap`` is allowed; a cap of 0
    allows nothing):

    - ``per_transaction_cap``: the most one spend may be.
    - ``rolling_24h_cap``: the most spent in any 24 hours ending now.
    - ``daily_cap``: the most spent in one calendar day in ``timezone``.
    - ``per_payee_daily_caps``: payee address -> the most paid to it in one calendar day.
    - ``max_calls_per_minute``: the most spends in any 60 seconds ending now, this one included.

    Lists (``None`` = off; an empty allowlist allows nothing, fail closed):

    - ``payee_allowlist`` / ``payee_denylist``: payee addresses.
    - ``host_allowlist`` / ``host_denylist``: host names; ``example.com`` matches that host
      only, ``*.example.com`` matches any subdomain (``api.example.com``,
      ``a.b.example.com``) but not ``example.com`` itself, as a TLS wildcard does. A request
      without a host never matches: a host allowlist denies it, a host denylist lets it pass.

    Time:

    - ``active_hours``: ``("HH:MM", "HH:MM")`` local times in ``timezone``, start inclusive,
      end exclusive; ``("22:00", "06:00")`` wraps midnight. Start and end must differ
      (``None`` is all day).
    - ``timezone``: an IANA name (``"Europe/Paris"``), for the calendar day and active hours.

    Review (after every deny rule; a reviewer then allows or denies):

    - ``review_above``: spends with ``amount > review_above`` go to review.
    - ``review_new_payee``: spends to a payee never paid before go to review.

    On mission (after every other deny rule, before the review rules above):

    - ``off_mission``: what a spend :func:`mission_check` finds off the intent's purpose gets,
      ``"deny"`` or ``"review"`` (``None``: not checked).

    ``scope``: whose spends count against the caps, velocity and ``review_new_payee``:
    ``"agent"`` (this agent's only) or ``"owner"`` (all the owner's agents together).

    ``auto_approve``: the standing rule approving drafted intents within its bounds
    (``AutoApprove``, or its fields as a mapping); ``None``: every intent waits for the owner.

    Raises:
        ValueError: naming the field, for a negative or non-integer cap, a malformed address,
            host or ``HH:MM``, equal start and end hours, an unknown timezone or scope.
    """

    per_transaction_cap: int | None = None
    rolling_24h_cap: int | None = None
    daily_cap: int | None = None
    per_payee_daily_caps: Mapping[str, int] = field(default_factory=dict)
    payee_allowlist: frozenset[str] | None = None
    payee_denylist: frozenset[str] | None = None
    host_allowlist: frozenset[str] | None = None
    host_denylist: frozenset[str] | None = None
    max_calls_per_minute: int | None = None
    active_hours: tuple[str, str] | None = None
    timezone: str = "UTC"
    review_above: int | None = None
    review_new_payee: bool = False
    scope: Literal["agent", "owner"] = "agent"
    auto_approve: AutoApprove | None = None
    off_mission: Literal["deny", "review"] | None = None

    def __post_init__(self) -> None:
        for name in ("per_transaction_cap", "rolling_24h_cap", "daily_cap",
                     "max_calls_per_minute", "review_above"):
            value = getattr(self, name)
            if value is not None:
                _amount(value, name, minimum=0)
        if not isinstance(self.per_payee_daily_caps, Mapping):
            raise ValueError("per_payee_daily_caps: expected a mapping of address to cap")
        caps = {
            _address(payee, "per_payee_daily_caps"): _amount(cap, f"per_payee_daily_caps[{payee}]", minimum=0)
            for payee, cap in self.per_payee_daily_caps.items()
        }
        if len(caps) != len(self.per_payee_daily_caps):
            raise ValueError("per_payee_daily_caps: the same address appears twice")
        object.__setattr__(self, "per_payee_daily_caps", MappingProxyType(dict(sorted(caps.items()))))
        for name in ("payee_allowlist", "payee_denylist"):
            self._normalize(name, lambda item, n=name: _address(item, n))
        for name in ("host_allowlist", "host_denylist"):
            self._normalize(name, lambda item, n=name: _host(item, n, wildcard=True))
        if self.active_hours is not None:
            hours = tuple(self.active_hours) if not isinstance(self.active_hours, str) else ()
            if len(hours) != 2:
                raise ValueError(f"active_hours: {self.active_hours!r} is not a (start, end) pair")
            if _minutes(hours[0], "active_hours") == _minutes(hours[1], "active_hours"):
                raise ValueError("active_hours: start equals end; use None for all day")
            object.__setattr__(self, "active_hours", hours)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone") from exc
        if not isinstance(self.review_new_payee, bool):
            raise ValueError(f"review_new_payee: {self.review_new_payee!r} is not a bool")
        if self.scope not in ("agent", "owner"):
            raise ValueError(f"scope: {self.scope!r} is neither 'agent' nor 'owner'")
        if isinstance(self.auto_approve, Mapping):
            try:
                object.__setattr__(self, "auto_approve", AutoApprove(**self.auto_approve))
            except TypeError as exc:
                raise ValueError(f"auto_approve: {exc}") from None
        elif self.auto_approve is not None and not isinstance(self.auto_approve, AutoApprove):
            raise ValueError(f"auto_approve: {self.auto_approve!r} is not an AutoApprove")
        if self.off_mission not in (None, "deny", "review"):
            raise ValueError(f"off_mission: {self.off_mission!r} is neither 'deny', 'review' nor None")

    def _normalize(self, name: str, check: Callable[[object], str]) -> None:
        items = getattr(self, name)
        if items is None:
            return
        if isinstance(items, str) or not isinstance(items, Iterable):
            raise ValueError(f"{name}: expected a collection of strings, got {items!r}")
        object.__setattr__(self, name, frozenset(check(item) for item in items))

    @property
    def zone(self) -> ZoneInfo:
        """The ``timezone`` as a ``ZoneInfo`` (cached by ``zoneinfo``)."""
        return ZoneInfo(self.timezone)

    def to_json(self) -> dict[str, Any]:
        """The rules as a JSON-able dict (sets as sorted lists)."""
        return {
            "per_transaction_cap": self.per_transaction_cap,
            "rolling_24h_cap": self.rolling_24h_cap,
            "daily_cap": self.daily_cap,
            "per_payee_daily_caps": dict(self.per_payee_daily_caps),
            "payee_allowlist": _sorted(self.payee_allowlist),
            "payee_denylist": _sorted(self.payee_denylist),
            "host_allowlist": _sorted(self.host_allowlist),
            "host_denylist": _sorted(self.host_denylist),
            "max_calls_per_minute": self.max_calls_per_minute,
            "active_hours": list(self.active_hours) if self.active_hours else None,
            "timezone": self.timezone,
            "review_above": self.review_above,
            "review_new_payee": self.review_new_payee,
            "scope": self.scope,
            "auto_approve": self.auto_approve.to_json() if self.auto_approve else None,
            "off_mission": self.off_mission,
        }

    def without_review(self) -> Rules:
        """These rules with every rule that sends to review turned off (a ``deny`` stays), for
        re-evaluating a spend a reviewer allowed."""
        off_mission = None if self.off_mission == "review" else self.off_mission
        return replace(self, review_above=None, review_new_payee=False, off_mission=off_mission)


@dataclass(frozen=True)
class IntentLimits:
    """The limits of the intent the spend draws on, from the signed intent and the ledger.

    ``remaining``: what is left of the budget (``maxAmount`` minus what the ledger has
    reserved or settled), base units. ``per_payment_cap``: the intent's ``maxPerPayment``.
    ``valid_after`` / ``valid_before``: the intent is usable when ``valid_after <= at <
    valid_before`` (docs/PROTOCOL.md §2). ``payees``: the intent's payee allowlist and
    ``hosts`` the hosts its draft named (empty = any). ``revoked``: revoked by the owner.
    ``purpose``: the purpose the owner approved with the intent (free text, for the on-mission
    check).
    """

    remaining: int
    per_payment_cap: int
    valid_before: float
    valid_after: float = 0.0
    payees: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    revoked: bool = False
    purpose: str = ""

    def __post_init__(self) -> None:
        _amount(self.remaining, "remaining", minimum=0)
        _amount(self.per_payment_cap, "per_payment_cap", minimum=0)
        object.__setattr__(self, "valid_before", _timestamp(self.valid_before, "valid_before"))
        object.__setattr__(self, "valid_after", _timestamp(self.valid_after, "valid_after"))
        object.__setattr__(self, "payees", frozenset(_address(p, "payees") for p in self.payees))
        object.__setattr__(self, "hosts", frozenset(_host(h, "hosts", wildcard=True) for h in self.hosts))

    def to_json(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "per_payment_cap": self.per_payment_cap,
            "valid_after": self.valid_after,
            "valid_before": self.valid_before,
            "payees": sorted(self.payees),
            "hosts": sorted(self.hosts),
            "revoked": self.revoked,
            "purpose": self.purpose,
        }


@dataclass(frozen=True)
class KillSwitch:
    """The kill switch: ``engaged`` stops every agent; ``agents`` lists agents stopped one by one."""

    engaged: bool = False
    agents: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", frozenset(self.agents))

    def to_json(self) -> dict[str, Any]:
        return {"engaged": self.engaged, "agents": sorted(self.agents)}


# --------------------------------------------------------------------------------------------
# What the history adds up to
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """The history summed over the rules' windows and scope, before this request.

    ``rolling_24h``, ``day`` and ``payee_day`` (to ``request.payee``) in base units;
    ``calls_last_minute`` a count; ``local_date`` (``YYYY-MM-DD``) and ``local_time``
    (``HH:MM:SS``, truncated to the second) are ``at`` in the rules' timezone.
    """

    rolling_24h: int
    day: int
    payee_day: int
    calls_last_minute: int
    payee_paid_before: bool
    local_date: str
    local_time: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rolling_24h": self.rolling_24h,
            "day": self.day,
            "payee_day": self.payee_day,
            "calls_last_minute": self.calls_last_minute,
            "payee_paid_before": self.payee_paid_before,
            "local_date": self.local_date,
            "local_time": self.local_time,
        }


def _local(at: float, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(at, zone)


def history_since(at: float, rules: Rules) -> float:
    """The earliest ``spend.at`` (exclusive) the engine may need for a request at ``at``.

    The service reads spends with ``spend.at > history_since(at, rules)``. The bound is the
    start of the rolling window or an hour before the local midnight that starts the calendar
    day of ``at``, whichever is earlier: a spend at midnight exactly belongs to the day, and
    the hour keeps the bound early enough whatever DST does to that midnight.
    """
    local_midnight = datetime.combine(_local(at, rules.zone).date(), time(0), rules.zone)
    # A day that began in a DST gap or fold: step back an hour so the bound is never late.
    return min(at - ROLLING_WINDOW, local_midnight.timestamp() - 3600)


def measure(request: SpendRequest, history: SpendHistory, rules: Rules) -> Usage:
    """Sum ``history`` over the windows of ``request.at`` in the scope of ``rules``."""
    zone = rules.zone
    local = _local(request.at, zone)
    today: date = local.date()
    spends = [s for s in history.spends if rules.scope == "owner" or s.agent_id == request.agent_id]
    # Calendar-day membership by local date: exact across DST, and independent of row order.
    same_day = [s for s in spends if _local(s.at, zone).date() == today]
    if rules.scope == "owner":
        paid_before = bool(history.payee_paid_by)
    else:
        paid_before = request.agent_id in history.payee_paid_by
    paid_before = paid_before or any(s.payee == request.payee and s.at <= request.at for s in spends)
    return Usage(
        rolling_24h=sum(s.amount for s in spends if request.at - ROLLING_WINDOW < s.at <= request.at),
        day=sum(s.amount for s in same_day),
        payee_day=sum(s.amount for s in same_day if s.payee == request.payee),
        calls_last_minute=sum(1 for s in spends if request.at - VELOCITY_WINDOW < s.at <= request.at),
        payee_paid_before=paid_before,
        local_date=today.isoformat(),
        local_time=local.strftime("%H:%M:%S"),
    )


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The engine's answer: ``outcome``, the ``rule`` that decided, and a ``reason`` naming the
    numbers. ``inputs`` is what it was decided on, JSON-able: the request, the rules, the
    intent's limits, the kill switch and the :class:`Usage` summed from the history (enough to
    re-derive the decision without the history rows)."""

    outcome: Outcome
    rule: Rule
    reason: str
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The decision and its inputs as one JSON-able dict, for the service's decision log."""
        return {"outcome": self.outcome, "rule": str(self.rule), "reason": self.reason, "inputs": dict(self.inputs)}


def _sorted(items: frozenset[str] | None) -> list[str] | None:
    return None if items is None else sorted(items)


def _host_matches(host: str, patterns: frozenset[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _check_cap(name: str, spent: int, amount: int, cap: int | None) -> str | None:
    if cap is None or spent + amount <= cap:
        return None
    return f"spent {spent} + amount {amount} = {spent + amount} > {name} {cap}"


def _first_failure(
    request: SpendRequest, usage: Usage, rules: Rules, intent: IntentLimits, kill_switch: KillSwitch
) -> tuple[Outcome, Rule, str]:
    amount, payee, host, at = request.amount, request.payee, request.host, request.at

    # Kill switch.
    if kill_switch.engaged:
        return "deny", Rule.KILL_SWITCH_GLOBAL, "the global kill switch is engaged"
    if request.agent_id in kill_switch.agents:
        return "deny", Rule.KILL_SWITCH_AGENT, f"the kill switch is engaged for agent {request.agent_id}"

    # The intent's own limits.
    if intent.revoked:
        return "deny", Rule.INTENT_REVOKED, f"intent {request.intent_id} is revoked"
    if at < intent.valid_after:
        return "deny", Rule.INTENT_NOT_YET_VALID, f"at {at} < valid_after {intent.valid_after}"
    if at >= intent.valid_before:
        return "deny", Rule.INTENT_EXPIRED, f"at {at} >= valid_before {intent.valid_before}"
    if intent.payees and payee not in intent.payees:
        return "deny", Rule.INTENT_PAYEE, f"payee {payee} is not among the intent's {len(intent.payees)} payees"
    if intent.hosts and not request.card and (host is None or not _host_matches(host, intent.hosts)):
        return "deny", Rule.INTENT_HOST, f"host {host} matches none of the intent's hosts"
    if amount > intent.per_payment_cap:
        return "deny", Rule.INTENT_PER_PAYMENT_CAP, f"amount {amount} > intent per_payment_cap {intent.per_payment_cap}"
    if amount > intent.remaining:
        return "deny", Rule.INTENT_BUDGET, f"amount {amount} > intent remaining budget {intent.remaining}"

    # Denylists, then allowlists.
    if rules.payee_denylist is not None and payee in rules.payee_denylist:
        return "deny", Rule.PAYEE_DENYLIST, f"payee {payee} is on the payee denylist"
    if rules.host_denylist is not None and host is not None and _host_matches(host, rules.host_denylist):
        return "deny", Rule.HOST_DENYLIST, f"host {host} matches the host denylist"
    if rules.payee_allowlist is not None and payee not in rules.payee_allowlist:
        return "deny", Rule.PAYEE_ALLOWLIST, f"payee {payee} is not on the payee allowlist"
    if (
        rules.host_allowlist is not None
        and not request.card
        and (host is None or not _host_matches(host, rules.host_allowlist))
    ):
        return "deny", Rule.HOST_ALLOWLIST, f"host {host} matches nothing on the host allowlist"

    # Amount caps.
    if rules.per_transaction_cap is not None and amount > rules.per_transaction_cap:
        return "deny", Rule.PER_TRANSACTION_CAP, f"amount {amount} > per_transaction_cap {rules.per_transaction_cap}"
    payee_cap = rules.per_payee_daily_caps.get(payee)
    if reason := _check_cap(f"per_payee_daily_cap of {payee}", usage.payee_day, amount, payee_cap):
        return "deny", Rule.PER_PAYEE_DAILY_CAP, f"{reason} on {usage.local_date}"
    if reason := _check_cap("rolling_24h_cap", usage.rolling_24h, amount, rules.rolling_24h_cap):
        return "deny", Rule.ROLLING_24H_CAP, reason
    if reason := _check_cap("daily_cap", usage.day, amount, rules.daily_cap):
        return "deny", Rule.DAILY_CAP, f"{reason} on {usage.local_date} ({rules.timezone})"

    # Velocity and time of day.
    if rules.max_calls_per_minute is not None and usage.calls_last_minute + 1 > rules.max_calls_per_minute:
        return "deny", Rule.VELOCITY, (
            f"{usage.calls_last_minute} calls in the last {VELOCITY_WINDOW} s + this one"
            f" > max_calls_per_minute {rules.max_calls_per_minute}"
        )
    if rules.active_hours is not None:
        start, end = rules.active_hours
        begin, stop = _minutes(start, "active_hours") * 60, _minutes(end, "active_hours") * 60
        hours, minutes, seconds = (int(part) for part in usage.local_time.split(":"))
        now = hours * 3600 + minutes * 60 + seconds
        inside = begin <= now < stop if begin < stop else (now >= begin or now < stop)
        if not inside:
            return "deny", Rule.ACTIVE_HOURS, (
                f"local time {usage.local_time} ({rules.timezone}) is outside active_hours {start}-{end}"
            )

    # On mission: after every other deny rule, so an off-mission review never hides a deny.
    if rules.off_mission is not None:
        mission = mission_check(intent.purpose, host, request.path)
        if not mission.on_mission:
            return rules.off_mission, Rule.OFF_MISSION, (
                f"the spend ({mission.spend_text}) shares no term with the intent's purpose"
            )

    # Review: only once no deny rule objects.
    if rules.review_above is not None and amount > rules.review_above:
        return "review", Rule.REVIEW_ABOVE, f"amount {amount} > review_above {rules.review_above}"
    if rules.review_new_payee and not usage.payee_paid_before:
        return "review", Rule.REVIEW_NEW_PAYEE, f"payee {payee} was never paid before"

    return "allow", Rule.DEFAULT, "no rule objected"


def evaluate(
    request: SpendRequest,
    history: SpendHistory,
    rules: Rules,
    intent: IntentLimits,
    kill_switch: KillSwitch,
) -> Decision:
    """Decide one spend: ``allow`` (sign it), ``deny`` or ``review`` (a reviewer decides).

    Rules are checked in :data:`RULE_ORDER`; the first that fails decides, and every deny rule
    is checked before any review rule. Deterministic: the same inputs give an equal decision.
    """
    usage = measure(request, history, rules)
    outcome, rule, reason = _first_failure(request, usage, rules, intent, kill_switch)
    inputs = {
        "request": {
            "agent_id": request.agent_id,
            "intent_id": request.intent_id,
            "payee": request.payee,
            "host": request.host,
            "amount": request.amount,
            "at": request.at,
            "path": request.path,
        },
        "usage": usage.to_json(),
        "rules": rules.to_json(),
        "intent": intent.to_json(),
        "kill_switch": kill_switch.to_json(),
    }
    return Decision(outcome=outcome, rule=rule, reason=reason, inputs=inputs)


def host_matches(host: str, patterns: frozenset[str]) -> bool:
    """Whether ``host`` (lower-case) matches one of ``patterns``, as ``Rules.host_allowlist``
    matches: exact names, and ``*.example.com`` for any subdomain."""
    return _host_matches(host, patterns)


# --------------------------------------------------------------------------------------------
# On mission
# --------------------------------------------------------------------------------------------

_TERM = re.compile(r"[a-z0-9]+")
#: Terms that say nothing about a mission: URL furniture and English glue words.
_STOPWORDS = frozenset(
    "a an and api app are as at be by com for from get in io is it net of on or org our the to "
    "us v1 v2 v3 we web with www http https html json index".split()
)
#: Shortest term that may match inside a longer one (``weather`` in ``openweathermap``).
_MIN_INFIX = 5


def _terms(text: str) -> frozenset[str]:
    """Lower-case word stems of ``text``: no stopwords, no numbers, no one- or two-letter words,
    a plural ``s`` dropped."""
    terms = set()
    for word in _TERM.findall(text.lower()):
        if len(word) < 3 or word.isdigit() or word in _STOPWORDS:
            continue
        terms.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return frozenset(terms)


def _related(a: str, b: str) -> bool:
    return a == b or (len(a) >= _MIN_INFIX and a in b) or (len(b) >= _MIN_INFIX and b in a)


@dataclass(frozen=True)
class MissionCheck:
    """What :func:`mission_check` found: ``on_mission``; ``matched`` the purpose terms the
    spend shares (sorted); ``spend_text`` the host and path it compared."""

    on_mission: bool
    matched: tuple[str, ...]
    spend_text: str

    def to_json(self) -> dict[str, Any]:
        return {"on_mission": self.on_mission, "matched": list(self.matched), "spend": self.spend_text}


def mission_check(purpose: str, host: str | None, path: str | None) -> MissionCheck:
    """Whether a spend to ``host`` at ``path`` serves ``purpose`` (the intent's approved text).

    Both sides are cut into terms (lower-case words of three letters or more, stopwords and
    numbers dropped, a plural ``s`` removed); a purpose term matches a spend term when they are
    equal or, five letters or more, one contains the other. On mission when at least one term
    matches, or when the purpose has no term at all (nothing to be off from). Pure and
    deterministic; ``path``'s query, if any, is ignored.
    """
    spend_text = f"{host or ''}{(path or '').split('?', 1)[0]}"
    wanted = _terms(purpose)
    if not wanted:
        return MissionCheck(True, (), spend_text)
    offered = _terms(spend_text)
    matched = tuple(sorted(term for term in wanted if any(_related(term, other) for other in offered)))
    return MissionCheck(bool(matched), matched, spend_text)
