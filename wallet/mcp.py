"""The co-wallet as MCP tools for agents: ``python -m wallet.mcp`` (stdio or streamable HTTP).

This server runs on the agent's side, next to its framework, and holds only the agent's API
key: every tool is one call to the co-wallet's HTTP API (``wallet.app``), which decides, signs
and pays. Configuration comes from the environment, read once at start:

- ``AEP2_WALLET_URL``: the co-wallet's base URL (``http://127.0.0.1:8080``);
- ``AEP2_WALLET_API_KEY``: the agent's API key.

Tools (amounts are token base units, integers):

- ``wallet_balance``: the agent's intents with budget, remaining and status (``GET /v1/intents``);
- ``request_intent``: draft an intent for the owner to approve (``POST /v1/intents``);
- ``pay``: the wallet makes a paid HTTP call within the agent's intents and the owner's policy
  (``POST /v1/payments/execute``); the payee's status, headers, body and the ``paymentId``;
- ``list_payments``: the agent's payments with their status (``GET /v1/payments/mine``);
- ``create_card``: a single-use AgentCard for one purchase at a card-accepting merchant,
  funded by one of the agent's intents through the same policy (``POST /v1/cards``); the card
  number and CVV are in this one answer only.

Errors. A refusal is a tool result with ``isError: true`` (MCP "tools" spec: errors that come
from the tool are reported in the result, so the model can read them): ``structuredContent`` is
the wallet's RFC 9457 problem (``code``, ``detail`` and, for a policy decision, the ``rule``
that decided and the ``decisionId``), ``content[0].text`` says the same in one line. A spend
sent to review is refused with ``code: "review_pending"`` and the ``reviewId``: repeating
``pay`` with the same ``idempotency_key`` after the owner approved is served once. A wallet
that cannot be reached is ``code: "wallet_unavailable"``.

Claude Desktop (or any MCP client that launches servers)::

    {"mcpServers": {"aep2-wallet": {"command": "python", "args": ["-m", "wallet.mcp"],
      "env": {"AEP2_WALLET_URL": "http://127.0.0.1:8080", "AEP2_WALLET_API_KEY": "aep2_…"}}}}
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

__all__ = ["create_server", "main", "problem_result", "WALLET_URL_ENV", "WALLET_API_KEY_ENV"]

WALLET_URL_ENV = "AEP2_WALLET_URL"
WALLET_API_KEY_ENV = "AEP2_WALLET_API_KEY"


def problem_result(problem: dict[str, Any]) -> CallToolResult:
    """An ``isError`` tool result for the wallet's problem details ``problem`` (``code``,
    ``detail``, optional ``rule``, ``field``, ``reviewId``…): the problem as
    ``structuredContent`` and ``"<code> (rule <rule>): <detail>"`` as text."""
    code = problem.get("code", "wallet_error")
    rule = f" (rule {problem['rule']})" if problem.get("rule") else ""
    text = f"{code}{rule}: {problem.get('detail') or problem.get('reason') or problem.get('title') or ''}"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=problem, is_error=True)


def _ok(data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data))], structured_content=data)


class _Wallet:
    """The co-wallet's agent API, one bearer credential; answers are JSON objects or a
    ``CallToolResult`` refusal (module docstring)."""

    def __init__(self, url: str, api_key: str, transport: httpx.AsyncBaseTransport | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.transport = transport
        self.timeout = timeout
        self.client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=self.transport, timeout=self.timeout
        ) as self.client:
            yield
        self.client = None

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | CallToolResult:
        assert self.client is not None, "the server's lifespan opens the client"
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            return problem_result({"code": "wallet_unavailable", "detail": f"{type(exc).__name__}: {exc}"})
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return problem_result({"code": "wallet_bad_answer", "status": response.status_code,
                                   "detail": f"the wallet answered {response.status_code} without a JSON object"})
        if response.status_code == 202:  # a review: nothing was signed or paid
            return problem_result({"code": "review_pending", "status": 202, "detail": data.get("reason", ""), **data})
        if response.status_code >= 400:
            return problem_result(data)
        return data


def create_server(
    url: str,
    api_key: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 60.0,
    name: str = "aep2-wallet",
) -> MCPServer[Any]:
    """The MCP server for the agent holding ``api_key`` at the co-wallet at ``url``.

    ``transport``: how to reach the wallet (default: the network; a test passes an
    ``httpx.ASGITransport``). ``timeout``: seconds per wallet call (``pay`` waits for the
    payee and, with ``review_timeout_seconds``, for the owner). Raises ``ValueError`` for an
    empty ``url`` or ``api_key``.
    """
    if not url or not api_key:
        raise ValueError(f"url/api_key: both required (set {WALLET_URL_ENV} and {WALLET_API_KEY_ENV})")
    wallet = _Wallet(url, api_key, transport, timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer[Any]) -> AsyncIterator[None]:
        async with wallet.open():
            yield

    server: MCPServer[Any] = MCPServer(
        name,
        instructions="Pay for HTTP APIs through the owner's co-wallet: ask for an intent (a budget the owner "
        "approves), then pay within it. Amounts are token base units.",
        lifespan=lifespan,
    )

    @server.tool()
    async def wallet_balance() -> CallToolResult:
        """Your intents (budgets) with their status, budget, remaining amount, per-payment cap,
        payees, hosts and validity, in token base units; ``remaining`` sums the active ones."""
        answer = await wallet.call("GET", "/v1/intents")
        if isinstance(answer, CallToolResult):
            return answer
        intents = answer["intents"]
        active = [i for i in intents if i["status"] == "active"]
        return _ok({"intents": intents, "active": len(active), "remaining": sum(i["remaining"] or 0 for i in active)})

    @server.tool()
    async def request_intent(
        budget: int,
        purpose: str,
        duration_seconds: int,
        per_payment_cap: int,
        payees: list[str] | None = None,
        hosts: list[str] | None = None,
    ) -> CallToolResult:
        """Ask the owner for an intent: ``budget`` and ``per_payment_cap`` in token base units,
        ``purpose`` in words, valid ``duration_seconds`` once approved; ``payees`` (addresses) and
        ``hosts`` (the API hosts ``pay`` may call, ``*.example.com`` allowed) limit it. The
        intent is pending until the owner approves it."""
        body = {"budget": budget, "purpose": purpose, "durationSeconds": duration_seconds,
                "perPaymentCap": per_payment_cap, "payees": payees or [], "hosts": hosts or []}
        answer = await wallet.call("POST", "/v1/intents", body)
        return answer if isinstance(answer, CallToolResult) else _ok(answer)

    @server.tool()
    async def pay(
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str = "",
        body_base64: str = "",
        idempotency_key: str | None = None,
        review_timeout_seconds: float = 0.0,
    ) -> CallToolResult:
        """Make the HTTP call ``method url`` and let the wallet pay its x402 402 within your
        intents and the owner's policy. ``body`` (text) or ``body_base64`` (bytes) is sent with
        ``headers`` (empty: no body). Give ``idempotency_key`` to make a retry safe (never paid twice);
        ``review_timeout_seconds`` (at most 30) waits for an owner's review. Returns the payee's
        ``status``, ``headers``, ``body`` (text; ``bodyBase64`` when not UTF-8) and ``paymentId``
        (null when the call was free)."""
        # Plain `str` annotations: the SDK would parse a JSON text given for `str | None` into an object.
        if body and body_base64:
            return problem_result({"code": "invalid_request", "field": "body", "detail": "give body or body_base64, not both"})
        if body:
            body_base64 = base64.b64encode(body.encode("utf-8")).decode("ascii")
        request: dict[str, Any] = {"url": url, "method": method, "headers": headers or {},
                                   "reviewTimeoutSeconds": review_timeout_seconds}
        if body_base64:
            request["body"] = body_base64
        if idempotency_key is not None:
            request["idempotencyKey"] = idempotency_key
        answer = await wallet.call("POST", "/v1/payments/execute", request)
        if isinstance(answer, CallToolResult):
            return answer
        return _ok(_paid_call(answer))

    @server.tool()
    async def create_card(
        intent_id: str,
        amount: int,
        merchant_id: str = "",
        mcc: str = "",
        ttl_seconds: int = 86_400,
        idempotency_key: str = "",
    ) -> CallToolResult:
        """Mint a single-use virtual card for one purchase: ``amount`` in token base units is
        held from intent ``intent_id`` (the owner's policy decides, as for ``pay``); lock it to
        ``merchant_id`` and/or ``mcc`` (4 digits) when you know them; it expires after
        ``ttl_seconds``. Returns the card (last 4 digits, expiry, status) with its ``number`` and
        ``cvv``, shown this once: use them at checkout. What the merchant does not capture
        returns to the intent."""
        request: dict[str, Any] = {"intentId": intent_id, "amount": amount, "ttlSeconds": ttl_seconds}
        for name, value in (("merchantId", merchant_id), ("mcc", mcc), ("idempotencyKey", idempotency_key)):
            if value:
                request[name] = value
        answer = await wallet.call("POST", "/v1/cards", request)
        return answer if isinstance(answer, CallToolResult) else _ok(answer)

    @server.tool()
    async def list_payments() -> CallToolResult:
        """Your payments, oldest first: ``paymentId``, ``intentId``, ``payee``, ``amount`` (base
        units), ``status`` (reserved, settled, released…) and ``createdAt``."""
        answer = await wallet.call("GET", "/v1/payments/mine")
        return answer if isinstance(answer, CallToolResult) else _ok(answer)

    return server


def _paid_call(answer: dict[str, Any]) -> dict[str, Any]:
    """The execute answer with the body as text when it is UTF-8 (what a model reads), else base64."""
    raw = answer.get("body") or ""
    result: dict[str, Any] = {"status": answer["status"], "paymentId": answer.get("paymentId"),
                              "headers": dict(answer.get("headers") or [])}
    try:
        result["body"] = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        result["bodyBase64"] = raw
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wallet.mcp [--transport stdio|streamable-http] [--host H] [--port P]``:
    serve the tools (streamable HTTP at ``/mcp``). Exit status 2 when the environment lacks
    ``AEP2_WALLET_URL`` or ``AEP2_WALLET_API_KEY``."""
    parser = argparse.ArgumentParser(prog="python -m wallet.mcp", description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    try:
        server = create_server(os.environ.get(WALLET_URL_ENV, ""), os.environ.get(WALLET_API_KEY_ENV, ""))
    except ValueError as exc:
        print(f"wallet.mcp: {exc}", file=sys.stderr)
        return 2
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
