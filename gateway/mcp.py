"""Paid MCP tools: x402 over MCP (``specs/transports-v2/mcp.md``, tool-result binding) in front of
an ``mcp`` SDK server, with the schemes and the store of the HTTP gateway.

``PaidTools`` is an ``mcp.server.extension.Extension`` that wraps ``tools/call``. A call to a
priced tool goes through the same steps as a priced HTTP route (``gateway.middleware``):

1. no ``_meta["x402/payment"]``: the tool does not run; the result is ``isError: true`` with
   the x402 ``PaymentRequired`` in ``structuredContent`` and, as JSON, in ``content[0].text``;
2. the payment is read against the tool's quote (``gateway.payment.parse_payment``), then
   verified and reserved by its scheme (``exact``: the facilitator checks the EIP-3009
   authorization; ``aep2``: the mandate, bound to this tool and these arguments
   (``aep2.x402.mcp.tool_call_binding``), is verified and reserved in the store). A refusal
   is a ``PaymentRequired`` whose ``error`` is ``"<code>: <reason>"`` (``aep2.errors``);
3. the tool runs; an error result (or an exception) releases the reservation and is returned
   as it is, unpaid;
4. the payment is settled (``exact`` on chain before the result leaves, ``aep2`` by keeping
   the reservation for the processor) and the ``SettleResponse`` is returned in
   ``result._meta["x402/payment-response"]``. A failed settlement returns the
   ``PaymentRequired`` with the failed ``SettleResponse`` in ``_meta``, never the tool's
   content (the spec's "Settlement Failure").

Unpriced tools pass through untouched. Only x402 v2 payloads are read (the MCP transport is a
v2 transport). The extension binding (``org.x402/payment``, ``resultType: "payment_required"``)
is not offered: a client is always answered with the tool-result binding.

Example::

    gate = PaidTools(config=config, store=SQLiteStore("payments.sqlite"), chain=reader,
                     prices={"forecast": 1_000}, facilitator=facilitator)
    server = MCPServer("weather", extensions=[gate])

    @server.tool()
    def forecast(city: str) -> dict: ...
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Mapping

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, CallToolRequestParams, CallToolResult, TextContent

from aep2.errors import ErrorCode, PaymentError
from aep2.store import PaymentStore
from aep2.x402.facilitator import Facilitator
from aep2.x402.mcp import PAYMENT_META_KEY, PAYMENT_RESPONSE_META_KEY, tool_call_binding, tool_resource_url
from aep2.x402.models import ResourceInfo, SettleResponse

from .chain import ChainCache, ChainReader
from .config import GatewayConfig
from .payment import open_schemes, parse_payment, settle
from .quote import Quote
from .schemes.aep2 import AEP2Scheme
from .schemes.base import PaidRequest, Scheme

__all__ = ["PaidTools", "payment_required_result"]

logger = logging.getLogger("gateway.mcp")


def payment_required_result(quote: Quote, error: str, settlement: SettleResponse | None = None) -> CallToolResult:
    """The tool-result binding's payment-required answer (transports-v2/mcp.md, "Payment
    Required Signaling"): ``isError``, the ``PaymentRequired`` quoting ``quote`` with ``error``
    (``"<code>: <reason>"``) in ``structuredContent`` and as JSON in ``content[0].text``;
    ``settlement``, a failed ``SettleResponse``, in ``_meta["x402/payment-response"]``."""
    body = quote.payment_required(error).to_wire()
    meta = None if settlement is None else {PAYMENT_RESPONSE_META_KEY: settlement.to_wire()}
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(body))], structured_content=body, is_error=True, _meta=meta
    )


class PaidTools(Extension):
    """Charge for the tools named in ``prices`` (name → token base units), paid to
    ``config.payee`` in ``config.asset``.

    ``store``, ``chain`` (a ``ChainReader`` or a ready ``ChainCache``) and ``facilitator``
    (``None``: ``aep2`` only) are those of ``PaymentMiddleware`` and may be the same objects,
    so one store holds the HTTP and the MCP payments. ``descriptions``: the ``resource``
    description per tool. The store is opened and the token's EIP-712 domain read on the
    first priced call (``startup``); closing them stays the caller's. Raises ``ValueError``
    for a price that is not a positive integer.

    The capability it advertises (``capabilities.extensions["dev.aep2/paid-tools"]``, this
    project's identifier, not a registered one) lists the priced tools and their prices.
    """

    identifier = "dev.aep2/paid-tools"

    def __init__(
        self,
        *,
        config: GatewayConfig,
        store: PaymentStore,
        chain: ChainReader | ChainCache,
        prices: Mapping[str, int],
        facilitator: Facilitator | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        for name, amount in prices.items():
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                raise ValueError(f"prices[{name!r}]: {amount!r} is not a positive number of base units")
        self.config = config
        self.store = store
        self.chain = chain if isinstance(chain, ChainCache) else ChainCache(chain, max_staleness=config.max_chain_staleness)
        self.prices = dict(prices)
        self.facilitator = facilitator
        self.descriptions = dict(descriptions or {})
        self.aep2 = AEP2Scheme(config, self.store, self.chain)
        #: Schemes by name, in the order offered; filled by ``startup``.
        self.schemes: dict[str, Scheme] = {}
        self._started = False
        self._start_lock = asyncio.Lock()

    def settings(self) -> dict[str, Any]:
        """``{"x402Version": 2, "network", "asset", "prices": {tool: "<base units>"}}``."""
        prices = {name: str(amount) for name, amount in self.prices.items()}
        return {"x402Version": 2, "network": self.config.network, "asset": self.config.asset, "prices": prices}

    async def startup(self) -> None:
        """Open the store and set up the schemes (idempotent). Raises what
        ``gateway.payment.open_schemes`` or the store raise."""
        async with self._start_lock:
            if self._started:
                return
            await self.store.open()
            self.schemes = await open_schemes(self.config, self.store, self.facilitator, self.aep2)
            self._started = True

    def quote(self, name: str) -> Quote:
        """The quote of tool ``name`` (priced): every scheme's ``accepts`` entry, resource
        ``mcp://tool/<name>``."""
        amount = self.prices[name]
        resource = ResourceInfo(
            url=tool_resource_url(name),
            description=self.descriptions.get(name, f"Tool: {name}"),
            mime_type="application/json",
        )
        return Quote([scheme.requirements(amount) for scheme in self.schemes.values()], resource, self.config.chain_id)

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Gate ``tools/call`` (module docstring). Raises ``MCPError`` (``INTERNAL_ERROR``)
        when the gate cannot start (store or chain unreachable): that is not a payment error."""
        amount = self.prices.get(params.name)
        if amount is None:
            return await call_next(ctx)
        try:
            await self.startup()
        except Exception as exc:
            logger.error("paid tools cannot start: %s", exc)
            raise MCPError(code=INTERNAL_ERROR, message=f"{ErrorCode.CHAIN_UNAVAILABLE}: paid tools not started: {exc}") from exc
        quote = self.quote(params.name)
        raw = (params.meta or {}).get(PAYMENT_META_KEY)
        if raw is None:
            return payment_required_result(quote, f"{ErrorCode.PAYMENT_REQUIRED}: {params.name} costs {amount}")
        try:
            paid, scheme = self._read(raw, quote, params)
        except PaymentError as exc:
            return payment_required_result(quote, exc.wire)
        try:
            accepted = await scheme.verify(paid, amount)
        except PaymentError as exc:
            return payment_required_result(quote, exc.wire)
        except Exception as exc:  # chain, store or facilitator unreachable: a refusal, never the tool
            logger.warning("payment verification failed: %r", exc)
            code = ErrorCode.UNEXPECTED_VERIFY_ERROR if scheme.settles_before_response else ErrorCode.CHAIN_UNAVAILABLE
            return payment_required_result(quote, f"{code}: {type(exc).__name__}")
        try:
            result = await call_next(ctx)
        except BaseException:
            await scheme.release(accepted)
            raise
        if not isinstance(result, CallToolResult) or result.is_error:
            # Not served (an error, or the tool asks for more input first): nothing is charged.
            await scheme.release(accepted)
            return result
        receipt = await settle(scheme, paid, accepted)
        if not receipt.success:
            error = f"{receipt.error_reason}: {receipt.error_message or 'settlement failed'}"
            return payment_required_result(quote, error, settlement=receipt)
        meta = {**(result.meta or {}), PAYMENT_RESPONSE_META_KEY: receipt.to_wire()}
        return result.model_copy(update={"meta": meta})

    def _read(self, raw: Any, quote: Quote, params: CallToolRequestParams) -> tuple[PaidRequest, Scheme]:
        """``parse_payment`` of ``_meta["x402/payment"]`` for this call. Raises ``PaymentError``:
        ``invalid_payload`` when it is not an object, ``unsupported_version`` unless x402 v2."""
        if not isinstance(raw, dict):
            raise PaymentError(ErrorCode.INVALID_PAYLOAD, f"_meta[{PAYMENT_META_KEY!r}]: {type(raw).__name__}, not an object")
        version = raw.get("x402Version")
        if version != 2 or isinstance(version, bool):
            raise PaymentError(ErrorCode.UNSUPPORTED_VERSION, f"x402Version: {version!r} (MCP carries x402 v2 only)")
        binding = tool_call_binding(params.name, params.arguments)
        return parse_payment(
            raw, quote, self.config, self.schemes,
            method=binding.method, path_and_query=binding.path_and_query, body=binding.body,
        )
