"""Priced routes: which requests cost what.

A route is a method and a Starlette path pattern (``/forecast/{city}``) with a price in
token base units, fixed or computed from the request. Its optional discovery fields (input and
output schemas and examples, tags) describe it to agents and to x402 bazaar catalogs
(``gateway/bazaar.py``, ``gateway/discovery.py``).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Sequence, Union, get_args

from starlette.requests import Request
from starlette.routing import compile_path

__all__ = ["PricedRoute", "Price", "BodyType", "MAX_TAGS", "MAX_TAG_LENGTH"]

#: A fixed price in base units, or a function of the request returning one (sync or async).
Price = Union[int, Callable[[Request], Union[int, Awaitable[int]]]]

#: How a body method's request body is encoded (bazaar ``info.input.bodyType``).
BodyType = Literal["json", "form-data", "text"]

# Bazaar "Service Metadata on `resource`": catalogs drop tags beyond these bounds, so a
# route that sets more would be listed without them; refuse it when the route is built.
MAX_TAGS = 5
MAX_TAG_LENGTH = 32
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


@dataclass
class PricedRoute:
    """``method`` ``path`` costs ``price`` base units of the gateway's asset.

    ``description`` and ``mime_type`` go into the x402 ``resource`` and the discovery
    document. The remaining fields are optional and only describe the route (x402 bazaar
    extension, ``specs/extensions/bazaar.md``); none changes what is charged:

    - ``input_schema``: JSON Schema of the query parameters (GET, HEAD, DELETE: an object
      schema, ``{"properties": {"city": {"type": "string"}}, "required": ["city"]}``) or of
      the request body (POST, PUT, PATCH).
    - ``input_example``: an example of the same (query parameters as a dict, or the body).
    - ``body_type``: the body's encoding for body methods: ``"json"``, ``"form-data"`` or
      ``"text"``.
    - ``output_schema``: JSON Schema of the response body; ``output_example``: an example.
    - ``tags``: up to 5 short topical tags (printable ASCII, 1–32 characters, distinct
      ignoring case), published on the x402 ``resource`` next to the service name.
    - ``discoverable``: ``False`` leaves the route out of every discovery surface (bazaar
      extension, ``/discovery/resources``, ``/skill.md``, ``/skill.json``); it is still
      priced and still answers 402.

    Path parameters (``{city}``) need no schema: it is derived from the path pattern.
    Raises ``ValueError`` naming the field for a non-positive fixed price, a schema that is
    not an object or points outside itself (``$ref``/``$id`` not starting with ``#``: a
    catalog must not fetch it), an unknown ``body_type`` or an invalid tag.
    """

    method: str
    path: str
    price: Price
    description: str = ""
    mime_type: str = "application/json"
    input_schema: dict[str, Any] | None = None
    input_example: Any = None
    body_type: BodyType = "json"
    output_schema: dict[str, Any] | None = None
    output_example: Any = None
    tags: Sequence[str] = ()
    discoverable: bool = True
    _regex: object = field(init=False, repr=False)
    _param_regexes: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        if isinstance(self.price, int) and self.price <= 0:
            raise ValueError(f"price: {self.price} must be a positive number of base units")
        self._regex, _, convertors = compile_path(self.path)
        self._param_regexes = {name: convertor.regex for name, convertor in convertors.items()}
        for name in ("input_schema", "output_schema"):
            _check_schema(name, getattr(self, name))
        if self.body_type not in get_args(BodyType):
            raise ValueError(f"body_type: {self.body_type!r} is not one of {', '.join(get_args(BodyType))}")
        self.tags = _checked_tags(self.tags)

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and path is priced by this route."""
        return (method == self.method or (self.method == "GET" and method == "HEAD")) and bool(
            self._regex.match(path)  # type: ignore[attr-defined]
        )

    @property
    def path_params(self) -> dict[str, str]:
        """The path parameters in pattern order, each with the regular expression its
        Starlette convertor matches (``{"city": "[^/]+", "n": "[0-9]+"}``)."""
        return dict(self._param_regexes)

    def path_values(self, path: str) -> dict[str, str] | None:
        """The raw text of each path parameter in ``path`` (``{"city": "paris"}``), or
        ``None`` when ``path`` does not match the pattern."""
        match = self._regex.match(path)  # type: ignore[attr-defined]
        return None if match is None else {name: match.group(name) for name in self._param_regexes}

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


def _check_schema(name: str, schema: Any) -> None:
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{name}: a JSON Schema object is required, got {type(schema).__name__}")
    if _has_external_reference(schema):
        raise ValueError(f"{name}: $ref and $id must be same-document fragments starting with '#'")


def _has_external_reference(node: Any) -> bool:
    if isinstance(node, dict):
        return any(
            (key in ("$ref", "$id") and not (isinstance(value, str) and value.startswith("#")))
            or _has_external_reference(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return any(_has_external_reference(item) for item in node)
    return False


def _checked_tags(tags: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too; taken as-is it would become one tag per letter.
    if isinstance(tags, str):
        raise ValueError(f"tags: a sequence of strings is required, got the string {tags!r}")
    checked = tuple(tags)
    if len(checked) > MAX_TAGS:
        raise ValueError(f"tags: {len(checked)} given, at most {MAX_TAGS} are published")
    seen: set[str] = set()
    for tag in checked:
        if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH or not _PRINTABLE_ASCII.fullmatch(tag):
            raise ValueError(f"tags: {tag!r} is not 1-{MAX_TAG_LENGTH} printable ASCII characters")
        if tag.lower() in seen:
            raise ValueError(f"tags: {tag!r} repeats another tag (tags are compared ignoring case)")
        seen.add(tag.lower())
    return checked
