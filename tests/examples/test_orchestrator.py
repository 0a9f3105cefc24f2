"""The demo's orchestrator: both planners give the same shape of plan; a failing or malformed
model falls back to the deterministic planner and says so."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from examples.orchestrator import (
    AnthropicPlanner,
    DeterministicPlanner,
    TASK_KINDS,
    planner_from_env,
)

GOAL = "launch a marketing campaign for a new product"


def answering(planner: AnthropicPlanner, tool_input: Any) -> list[dict[str, Any]]:
    """Make ``planner``'s model answer a ``plan_mission`` call with ``tool_input``; the requests."""
    requests: list[dict[str, Any]] = []

    async def create(**request: Any) -> SimpleNamespace:
        requests.append(request)
        return SimpleNamespace(content=[SimpleNamespace(type="tool_use", input=tool_input)])

    planner._client.messages.create = create  # type: ignore[method-assign]
    return requests


async def test_the_deterministic_plan_has_one_task_of_each_kind_and_names_them_in_the_purpose():
    plan = await DeterministicPlanner().plan(GOAL)
    assert tuple(t.kind for t in plan.tasks) == TASK_KINDS and plan.planner == "deterministic"
    assert plan.purpose == f"{GOAL}: market research, copywriting, design, an ad purchase"


async def test_the_model_plans_through_the_forced_tool_and_its_tasks_are_put_in_order():
    planner = AnthropicPlanner("sk-test", model="claude-test")
    tasks = [{"kind": k, "title": f"{k} title", "brief": f"{k} brief"} for k in reversed(TASK_KINDS)]
    requests = answering(planner, {"tasks": tasks})
    plan = await planner.plan(GOAL)
    await planner.aclose()
    assert requests[0]["tool_choice"] == {"type": "tool", "name": "plan_mission"}
    assert tuple(t.kind for t in plan.tasks) == TASK_KINDS and plan.tasks[0].title == "research title"
    assert plan.planner == "anthropic (claude-test)"


@pytest.mark.parametrize("tool_input", [
    {"tasks": [{"kind": "research", "title": "a", "brief": "b"}]},  # kinds missing
    {"tasks": [{"kind": "trading", "title": "a", "brief": "b"}] * 4},  # unknown kind
    {"tasks": [{"kind": k, "title": "", "brief": "b"} for k in TASK_KINDS]},  # empty title
    {"plan": "prose"},
])
async def test_a_malformed_plan_falls_back_to_the_deterministic_planner(tool_input):
    planner = AnthropicPlanner("sk-test", model="claude-test")
    answering(planner, tool_input)
    plan = await planner.plan(GOAL)
    await planner.aclose()
    assert plan.planner.startswith("deterministic (anthropic failed: ValueError")
    assert tuple(t.kind for t in plan.tasks) == TASK_KINDS


def test_the_environment_picks_the_planner():
    assert isinstance(planner_from_env({}), DeterministicPlanner)
    chosen = planner_from_env({"ANTHROPIC_API_KEY": "sk-test", "AEP2_ORCHESTRATOR_MODEL": "claude-x"})
    assert isinstance(chosen, AnthropicPlanner) and chosen.model == "claude-x"
