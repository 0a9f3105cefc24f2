"""``MCPToolPayer``: call MCP tools and pay their x402 payment-required results with AEP2 mandates.

The MCP counterpart of ``AEP2Auth`` (x402 ``specs/transports-v2/mcp.md``, tool-result
binding): call the tool; when the result is ``isError`` with an x402 ``PaymentRequired`` (in
``structuredContent``, else as JSON in ``content[0].text``) offering an ``aep2`` entry this
intent can pay, sign one mandate bound to this tool and these arguments
(``aep2.x402.mcp.tool_call_binding``) with ``AEP2Auth.sign`` and call once more with the
payment in ``_meta["x402/payment"]``. At most one mandate is signed per call.

The answer to the paid call decides the reservation in the ``PayerState``, as over HTTP:

* ``_meta["x402/payment-response"]`` with ``success`` not false: confirmed, the receipt kept
  (``paymentId`` lifted from its ``extra``);
* a failed receipt or a new ``PaymentRequired``: released, and ``PaymentRefused`` raised with
  the gate's code (or the result returned when ``raise_on_refusal=False``);
* any other error result: the gate charged nothing, so the reservation is released;
* a success without a receipt, or a call that raised: the outcome is unknown and the amount
  stays reserved.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol

from aep2.errors import ErrorCode
from aep2.x402.mcp import PAYMENT_META_KEY, PAYMENT_RESPONSE_META_KEY, tool_call_binding, tool_resource_url

from .auth import AEP2Auth
from .challenge import check_challenge
from .errors import PaymentRefused

__all__ = ["MCPToolPayer", "ToolCaller", "payment_required_of"]

#: Where a challenge was read from, for ``MalformedChallenge``.
STRUCTURED = "structuredContent"
TEXT = "content[0].text"


class ToolCaller(Protocol):
    """What ``MCPToolPayer`` calls tools through: ``mcp.Client`` and ``mcp.ClientSession``."""

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any: ...


def payment_required_of(result: Any) -> dict[str, Any] | None:
    """The x402 ``PaymentRequired`` (a JSON object) of a tool ``result`` (an MCP
    ``CallToolResult``), or None when the result is no payment-required error.

    ``structuredContent`` first, then ``content[0].text`` parsed as JSON (transports-v2/mcp.md,
    "Client Requirements"); an object counts when it has ``x402Version`` and ``accepts``.
    Raises ``MalformedChallenge`` naming the field when such an object has ``accepts`` that is
    not a list of objects, or an ``error`` or ``resource`` of the wrong type.
    """
    if not getattr(result, "is_error", False):
        return None
    candidates: list[tuple[str, Any]] = [(STRUCTURED, getattr(result, "structured_content", None))]
    content = getattr(result, "content", None) or []
    if content and getattr(content[0], "type", None) == "text":
        try:
            candidates.append((TEXT, json.loads(content[0].text)))
        except ValueError:
            pass
    for source, data in candidates:
        if isinstance(data, dict) and "x402Version" in data and "accepts" in data:
            check_challenge(data, source)
            return data
    return None


class MCPToolPayer:
    """Call tools through ``client`` (an ``mcp.Client`` or ``ClientSession``, connected),
    paying with ``auth``'s intent, session key and ``PayerState`` (shared with its HTTP
    payments: one budget, one nonce sequence).

    ``raise_on_refusal``: raise ``PaymentRefused`` when the gate refuses the mandate (default),
    or return its result.
    """

    def __init__(self, client: ToolCaller, auth: AEP2Auth, *, raise_on_refusal: bool = True) -> None:
        self.client = client
        self.auth = auth
        self.raise_on_refusal = raise_on_refusal

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Call tool ``name`` with ``arguments`` (JSON values), paying a payment-required
        answer once (module docstring); ``options`` go to ``client.call_tool``. Returns the
        ``CallToolResult`` of the last call.

        Raises ``MalformedChallenge``, ``NoAcceptableRequirement``, ``PayeeNotAllowed`` and the
        other ``SpendingLimitError``-s before anything is signed; ``PaymentRefused`` (``.code``,
        an ``aep2.errors.ErrorCode`` value) when the gate refused the signed mandate.
        """
        args = dict(arguments or {})
        result = await self.client.call_tool(name, args, **options)
        challenge = payment_required_of(result)
        if challenge is None:
            return result
        auth = self.auth
        source = STRUCTURED if result.structured_content is challenge else TEXT
        requirement = auth.select(challenge["accepts"], source=source)
        binding = tool_call_binding(name, args)
        resource = challenge.get("resource") or {"url": tool_resource_url(name)}
        mandate, envelope = auth.sign(
            requirement, resource, method=binding.method, path_and_query=binding.path_and_query, body=binding.body
        )
        paid = await self.client.call_tool(name, args, meta={PAYMENT_META_KEY: envelope}, **options)
        receipt = (paid.meta or {}).get(PAYMENT_RESPONSE_META_KEY)
        if isinstance(receipt, dict) and receipt.get("success") is not False:
            extra = receipt.get("extra") if isinstance(receipt.get("extra"), dict) else {}
            kept = {**receipt, "paymentId": extra.get("paymentId", mandate.payment_id)}
            auth.state.confirm(auth.intent_id, mandate.nonce, kept)
            return paid
        refused = payment_required_of(paid)
        if refused is not None or isinstance(receipt, dict):
            auth.state.release(auth.intent_id, mandate.nonce)
            if refused is not None and refused.get("error"):
                code, _, reason = refused["error"].partition(": ")
            else:
                code = str((receipt or {}).get("errorReason") or ErrorCode.PAYMENT_REQUIRED)
                reason = f"{PAYMENT_RESPONSE_META_KEY}: success is false" if receipt else "refused without an error"
            if code == ErrorCode.UNKNOWN_INTENT:
                auth.state.forget(auth.intent_id)
            if self.raise_on_refusal:
                raise PaymentRefused(code.strip(), reason)
            return paid
        if paid.is_error:
            auth.state.release(auth.intent_id, mandate.nonce)  # the gate charges no failed tool
        return paid
