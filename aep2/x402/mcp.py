"""x402 over MCP (``specs/transports-v2/mcp.md``, tool-result binding): the ``_meta`` keys and
what an ``aep2`` mandate binds to when the paid request is a tool call.

The wire, shared by the payee's gate (``gateway.mcp``) and the payer (``payer.mcp``):

- an unpaid call is answered with a tool result ``isError: true`` whose ``structuredContent``
  is the x402 ``PaymentRequired`` and whose ``content[0].text`` is the same object as JSON;
- the client retries with the ``PaymentPayload`` in ``params._meta["x402/payment"]``;
- the paid result carries the ``SettleResponse`` in ``result._meta["x402/payment-response"]``.

Binding. Over HTTP a mandate's ``requestHash`` covers method, path and body
(docs/PROTOCOL.md §3). A tool call has none of these, so it is bound as the HTTP request it
stands for: method ``TOOLS/CALL``, path ``mcp://tool/<name>`` (the resource URL of the tool, as
x402's MCP examples name it) and body the canonical JSON of the arguments (§4). A mandate
signed for one tool, or for other arguments, does not verify for another call.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from .headers import canonical_json

__all__ = [
    "PAYMENT_META_KEY",
    "PAYMENT_RESPONSE_META_KEY",
    "TOOL_CALL_METHOD",
    "ToolCallBinding",
    "tool_call_binding",
    "tool_resource_url",
]

#: ``params._meta`` key of the client's ``PaymentPayload``.
PAYMENT_META_KEY = "x402/payment"
#: ``result._meta`` key of the server's ``SettleResponse``.
PAYMENT_RESPONSE_META_KEY = "x402/payment-response"
#: The method a tool call is bound as (upper-case, as ``aep2.mandate.request_hash`` wants).
TOOL_CALL_METHOD = "TOOLS/CALL"


def tool_resource_url(name: str) -> str:
    """``mcp://tool/<name>``: the x402 ``resource.url`` of tool ``name``."""
    return f"mcp://tool/{name}"


class ToolCallBinding(NamedTuple):
    """A tool call as the HTTP request it stands for: the arguments of
    ``aep2.mandate.request_hash`` and ``aep2.verification.BoundRequest``."""

    method: str
    path_and_query: str
    body: bytes


def tool_call_binding(name: str, arguments: Mapping[str, Any] | None) -> ToolCallBinding:
    """What a mandate paying for ``name(**arguments)`` binds to (module docstring).

    ``arguments`` must be JSON values (as they travel in ``tools/call``); absent arguments
    bind as ``{}``. Raises ``TypeError`` for arguments JSON cannot encode.
    """
    return ToolCallBinding(TOOL_CALL_METHOD, tool_resource_url(name), canonical_json(dict(arguments or {})))
