"""Priced routes: which requests cost what.

A route is a method and a Starlette path pattern (``/forecast/{city}``) with a price in
token base units, fixed or computed from the request.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Union

from starlette.requests import Request
from starlette.routing import compile_path

__all__ = ["PricedRoute", "Price"]

#: A fixed price in base units, or a function of the request returning one (sync or async).
Price = Union[int, Callable[[Request], Union[int, Awaitable[int]]]]


@dataclass
class PricedRoute:
    """``method`` ``path`` costs ``price`` base units of the gateway's asset.

    ``description`` and ``mime_type`` go into the x402 ``resource`` and the discovery
    document. Raises ``ValueError`` for a negative fixed price.
    """

    method: str
    path: str
    price: Price
    description: str = ""
    mime_type: str = "application/json"
    _regex: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        if isinstance(self.price, int) and self.price <= 0:
            raise ValueError(f"price: {self.price} must be a positive number of base units")
        self._regex, _, _ = compile_path(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and path is priced by this route."""
        return (method == self.method or (self.method == "GET" and method == "HEAD")) and bool(
            self._regex.match(path)  # type: ignore[attr-defined]
        )

    @property
    def fixed_price(self) -> int | None:
        """The price when it does not depend on the request, else ``None``."""
        return self.price if isinstance(self.price, int) else None

    async def price_of(self, request: Request) -> int:
        """The price of ``request`` in base units; raises ``ValueError`` for a non-positive price."""
        if isinstance(self.price, int):
            return self.price
        value = self.price(request)
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"price of {self.method} {self.path}: {value!r} is not a positive integer")
        return value
