"""A local stub of the Anthropic Messages API (``POST /v1/messages``) for the council's tests.

A small Starlette app served by uvicorn on a loopback port, so the real ``anthropic`` SDK
talks HTTP to it exactly as to the real API. What each judge answers is scripted by the
request's ``model`` (the council's tests give every judge its own model): a ``cast_vote``
tool call with usage, a malformed one, prose, a 529 ``overloaded_error`` (n times, then a
vote), or a vote after a delay. ``latency`` delays every answer (the bench's fixed latency).
Every request body is kept in ``requests`` for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["AnthropicStub", "Answer", "approve", "deny", "malformed", "overloaded", "prose", "slow"]


@dataclass(frozen=True)
class Answer:
    """One scripted behaviour: ``tool_input`` (None: a prose answer with no tool call),
    ``overloaded`` (answer 529 this many times first), ``delay`` seconds before answering."""

    tool_input: dict[str, Any] | None
    overloaded: int = 0
    delay: float = 0.0


def approve(risk: int = 20, confidence: float = 0.8, rationale: str = "serves the purpose at a fair price") -> Answer:
    return Answer({"vote": "approve", "rationale": rationale, "risk_score": risk, "confidence": confidence})


def deny(risk: int = 80, confidence: float = 0.7, rationale: str = "too much for what it buys") -> Answer:
    return Answer({"vote": "deny", "rationale": rationale, "risk_score": risk, "confidence": confidence})


def malformed(**fields: Any) -> Answer:
    """A ``cast_vote`` call whose input is a valid approval with ``fields`` changed (a value
    of ``...`` removes the field)."""
    base = dict(approve().tool_input or {}) | fields
    return Answer({k: v for k, v in base.items() if v is not ...})


def prose() -> Answer:
    return Answer(None)


def overloaded(times: int, then: Answer | None = None) -> Answer:
    """529 ``times`` times, then ``then`` (default: an approval)."""
    return Answer((then or approve()).tool_input, overloaded=times)


def slow(seconds: float, then: Answer | None = None) -> Answer:
    return Answer((then or approve()).tool_input, delay=seconds)


@dataclass
class AnthropicStub:
    """The stub's state: ``script`` model -> ``Answer`` (unscripted models approve), a fixed
    ``latency`` in seconds added to every answer, the ``requests`` received and ``calls`` per model."""

    script: dict[str, Answer] = field(default_factory=dict)
    latency: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    async def _messages(self, request: Request) -> JSONResponse:
        body = await request.json()
        model = str(body.get("model"))
        self.requests.append(body)
        self.calls[model] += 1
        answer = self.script.get(model, approve())
        await asyncio.sleep(self.latency + answer.delay)
        if self.calls[model] <= answer.overloaded:
            return JSONResponse(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                status_code=529, headers={"retry-after-ms": "20"},
            )
        number = next(self._ids)
        if answer.tool_input is None:
            content: list[dict[str, Any]] = [{"type": "text", "text": "I would approve this, it looks fine."}]
            stop = "end_turn"
        else:
            content = [{"type": "tool_use", "id": f"toolu_stub_{number}", "name": "cast_vote", "input": answer.tool_input}]
            stop = "tool_use"
        prompt = str(body.get("system", "")) + str(body.get("messages", ""))
        return JSONResponse({
            "id": f"msg_stub_{number}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": len(prompt) // 4, "output_tokens": 40 + number % 7},
        })

    def start(self) -> str:
        """Serve on a free loopback port in a thread of its own; the base URL."""
        app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            threading.Event().wait(0.01)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)
