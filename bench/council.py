"""``council_decision_ms``: how long the AI review council takes to decide one spend in review.

Two rows, each the p50 of ``Council.deliberate`` (five default judges asked in parallel, the
verdict tallied) on one fixed ``SpendCase``:

* ``council_decision_ms_offline``: the offline rule-based judges (no network). Baseline: p50 of
  one offline judge's vote, so the ratio is what five judges in parallel cost over one.
* ``council_decision_ms_stub``: ``AnthropicJudge`` through the real ``anthropic`` SDK against the
  local Messages API stub of the tests (``tests/wallet/anthropic_stub.py``, uvicorn on
  loopback) answering after a fixed latency. Baseline: p50 of one judge's call to the same stub
  in the same run (the fixed latency plus one SDK round trip), so the ratio is the council's
  overhead over a single call.

Rounds interleave the council and its baseline. Run: ``python -m bench council``;
``AEP2_BENCH_COUNCIL_ROUNDS`` sets the stub's rounds (default 50; the offline runs ten times
as many) and ``AEP2_BENCH_COUNCIL_LATENCY_MS`` the stub's fixed latency (default 50).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from wallet.council import DEFAULT_ROLES, AnthropicJudge, Council, JudgeBackend, OfflineJudge, RecentSpend, SpendCase, SpendContext
from wallet.policy import mission_check

from .common import log, row

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "wallet"))
from anthropic_stub import AnthropicStub  # noqa: E402  (the tests' stub, served here too)

PURPOSE = "weather forecasts for trip planning"
CASE = SpendCase(
    review_id="rev_bench", agent_id="agt_bench", intent_id="int_bench", amount=1_000, payee="0x" + "ab" * 20,
    host="gateway.test", resource="http://gateway.test/v1/forecast/paris", method="GET", rule="review_above",
    reason="amount 1000 > review_above 999", purpose=PURPOSE, budget=100_000, remaining=99_000,
    per_payment_cap=5_000, mission=mission_check(PURPOSE, "gateway.test", "/v1/forecast/paris"),
    context=SpendContext("the user asked for the week's weather in Paris", "3x", "normal"), spent_24h=1_000,
    payee_paid_before=True, recent=(RecentSpend(990.0, 1_000, "0x" + "ab" * 20, "gateway.test"),), now=1000.0,
)


async def _p50s(council: Council, single: Callable[[], Awaitable[Any]], rounds: int) -> tuple[float, float]:
    """``(council p50, one judge p50)`` in ms over ``rounds`` interleaved rounds."""
    decided, alone = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        verdict = await council.deliberate(CASE)
        decided.append((time.perf_counter() - started) * 1000)
        if verdict.abstentions:
            raise RuntimeError(f"a judge abstained: {[b.error for b in verdict.ballots if b.error]}")
        started = time.perf_counter()
        await single()
        alone.append((time.perf_counter() - started) * 1000)
    return statistics.median(decided), statistics.median(alone)


async def _measure(backend: JudgeBackend, rounds: int) -> tuple[float, float]:
    council = Council(backend)
    await _p50s(council, lambda: backend.judge(DEFAULT_ROLES[0], CASE, timeout=10), 3)  # warm-up
    return await _p50s(council, lambda: backend.judge(DEFAULT_ROLES[0], CASE, timeout=10), rounds)


def run() -> list[dict[str, Any]]:
    rounds = int(os.environ.get("AEP2_BENCH_COUNCIL_ROUNDS", "50"))
    latency_ms = float(os.environ.get("AEP2_BENCH_COUNCIL_LATENCY_MS", "50"))
    offline, offline_one = asyncio.run(_measure(OfflineJudge(), rounds * 10))
    log(f"council offline: p50 {offline:.3f} ms over {rounds * 10} rounds")
    stub = AnthropicStub(latency=latency_ms / 1000)
    stub.start()
    try:
        async def on_stub() -> tuple[float, float]:
            judge = AnthropicJudge(api_key="sk-bench", base_url=stub.url)
            try:
                return await _measure(judge, rounds)
            finally:
                await judge.aclose()

        remote, remote_one = asyncio.run(on_stub())
    finally:
        stub.stop()
    log(f"council on the stub ({latency_ms:g} ms fixed latency): p50 {remote:.1f} ms over {rounds} rounds")
    return [
        row("council_decision_ms_offline", offline, "ms", offline_one),
        row("council_decision_ms_stub", remote, "ms", remote_one),
    ]
