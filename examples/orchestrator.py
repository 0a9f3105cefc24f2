"""The demo's orchestrator agent: it turns a goal into the tasks of one mission.

Two planners with one interface (``Planner.plan(goal) -> Plan``):

- :class:`AnthropicPlanner`: the ``anthropic`` SDK's Messages API with one tool,
  ``plan_mission``, and ``tool_choice`` forcing it, so the plan is the tool call's JSON input,
  checked field by field (prose is never parsed);
- :class:`DeterministicPlanner`: the same four tasks for any goal, with no network.

:func:`planner_from_env` picks the first when ``ANTHROPIC_API_KEY`` is set (model
``AEP2_ORCHESTRATOR_MODEL``, default ``wallet.council.DEFAULT_MODEL``). A task's ``kind`` is
always one of :data:`TASK_KINDS`, because the kind, not the model's prose, decides which
service agent is hired; the model words the titles and briefs. A model that fails or answers
a malformed plan is replaced by the deterministic planner, and ``Plan.planner`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

__all__ = [
    "AnthropicPlanner",
    "DeterministicPlanner",
    "PLAN_TOOL",
    "Plan",
    "Planner",
    "TASK_KINDS",
    "Task",
    "planner_from_env",
]

#: Every mission has these four kinds of task, in this order.
TASK_KINDS = ("research", "copywriting", "design", "ad_purchase")

#: What each kind means, for the purpose the owner approves and for the model's instructions.
_KIND_WORDS = {
    "research": "market research",
    "copywriting": "copywriting",
    "design": "design",
    "ad_purchase": "an ad purchase",
}

PLAN_TOOL: dict[str, Any] = {
    "name": "plan_mission",
    "description": "Record the mission plan: exactly one task of each kind, in the order given.",
    "input_schema": {
        "type": "object",
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": len(TASK_KINDS),
                "maxItems": len(TASK_KINDS),
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"enum": list(TASK_KINDS)},
                        "title": {"type": "string", "maxLength": 80},
                        "brief": {"type": "string", "maxLength": 300},
                    },
                    "required": ["kind", "title", "brief"],
                },
            }
        },
        "required": ["tasks"],
    },
}


@dataclass(frozen=True)
class Task:
    """One task of the mission: ``kind`` (one of ``TASK_KINDS``), a short ``title`` and ``brief``."""

    kind: str
    title: str
    brief: str


@dataclass(frozen=True)
class Plan:
    """The goal, its tasks (one per kind, in ``TASK_KINDS`` order) and which planner made it."""

    goal: str
    tasks: tuple[Task, ...]
    planner: str

    @property
    def purpose(self) -> str:
        """The mission's purpose as the owner approves it: the goal and its kinds of work."""
        return f"{self.goal}: {', '.join(_KIND_WORDS[t.kind] for t in self.tasks)}"


class Planner(Protocol):
    """Breaks a goal into the mission's tasks."""

    name: str

    async def plan(self, goal: str) -> Plan: ...

    async def aclose(self) -> None: ...


class DeterministicPlanner:
    """The same four tasks for every goal; no network, no key."""

    name = "deterministic"

    async def plan(self, goal: str) -> Plan:
        """The fixed plan for ``goal``."""
        return Plan(goal, (
            Task("research", "Size the market", f"Segments, competitors and channels for: {goal}"),
            Task("copywriting", "Write the campaign copy", "Headlines and ad copy in the product's voice"),
            Task("design", "Design the visuals", "A logo and campaign banners"),
            Task("ad_purchase", "Buy the launch ads", "One ad placement at the ad network, paid by card"),
        ), self.name)

    async def aclose(self) -> None:
        return None


class AnthropicPlanner:
    """Plans with a Claude model through tool use (``PLAN_TOOL``); falls back to ``fallback``
    (the deterministic planner) when the call fails or the plan is malformed."""

    name = "anthropic"

    def __init__(self, api_key: str, *, model: str, base_url: str | None = None, timeout: float = 30.0,
                 fallback: Planner | None = None) -> None:
        from anthropic import AsyncAnthropic

        self.model = model
        self._client = AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1)
        self._fallback = fallback or DeterministicPlanner()

    async def plan(self, goal: str) -> Plan:
        """Ask the model for the tasks of ``goal``; on any failure, the fallback's plan, its
        ``planner`` naming why."""
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=1024,
                tools=[PLAN_TOOL],
                tool_choice={"type": "tool", "name": PLAN_TOOL["name"]},
                messages=[{"role": "user", "content": (
                    f"You orchestrate specialist agents for this goal: {goal!r}. Plan exactly one task of each "
                    f"kind, in this order: {', '.join(TASK_KINDS)}. Give each a short title and a one-sentence brief."
                )}],
            )
            call = next(block for block in message.content if getattr(block, "type", "") == "tool_use")
            tasks = _tasks(call.input)
        except Exception as exc:  # noqa: BLE001 (any failure of the model means: plan without it)
            fallback = await self._fallback.plan(goal)
            why = f"{type(exc).__name__}: {str(exc)[:120]}"
            return Plan(goal, fallback.tasks, f"{fallback.planner} (anthropic failed: {why})")
        return Plan(goal, tasks, f"{self.name} ({self.model})")

    async def aclose(self) -> None:
        await self._client.close()


def _tasks(data: Any) -> tuple[Task, ...]:
    """The plan tool's input as tasks, one per kind in ``TASK_KINDS`` order; ``ValueError``
    naming the field for anything else."""
    items = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise ValueError("tasks: expected a list")
    by_kind: dict[str, Task] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or item.get("kind") not in TASK_KINDS or item["kind"] in by_kind:
            raise ValueError(f"tasks[{index}]: expected a new kind among {', '.join(TASK_KINDS)}")
        title, brief = item.get("title"), item.get("brief")
        if not isinstance(title, str) or not isinstance(brief, str) or not title.strip():
            raise ValueError(f"tasks[{index}]: title and brief must be text")
        by_kind[item["kind"]] = Task(item["kind"], title.strip()[:80], brief.strip()[:300])
    if set(by_kind) != set(TASK_KINDS):
        raise ValueError(f"tasks: missing {', '.join(sorted(set(TASK_KINDS) - set(by_kind)))}")
    return tuple(by_kind[kind] for kind in TASK_KINDS)


def planner_from_env(environ: Mapping[str, str]) -> Planner:
    """``AnthropicPlanner`` when ``ANTHROPIC_API_KEY`` is set (``AEP2_ORCHESTRATOR_MODEL``,
    ``ANTHROPIC_BASE_URL``), else ``DeterministicPlanner``."""
    api_key = environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        return DeterministicPlanner()
    from wallet.council import DEFAULT_MODEL

    return AnthropicPlanner(api_key, model=environ.get("AEP2_ORCHESTRATOR_MODEL") or DEFAULT_MODEL,
                            base_url=environ.get("ANTHROPIC_BASE_URL") or None)
