"""The orchestrator's mission: one intent from the co-wallet, specialists hired per call, one ad
bought by card.

The orchestrator holds a co-wallet API key and nothing else. It asks for one intent for the
whole mission (``POST /v1/intents``: budget, purpose, the payees it may pay); the owner's
standing auto-approve rule approves it, so the owner signs once. Then, task by task:

- research, copywriting, design: paid calls to the specialists (``examples.specialists``)
  through ``payer.WalletAuth``, which answers each 402 with a mandate the wallet signs;
- the premium research report costs more than the owner's review threshold: the agent states
  why (``SPEND_EXTENSION``) and the wallet's AI council decides before anything is signed;
- a subtask asks the research agent for trading signals, which the mission's purpose does not
  cover: the wallet denies it as off-mission and nothing is paid;
- the ad purchase: a single-use card minted from the same intent (``POST /v1/cards``), paid at
  the card merchant (``examples.merchant``), which captures less than the card's amount so
  the rest returns to the intent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from aep2.x402 import PAYMENT_SIGNATURE_HEADER, decode_header
from payer import WalletAuth
from payer.errors import CouncilDenied, PolicyDenied
from payer.remote import SPEND_EXTENSION

from .orchestrator import Plan

__all__ = ["AD_MCC", "AD_MERCHANT", "Budget", "MissionReport", "JOBS", "run_mission"]

#: The card merchant selling the ad placements, and its merchant category (advertising).
AD_MERCHANT = "adnet-campaigns"
AD_MCC = "7311"

#: The paid calls of each task: (method, path, query or JSON body). The specialists' prices are
#: in ``examples.specialists.SPECIALISTS``.
JOBS: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    "research": [
        *(("GET", "/v1/research/market", {"segment": s}) for s in ("students", "families", "freelancers", "retirees")),
        *(("GET", "/v1/research/competitors", {"region": r}) for r in ("europe", "americas")),
    ],
    "copywriting": [
        *(("POST", "/v1/copywriting/headlines", {"tone": t}) for t in ("bold", "warm", "playful", "calm", "witty")),
        *(("POST", "/v1/copywriting/ad-copy", {"channel": c}) for c in ("search", "social", "video")),
    ],
    "design": [
        *(("POST", "/v1/design/logo", {"style": s}) for s in ("flat", "outline")),
        *(("POST", "/v1/design/banner", {"size": s}) for s in ("1200x628", "1080x1080", "728x90")),
    ],
}
#: The premium report: above the review threshold, so the council decides.
PREMIUM = ("GET", "/v1/research/deep-report", {})
#: What a careless subtask asks for: off the mission's purpose.
OFF_MISSION = ("GET", "/v1/trading/signals", {})


@dataclass(frozen=True)
class Budget:
    """The intent the orchestrator asks for, and the ad card (base units)."""

    budget: int = 1_500_000
    per_payment_cap: int = 400_000
    duration_seconds: int = 3600
    card_amount: int = 200_000
    card_capture: int = 150_000


@dataclass
class MissionReport:
    """What happened: the intent (and its one owner signature), every paid call, the council's
    and the policy's refusals, and the card."""

    plan: Plan
    intent: dict[str, Any] = field(default_factory=dict)
    owner_signature: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    council: list[dict[str, Any]] = field(default_factory=list)
    denied: list[dict[str, Any]] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    order: dict[str, Any] = field(default_factory=dict)


async def run_mission(
    plan: Plan,
    *,
    wallet_url: str,
    api_key: str,
    specialists: dict[str, str],
    payees: list[str],
    merchant_url: str,
    budget: Budget = Budget(),
    say: Callable[[str], None] = print,
    tick: Callable[[], None] = lambda: None,
) -> MissionReport:
    """Carry out ``plan`` with the agent key ``api_key`` at the co-wallet ``wallet_url``.

    ``specialists``: task kind → the specialist's base URL; ``payees``: the addresses the
    intent may pay (the specialists' and the card merchant's pseudo-payee); ``say`` prints a
    line of the story, ``tick`` counts a finished step (a progress bar). Raises
    ``RuntimeError`` when the intent is not approved at once or a step ends otherwise than the
    mission expects (a paid call refused, a card declined).
    """
    report = MissionReport(plan)
    agent = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=wallet_url, headers=agent, timeout=30) as wallet:
        drafted = await wallet.post("/v1/intents", json={
            "budget": budget.budget, "purpose": plan.purpose, "durationSeconds": budget.duration_seconds,
            "perPaymentCap": budget.per_payment_cap, "payees": payees,
        })
        report.intent = drafted.json()
        if drafted.status_code != 201 or report.intent.get("status") != "active":
            raise RuntimeError(f"the mission's intent was not approved at once: {drafted.status_code} {drafted.text[:300]}")
        say(f"intent {report.intent['id']} active: budget {budget.budget / 1e6:.2f} USDC for {len(payees)} payees, "
            f"\"{plan.purpose}\"")

        async with WalletAuth(wallet_url, api_key, timeout=30) as auth, httpx.AsyncClient(auth=auth, timeout=30) as http:
            for task in plan.tasks:
                if task.kind not in JOBS:
                    continue
                say(f"task {task.kind}: {task.title}: hiring the {task.kind} agent")
                semaphore = asyncio.Semaphore(4)

                async def job(method: str, path: str, params: dict[str, str], kind: str = task.kind) -> None:
                    async with semaphore:
                        response = await _call(http, specialists[kind], method, path, params, plan.goal)
                    if response.status_code != 200:
                        raise RuntimeError(f"{kind} {path}: {response.status_code} {response.text[:200]}")
                    report.calls.append({"kind": kind, "path": path})
                    if not report.owner_signature:
                        report.owner_signature = _owner_signature(response)
                    tick()

                await asyncio.gather(*(job(*spec) for spec in JOBS[task.kind]))
                if task.kind == "research":
                    await _premium(http, specialists["research"], plan, report, say)
                    tick()
                    await _off_mission(http, specialists["research"], plan, report, say)
                    tick()

        say(f"the owner signed once, over the intent: {report.owner_signature[:22]}…; every mandate of the "
            "mission carries that signature and a session key's signature of its own")
        await _buy_ads(wallet, merchant_url, report, budget, say)
        tick()
    return report


async def _call(http: httpx.AsyncClient, base: str, method: str, path: str, params: dict[str, str], topic: str,
                extensions: dict[str, Any] | None = None) -> httpx.Response:
    if method == "GET":
        return await http.get(base + path, params={"topic": topic, **params}, extensions=extensions or {})
    return await http.post(base + path, json={"topic": topic, **params}, extensions=extensions or {})


async def _premium(http: httpx.AsyncClient, base: str, plan: Plan, report: MissionReport,
                   say: Callable[[str], None]) -> None:
    """The spend above the review threshold, with the agent's case for the council."""
    spend = {"justification": "the deep report sizes every segment before the ad budget is committed",
             "expected_roi": "4x", "urgency": "high"}
    method, path, params = PREMIUM
    try:
        response = await _call(http, base, method, path, params, plan.goal, {SPEND_EXTENSION: spend})
    except CouncilDenied as exc:
        report.council.append({"path": path, "outcome": "deny", "reason": exc.reason})
        say(f"council denied {path}: {exc.reason}")
        return
    if response.status_code != 200:
        raise RuntimeError(f"research {path}: {response.status_code} {response.text[:200]}")
    report.calls.append({"kind": "research", "path": path})
    report.council.append({"path": path, "outcome": "approve"})
    say(f"{path} is above the review threshold: the council approved it, then the wallet paid")


async def _off_mission(http: httpx.AsyncClient, base: str, plan: Plan, report: MissionReport,
                       say: Callable[[str], None]) -> None:
    """A spend the mission's purpose does not cover: denied, and nothing sent to the payee."""
    method, path, params = OFF_MISSION
    try:
        response = await _call(http, base, method, path, params, plan.goal)
    except PolicyDenied as exc:
        report.denied.append({"path": path, "rule": exc.rule, "reason": exc.reason})
        say(f"{path} denied by the wallet ({exc.rule}): {exc.reason}")
        return
    raise RuntimeError(f"the off-mission spend {path} was not denied: {response.status_code}")


async def _buy_ads(wallet: httpx.AsyncClient, merchant_url: str, report: MissionReport, budget: Budget,
                   say: Callable[[str], None]) -> None:
    """Mint a single-use card from the intent and check out at the ad merchant, capturing less."""
    minted = await wallet.post("/v1/cards", json={"intentId": report.intent["id"], "amount": budget.card_amount,
                                                  "merchantId": AD_MERCHANT, "mcc": AD_MCC, "ttlSeconds": 900})
    if minted.status_code != 201:
        raise RuntimeError(f"the ad card was not minted: {minted.status_code} {minted.text[:300]}")
    card = minted.json()
    say(f"task ad_purchase: card ····{card['card']['last4']} minted for {budget.card_amount / 1e6:.2f} USDC "
        f"(single use, locked to {AD_MERCHANT})")
    async with httpx.AsyncClient(base_url=merchant_url, timeout=30) as shop:
        checkout = await shop.post("/v1/checkout", json={
            "amount": budget.card_amount, "captureAmount": budget.card_capture,
            "card": {"number": card["number"], "cvv": card["cvv"], "expMonth": card["card"]["expMonth"],
                     "expYear": card["card"]["expYear"]},
        })
    if checkout.status_code != 201:
        raise RuntimeError(f"the ad checkout failed: {checkout.status_code} {checkout.text[:300]}")
    report.order = checkout.json()
    cards = (await wallet.get("/v1/cards")).json()["cards"]
    report.card = next(c for c in cards if c["id"] == card["card"]["id"])
    say(f"ad merchant captured {report.order['captured'] / 1e6:.2f} of {budget.card_amount / 1e6:.2f} USDC; "
        f"card {report.card['status']}, {(report.card['amount'] - report.card['captured']) / 1e6:.2f} USDC back to the intent")


def _owner_signature(response: httpx.Response) -> str:
    """The owner's signature over the intent, as the paid request carried it to the payee."""
    header = response.request.headers.get(PAYMENT_SIGNATURE_HEADER)
    if header is None:
        return ""
    intent = decode_header(header).get("payload", {}).get("intent", {})
    return str(intent.get("signature", ""))
