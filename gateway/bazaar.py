"""The x402 bazaar discovery extension and the discovery resources list, as pure functions.

A priced route describes itself to catalogs in three places, all built here from its
``PricedRoute`` fields and nothing else (no config, no I/O), so the middleware can build
them once at start and tests can compare them with the x402 SDK:

- ``PaymentRequired.extensions["bazaar"]`` (``specs/extensions/bazaar.md``): ``info`` says
  how to call the route (method, query parameters or body, output), ``schema`` is the JSON
  Schema (draft 2020-12) a facilitator validates ``info`` against before cataloging, and
  ``routeTemplate`` (``/forecast/:city``) makes every concrete path one catalog entry.
- ``PaymentRequired.resource``: ``serviceName`` and ``tags`` go on the resource, not in the
  extension (bazaar.md "Service Metadata on `resource`").
- ``GET /discovery/resources`` (``specs/x402-specification-v2.md`` §8.1): one item per
  discoverable route, filtered and paginated by ``limit`` (1-100, default 20) and
  ``offset``.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping, NamedTuple, Sequence

from .pricing import PricedRoute

__all__ = [
    "BAZAAR",
    "BODY_METHODS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "QUERY_METHODS",
    "DiscoveryQuery",
    "bazaar_extension",
    "discovery_item",
    "discovery_resources",
    "parse_discovery_query",
    "resource_metadata",
    "route_template",
]

#: The extension's key in ``PaymentRequired.extensions``.
BAZAAR = "bazaar"
#: §8.1: ``limit`` defaults to 20 and may be 1 to 100.
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

#: Methods whose input the bazaar describes as query parameters, and as a body.
QUERY_METHODS = ("GET", "HEAD", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")

_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Starlette's own path-parameter syntax: {name} or {name:convertor}.
_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-zA-Z_][a-zA-Z0-9_]*)?}")
# bazaar.md: catalogs drop a serviceName that is not 1-32 printable ASCII characters.
_SERVICE_NAME = re.compile(r"[\x20-\x7e]{1,32}")
_COUNT = re.compile(r"[0-9]{1,9}")


def route_template(route: PricedRoute) -> str:
    """The route's path in the bazaar's ``:param`` syntax: ``/forecast/{city}`` gives
    ``/forecast/:city``, ``/items/{n:int}`` gives ``/items/:n``; a path without parameters
    is returned unchanged."""
    return _PATH_PARAM.sub(r":\1", route.path)


def bazaar_extension(route: PricedRoute, *, path: str | None = None) -> dict[str, Any]:
    """The value of ``PaymentRequired.extensions["bazaar"]`` for ``route`` (bazaar.md
    "PaymentRequired"): ``{"info": {"input": {...}, "output": {...}}, "schema": {...}}``
    plus ``"routeTemplate": "/forecast/:city"`` when the path has parameters.

    ``info.input`` is ``{"type": "http", "method", "queryParams"?}`` for GET, HEAD and
    DELETE (``queryParams`` is ``route.input_example``) or ``{"type": "http", "method",
    "bodyType", "body"}`` for POST, PUT and PATCH (``body`` is ``route.input_example``, or an
    empty object or string). ``info.output`` is ``{"type": "json"|"text"|"binary",
    "format": mime type, "example"?}``. ``schema`` validates ``info``: ``route.input_schema``
    is the schema of ``queryParams`` or ``body``, ``route.output_schema`` that of
    ``output.example``, and each path parameter is a string matching its convertor.

    ``path``, a concrete request path of the route (``/forecast/paris``), adds its values
    as ``info.input.pathParams``; without it the extension is the same for every request and
    can be built once. Raises ``ValueError`` naming ``discoverable``, ``method`` or ``path``
    for a route that is not discoverable, a method the bazaar cannot describe, or a path the
    route does not match.
    """
    if not route.discoverable:
        raise ValueError(f"discoverable: {route.method} {route.path} is not discoverable")
    if route.method not in QUERY_METHODS + BODY_METHODS:
        raise ValueError(f"method: {route.method} is not one of {', '.join(QUERY_METHODS + BODY_METHODS)}")

    info_input: dict[str, Any] = {"type": "http", "method": route.method}
    input_properties: dict[str, Any] = {"type": {"type": "string", "const": "http"}}
    required = ["type", "method"]
    if route.method in QUERY_METHODS:
        input_properties["method"] = {"type": "string", "enum": list(QUERY_METHODS)}
        input_properties["queryParams"] = {"type": "object", **(route.input_schema or {})}
        if route.input_example is not None:
            info_input["queryParams"] = route.input_example
    else:
        text = route.body_type == "text"
        info_input["bodyType"] = route.body_type
        info_input["body"] = route.input_example if route.input_example is not None else ("" if text else {})
        input_properties["method"] = {"type": "string", "enum": list(BODY_METHODS)}
        input_properties["bodyType"] = {"type": "string", "enum": ["json", "form-data", "text"]}
        input_properties["body"] = route.input_schema or {"type": "string" if text else "object"}
        required += ["bodyType", "body"]

    params = route.path_params
    if params:
        input_properties["pathParams"] = {
            "type": "object",
            "properties": {name: {"type": "string", "pattern": f"^(?:{regex})$"} for name, regex in params.items()},
            "required": list(params),
            "additionalProperties": False,
        }
    if path is not None:
        # The raw segments, not the convertors' values: the schema describes the URL's text.
        values = route.path_values(path)
        if values is None:
            raise ValueError(f"path: {path!r} does not match {route.path}")
        if values:
            info_input["pathParams"] = values

    info_output: dict[str, Any] = {"type": _output_type(route.mime_type), "format": route.mime_type}
    if route.output_example is not None:
        info_output["example"] = route.output_example

    extension: dict[str, Any] = {
        "info": {"input": info_input, "output": info_output},
        "schema": {
            "$schema": _JSON_SCHEMA_DIALECT,
            "type": "object",
            "properties": {
                "input": {
                    "type": "object",
                    "properties": input_properties,
                    "required": required,
                    # The spec's own schemas close ``input``: a catalog then refuses an
                    # ``info`` that grew fields this route never declared.
                    "additionalProperties": False,
                },
                "output": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "format": {"type": "string"},
                        "example": route.output_schema or {},
                    },
                    "required": ["type"],
                },
            },
            "required": ["input"],
        },
    }
    if params:
        extension["routeTemplate"] = route_template(route)
    # The route's schemas and examples are shared dicts: a caller editing its quote must
    # not edit the route.
    return copy.deepcopy(extension)


def resource_metadata(route: PricedRoute, service: str) -> dict[str, Any]:
    """The service metadata to add to ``PaymentRequired.resource`` next to ``url``,
    ``description`` and ``mimeType`` (bazaar.md "Service Metadata on `resource`"):
    ``{"serviceName": service, "tags": [...]}``. ``serviceName`` is left out when
    ``service`` is not 1-32 printable ASCII characters (a catalog would drop it), ``tags``
    when the route has none. Empty for a route that is not discoverable."""
    if not route.discoverable:
        return {}
    metadata: dict[str, Any] = {}
    if _SERVICE_NAME.fullmatch(service):
        metadata["serviceName"] = service
    if route.tags:
        metadata["tags"] = list(route.tags)
    return metadata


def discovery_item(
    resource: str,
    accepts: Sequence[Mapping[str, Any]],
    route: PricedRoute,
    service: str,
    last_updated: int,
) -> dict[str, Any]:
    """One ``items`` entry of ``GET /discovery/resources`` (§8.2): ``{"resource",
    "type": "http", "x402Version": 2, "accepts", "lastUpdated", "metadata": {"provider",
    "method"}}``, plus the fields the x402 SDK's catalog client reads: ``description``,
    ``mimeType``, ``serviceName``, ``tags`` (as in ``resource_metadata``) and
    ``extensions: {"bazaar": bazaar_extension(route)}``.

    ``resource`` is the route's absolute URL (for a route with path parameters, the base
    URL joined with ``route_template(route)``); ``accepts`` the v2 ``PaymentRequirements``
    wire dicts a 402 for it would offer; ``last_updated`` Unix seconds. Raises
    ``ValueError`` naming ``accepts`` or ``last_updated``, or as ``bazaar_extension``.
    """
    if not accepts:
        raise ValueError("accepts: at least one payment requirement is required")
    if isinstance(last_updated, bool) or not isinstance(last_updated, int) or last_updated < 0:
        raise ValueError(f"last_updated: {last_updated!r} is not a Unix time in seconds")
    extension = bazaar_extension(route)
    item: dict[str, Any] = {
        "resource": resource,
        "type": "http",
        "x402Version": 2,
        "accepts": [dict(requirement) for requirement in accepts],
        "lastUpdated": last_updated,
        "metadata": {"provider": service, "method": route.method},
        "description": route.description,
        "mimeType": route.mime_type,
    }
    item.update(resource_metadata(route, service))
    item["extensions"] = {BAZAAR: extension}
    return item


class DiscoveryQuery(NamedTuple):
    """The query of ``GET /discovery/resources``, as ``discovery_resources`` keywords."""

    type_: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    pay_to: str | None = None
    scheme: str | None = None
    network: str | None = None
    extension: str | None = None


def parse_discovery_query(params: Mapping[str, str]) -> DiscoveryQuery:
    """Read ``type``, ``limit``, ``offset`` (§8.1) and the bazaar.md filters ``payTo``,
    ``scheme``, ``network`` and ``extensions`` from a query string's parameters (Starlette's
    ``request.query_params``). Other parameters are ignored; an empty filter is no filter.
    Raises ``ValueError`` naming the parameter for a ``limit`` outside 1-100 or an
    ``offset`` that is not a non-negative integer (answer it 400)."""

    def text(name: str) -> str | None:
        return params.get(name) or None

    def count(name: str, default: int) -> int:
        value = params.get(name)
        if value is None or value == "":
            return default
        if not _COUNT.fullmatch(value):
            raise ValueError(f"{name}: {value!r} is not a non-negative integer")
        return int(value)

    query = DiscoveryQuery(
        type_=text("type"),
        limit=count("limit", DEFAULT_LIMIT),
        offset=count("offset", 0),
        pay_to=text("payTo"),
        scheme=text("scheme"),
        network=text("network"),
        extension=text("extensions"),
    )
    _check_page(query.limit, query.offset)
    return query


def discovery_resources(
    items: Sequence[Mapping[str, Any]],
    *,
    type_: str | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    pay_to: str | None = None,
    scheme: str | None = None,
    network: str | None = None,
    extension: str | None = None,
) -> dict[str, Any]:
    """The ``GET /discovery/resources`` answer (§8.1): ``{"x402Version": 2, "items": [...],
    "pagination": {"limit", "offset", "total"}}``.

    ``items`` (from ``discovery_item``) are kept in order when their ``type`` equals
    ``type_``, some ``accepts`` entry has the given ``payTo``, ``scheme`` and ``network``
    (each compared exactly, one entry need not match all), and their ``extensions`` hold
    the key ``extension``; ``None`` filters nothing. ``total`` counts the items kept; the
    page is ``offset`` to ``offset + limit`` of them, empty past the end. Raises
    ``ValueError`` naming ``limit`` (not 1-100) or ``offset`` (negative).
    """
    _check_page(limit, offset)

    def kept(item: Mapping[str, Any]) -> bool:
        accepts = item.get("accepts") or []
        return (
            (type_ is None or item.get("type") == type_)
            and all(
                wanted is None or any(entry.get(key) == wanted for entry in accepts)
                for key, wanted in (("payTo", pay_to), ("scheme", scheme), ("network", network))
            )
            and (extension is None or extension in (item.get("extensions") or {}))
        )

    matching = [item for item in items if kept(item)]
    return {
        "x402Version": 2,
        "items": [dict(item) for item in matching[offset : offset + limit]],
        "pagination": {"limit": limit, "offset": offset, "total": len(matching)},
    }


def _check_page(limit: int, offset: int) -> None:
    # bool is an int to Python; a True limit is a caller's bug, not a page of one.
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: {limit!r} is not an integer from 1 to {MAX_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset: {offset!r} is not a non-negative integer")


def _output_type(mime_type: str) -> str:
    media = mime_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media.startswith("text/"):
        return "text"
    return "binary"
