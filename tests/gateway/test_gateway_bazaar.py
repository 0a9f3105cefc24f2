"""The x402 bazaar extension and ``/discovery/resources`` (``gateway/bazaar.py``), the route
fields they read (``gateway/pricing.py``) and the skill documents (``gateway/discovery.py``).

What we emit is checked against the x402 SDK itself: a facilitator's extraction
(``extract_discovery_info``) accepts it, the SDK's own ``declare_discovery_extension`` gives
the same description for the same route, and the SDK's catalog client reads our listing.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from gateway_fixtures import OFFLINE_DEPLOYMENT, PAYEE, PROCESSOR
from hypothesis import given
from hypothesis import strategies as st
from x402.extensions.bazaar import (
    ListDiscoveryResourcesParams,
    OutputConfig,
    bazaar_resource_server_extension,
    declare_discovery_extension,
    extract_discovery_info,
    validate_discovery_extension,
    validate_discovery_extension_spec,
    with_bazaar,
)
from x402.extensions.bazaar.types import parse_discovery_extension
from x402.http import FacilitatorConfig
from x402.http.facilitator_client import HTTPFacilitatorClientSync
from x402.schemas import PaymentPayload, PaymentRequired

from gateway.bazaar import (
    BAZAAR,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    DiscoveryQuery,
    bazaar_extension,
    discovery_item,
    discovery_resources,
    parse_discovery_query,
    resource_metadata,
    route_template,
)
from gateway.config import GatewayConfig
from gateway.discovery import discovery_json, discovery_markdown
from gateway.pricing import PricedRoute

BASE_URL = "https://gateway.example"
SERVICE = "Example Weather"

FORECAST = PricedRoute(
    "GET",
    "/v1/forecast/{city}",
    1_000,
    "3-day forecast for a city",
    input_schema={"properties": {"days": {"type": "integer", "minimum": 1, "maximum": 3}}},
    input_example={"days": 3},
    output_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    output_example={"city": "paris", "days": [{"high": 21}]},
    tags=["weather", "forecast"],
)
SENTIMENT = PricedRoute(
    "POST",
    "/v1/sentiment",
    2_000,
    "Sentiment of a short English text",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    input_example={"text": "what a lovely day"},
    output_example={"score": 0.9},
    tags=["nlp"],
)
PRIMES = PricedRoute("GET", "/v1/primes", lambda request: 500, "Primes up to n")
ECHO = PricedRoute("PUT", "/v1/echo/{n:int}", 10, "Echo", "text/plain", body_type="text", input_example="hello")
HIDDEN = PricedRoute("GET", "/v1/internal", 5, "Partners only", discoverable=False)
ROUTES = [FORECAST, SENTIMENT, PRIMES, ECHO]


def requirement(scheme: str = "aep2", network: str = "eip155:31337", pay_to: str = PAYEE) -> dict[str, Any]:
    return {
        "scheme": scheme,
        "network": network,
        "amount": "1000",
        "asset": OFFLINE_DEPLOYMENT.token,
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": {},
    }


def payment_required(route: PricedRoute, url: str, path: str | None = None) -> dict[str, Any]:
    """A 402 body as the lead wires it: our metadata on ``resource``, our extension."""
    return {
        "x402Version": 2,
        "error": "payment required",
        "resource": {
            "url": url,
            "description": route.description,
            "mimeType": route.mime_type,
            **resource_metadata(route, SERVICE),
        },
        "accepts": [requirement()],
        "extensions": {BAZAAR: bazaar_extension(route, path=path)},
    }


def echoed_payment(required: dict[str, Any]) -> PaymentPayload:
    """What an x402 client sends back: the resource and extensions echoed (bazaar.md
    "Client Behavior"), one of the accepts chosen."""
    quote = PaymentRequired.model_validate(required)
    return PaymentPayload(
        x402_version=2,
        resource=quote.resource,
        accepted=quote.accepts[0],
        payload={"mandate": "..."},
        extensions=quote.extensions,
    )


# -- PricedRoute's discovery fields -----------------------------------------------------------


def test_positional_constructor_and_defaults_unchanged():
    route = PricedRoute("get", "/a", 7, "desc", "text/csv")
    given = (route.method, route.path, route.price, route.description, route.mime_type)
    assert given == ("GET", "/a", 7, "desc", "text/csv")
    assert route.input_schema is None and route.input_example is None and route.body_type == "json"
    assert route.output_schema is None and route.output_example is None
    assert route.tags == () and route.discoverable is True


def test_tags_at_the_bounds_pass():
    tags = [chr(ord("a") + i) * 32 for i in range(5)]
    assert PricedRoute("GET", "/a", 1, tags=tags).tags == tuple(tags)
    assert PricedRoute("GET", "/a", 1, tags=[" ~"]).tags == (" ~",)


@pytest.mark.parametrize(
    "tags",
    [
        ["a", "b", "c", "d", "e", "f"],  # six: one over
        ["x" * 33],  # one character over
        [""],
        ["météo"],  # not ASCII
        ["line\nbreak"],
        ["tab\t"],
        ["Weather", "weather"],  # same ignoring case
        "weather",  # a bare string, not a sequence of tags
        [3],
    ],
)
def test_RevertIf_tag_is_invalid(tags):
    with pytest.raises(ValueError, match="^tags"):
        PricedRoute("GET", "/a", 1, tags=tags)


@pytest.mark.parametrize("name", ["input_schema", "output_schema"])
@pytest.mark.parametrize(
    "schema",
    [
        ["not", "an", "object"],
        {"$ref": "https://evil.example/schema.json"},
        {"properties": {"a": {"$ref": "file:///etc/passwd"}}},
        {"allOf": [{"$id": "other.json"}]},
    ],
)
def test_RevertIf_schema_is_not_a_self_contained_object(name, schema):
    with pytest.raises(ValueError, match=f"^{name}"):
        PricedRoute("GET", "/a", 1, **{name: schema})


def test_same_document_references_pass():
    schema = {"$defs": {"city": {"type": "string"}}, "properties": {"city": {"$ref": "#/$defs/city"}}}
    assert PricedRoute("GET", "/a", 1, input_schema=schema).input_schema == schema


def test_RevertIf_body_type_unknown():
    with pytest.raises(ValueError, match="^body_type"):
        PricedRoute("POST", "/a", 1, body_type="xml")  # type: ignore[arg-type]


def test_path_params_and_values():
    assert FORECAST.path_params == {"city": "[^/]+"}
    assert ECHO.path_params == {"n": "[0-9]+"}
    assert PRIMES.path_params == {}
    assert FORECAST.path_values("/v1/forecast/paris") == {"city": "paris"}
    assert ECHO.path_values("/v1/echo/42") == {"n": "42"}
    assert ECHO.path_values("/v1/echo/abc") is None
    assert PRIMES.path_values("/v1/primes") == {}


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/forecast/{city}", "/v1/forecast/:city"),
        ("/items/{n:int}/{rest:path}", "/items/:n/:rest"),
        ("/{a}/{b_2:float}", "/:a/:b_2"),
        ("/v1/primes", "/v1/primes"),
    ],
)
def test_route_template(path, template):
    assert route_template(PricedRoute("GET", path, 1)) == template


# -- the extension's shape --------------------------------------------------------------------


def test_query_route_extension():
    extension = bazaar_extension(FORECAST)
    assert extension["info"] == {
        "input": {"type": "http", "method": "GET", "queryParams": {"days": 3}},
        "output": {"type": "json", "format": "application/json", "example": FORECAST.output_example},
    }
    assert extension["routeTemplate"] == "/v1/forecast/:city"
    schema = extension["schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["input"]
    inputs = schema["properties"]["input"]
    assert inputs["required"] == ["type", "method"] and inputs["additionalProperties"] is False
    assert inputs["properties"]["method"] == {"type": "string", "enum": ["GET", "HEAD", "DELETE"]}
    assert inputs["properties"]["queryParams"] == {"type": "object", **FORECAST.input_schema}  # type: ignore[dict-item]
    assert inputs["properties"]["pathParams"]["properties"] == {"city": {"type": "string", "pattern": "^(?:[^/]+)$"}}
    assert schema["properties"]["output"]["properties"]["example"] == FORECAST.output_schema


def test_body_route_extension():
    extension = bazaar_extension(SENTIMENT)
    assert extension["info"]["input"] == {
        "type": "http",
        "method": "POST",
        "bodyType": "json",
        "body": {"text": "what a lovely day"},
    }
    inputs = extension["schema"]["properties"]["input"]
    assert inputs["required"] == ["type", "method", "bodyType", "body"]
    assert inputs["properties"]["method"]["enum"] == ["POST", "PUT", "PATCH"]
    assert inputs["properties"]["body"] == SENTIMENT.input_schema
    assert "routeTemplate" not in extension  # a static path is its own catalog key


def test_defaults_without_schemas_or_examples():
    bare_get = bazaar_extension(PRIMES)
    assert bare_get["info"] == {
        "input": {"type": "http", "method": "GET"},
        "output": {"type": "json", "format": "application/json"},
    }
    assert bazaar_extension(PricedRoute("POST", "/a", 1))["info"]["input"]["body"] == {}
    text = bazaar_extension(PricedRoute("PATCH", "/a", 1, body_type="text"))
    assert text["info"]["input"]["body"] == ""
    assert text["schema"]["properties"]["input"]["properties"]["body"] == {"type": "string"}


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        ("application/json", "json"),
        ("application/problem+json; charset=utf-8", "json"),
        ("text/plain", "text"),
        ("text/csv", "text"),
        ("image/png", "binary"),
    ],
)
def test_output_type_follows_the_mime_type(mime, kind):
    output = bazaar_extension(PricedRoute("GET", "/a", 1, mime_type=mime))["info"]["output"]
    assert output == {"type": kind, "format": mime}


def test_extension_does_not_share_the_route_dicts():
    extension = bazaar_extension(SENTIMENT)
    extension["schema"]["properties"]["input"]["properties"]["body"]["required"].append("lang")
    extension["info"]["input"]["body"]["text"] = "edited"
    assert SENTIMENT.input_schema == {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    assert SENTIMENT.input_example == {"text": "what a lovely day"}


def test_concrete_path_adds_path_params():
    extension = bazaar_extension(FORECAST, path="/v1/forecast/paris")
    assert extension["info"]["input"]["pathParams"] == {"city": "paris"}
    assert "pathParams" not in bazaar_extension(PRIMES, path="/v1/primes")["info"]["input"]


@pytest.mark.parametrize(("route", "path"), [(FORECAST, "/v1/weather/paris"), (ECHO, "/v1/echo/x"), (PRIMES, "/v1")])
def test_RevertIf_path_does_not_match(route, path):
    with pytest.raises(ValueError, match="^path"):
        bazaar_extension(route, path=path)


def test_RevertIf_route_is_not_discoverable():
    with pytest.raises(ValueError, match="^discoverable"):
        bazaar_extension(HIDDEN)


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "CONNECT"])
def test_RevertIf_method_cannot_be_described(method):
    with pytest.raises(ValueError, match="^method"):
        bazaar_extension(PricedRoute(method, "/a", 1))


# -- what a facilitator does with it (the x402 SDK) -------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_sdk_validates_info_against_our_schema(route):
    path = {FORECAST.path: "/v1/forecast/paris", ECHO.path: "/v1/echo/7"}.get(route.path)
    for extension in (bazaar_extension(route), bazaar_extension(route, path=path)):
        assert validate_discovery_extension_spec(extension).valid
        parsed = parse_discovery_extension(json.loads(json.dumps(extension)))  # as it travels
        assert validate_discovery_extension(parsed).errors == []


def test_sdk_extracts_a_dynamic_get_route_from_the_echoed_payment():
    required = payment_required(FORECAST, f"{BASE_URL}/v1/forecast/paris?days=3", path="/v1/forecast/paris")
    discovered = extract_discovery_info(echoed_payment(required), PaymentRequired.model_validate(required).accepts[0])
    assert discovered is not None
    # One catalog entry for every city: the template replaces the concrete path.
    assert discovered.resource_url == f"{BASE_URL}/v1/forecast/:city"
    assert discovered.route_template == "/v1/forecast/:city"
    assert (discovered.method, discovered.x402_version) == ("GET", 2)
    assert discovered.description == FORECAST.description and discovered.mime_type == "application/json"
    assert discovered.service_name == SERVICE and discovered.tags == ["weather", "forecast"]
    info = discovered.discovery_info
    assert info.input.query_params == {"days": 3}  # type: ignore[union-attr]
    assert info.input.path_params == {"city": "paris"}  # type: ignore[union-attr]
    assert info.output is not None and info.output.example == FORECAST.output_example


def test_sdk_extracts_a_body_route_from_plain_dicts():
    required = payment_required(SENTIMENT, f"{BASE_URL}/v1/sentiment")
    payload = {
        "x402Version": 2,
        "resource": required["resource"],
        "accepted": required["accepts"][0],
        "payload": {},
        "extensions": required["extensions"],
    }
    discovered = extract_discovery_info(payload, required["accepts"][0])
    assert discovered is not None
    assert discovered.resource_url == f"{BASE_URL}/v1/sentiment" and discovered.route_template is None
    assert discovered.method == "POST" and discovered.tags == ["nlp"]
    assert discovered.discovery_info.input.body == {"text": "what a lovely day"}  # type: ignore[union-attr]
    assert discovered.discovery_info.input.body_type == "json"  # type: ignore[union-attr]


def test_sdk_refuses_an_example_that_contradicts_its_schema():
    # The schema is enforced, not decorative: a payee whose example breaks it is not cataloged.
    wrong = PricedRoute("GET", "/a", 1, input_schema=FORECAST.input_schema, input_example={"days": 9})
    required = payment_required(wrong, f"{BASE_URL}/a")
    assert extract_discovery_info(echoed_payment(required), required["accepts"][0]) is None


def test_examples_of_every_route_fit_their_own_schemas():
    for route in ROUTES:
        assert validate_discovery_extension(parse_discovery_extension(bazaar_extension(route))).valid


def sdk_declaration(route: PricedRoute, path: str) -> dict[str, Any]:
    """The SDK's own extension for the same route, enriched as its server would at request
    time (method from the request, ``routeTemplate`` and ``pathParams`` from the pattern)."""
    declared = declare_discovery_extension(
        input=route.input_example,
        input_schema=route.input_schema,
        body_type=None if route.method in ("GET", "HEAD", "DELETE") else route.body_type,
        output=OutputConfig(example=route.output_example, schema=route.output_schema),
    )[BAZAAR]
    context = SimpleNamespace(
        method=route.method,
        route_pattern=route_template(route),
        adapter=SimpleNamespace(get_path=lambda: path),
    )
    enriched: dict[str, Any] = bazaar_resource_server_extension.enrich_declaration(declared, context)
    return enriched


@pytest.mark.parametrize(
    ("route", "path"),
    [(FORECAST, "/v1/forecast/paris"), (SENTIMENT, "/v1/sentiment")],
    ids=["GET dynamic", "POST body"],
)
def test_equivalent_to_the_sdk_declaration(route, path):
    ours = bazaar_extension(route, path=path)
    theirs = sdk_declaration(route, path)
    assert ours["info"]["input"] == theirs["info"]["input"]
    assert ours.get("routeTemplate") == theirs.get("routeTemplate")
    assert ours["info"]["output"]["type"] == theirs["info"]["output"]["type"] == "json"
    assert ours["info"]["output"]["example"] == theirs["info"]["output"]["example"]
    our_input = ours["schema"]["properties"]["input"]
    their_input = theirs["schema"]["properties"]["input"]
    assert our_input["required"] == their_input["required"]
    assert our_input["additionalProperties"] is their_input["additionalProperties"] is False
    for key in ("type", "method", "queryParams", "bodyType", "body"):
        assert our_input["properties"].get(key) == their_input["properties"].get(key), key
    # Ours names each path parameter; the SDK only says "an object".
    assert set(our_input["properties"]) - set(their_input["properties"]) <= {"pathParams"}
    # The response schema sits on output.example in both (the SDK starts from "an object").
    their_example = theirs["schema"]["properties"]["output"]["properties"]["example"]
    assert {**their_example, **ours["schema"]["properties"]["output"]["properties"]["example"]} == their_example
    # And each side's info satisfies the other side's schema.
    assert validate_discovery_extension(parse_discovery_extension({**ours, "schema": theirs["schema"]})).valid
    assert validate_discovery_extension(parse_discovery_extension({**theirs, "schema": ours["schema"]})).valid


@given(segment=st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=40))
def testFuzz_any_matching_path_validates(segment):
    extension = bazaar_extension(FORECAST, path=f"/v1/forecast/{segment}")
    assert extension["info"]["input"]["pathParams"] == {"city": segment}
    assert validate_discovery_extension(parse_discovery_extension(extension)).valid


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(query=st.dictionaries(st.text(max_size=8), _json, max_size=4), output=_json.filter(lambda v: v is not None))
def testFuzz_schema_free_examples_validate(query, output):
    route = PricedRoute("GET", "/a", 1, input_example=query, output_example=output)
    assert validate_discovery_extension(parse_discovery_extension(bazaar_extension(route))).valid


# -- service metadata on the resource ---------------------------------------------------------


def test_resource_metadata():
    assert resource_metadata(FORECAST, SERVICE) == {"serviceName": SERVICE, "tags": ["weather", "forecast"]}
    assert resource_metadata(PRIMES, SERVICE) == {"serviceName": SERVICE}
    assert resource_metadata(PRIMES, "x" * 32) == {"serviceName": "x" * 32}
    # Names a catalog would drop are left out rather than sent to be dropped.
    assert resource_metadata(FORECAST, "x" * 33) == {"tags": ["weather", "forecast"]}
    assert resource_metadata(PRIMES, "Météo") == {}
    assert resource_metadata(PRIMES, "") == {}
    assert resource_metadata(HIDDEN, SERVICE) == {}


# -- /discovery/resources ---------------------------------------------------------------------


def items() -> list[dict[str, Any]]:
    return [
        discovery_item(f"{BASE_URL}{route_template(route)}", [requirement()], route, SERVICE, 1_703_123_456)
        for route in ROUTES
    ]


def test_discovery_item_shape():
    item = discovery_item(f"{BASE_URL}/v1/forecast/:city", [requirement()], FORECAST, SERVICE, 1_703_123_456)
    assert item == {
        "resource": f"{BASE_URL}/v1/forecast/:city",
        "type": "http",
        "x402Version": 2,
        "accepts": [requirement()],
        "lastUpdated": 1_703_123_456,
        "metadata": {"provider": SERVICE, "method": "GET"},
        "description": FORECAST.description,
        "mimeType": "application/json",
        "serviceName": SERVICE,
        "tags": ["weather", "forecast"],
        "extensions": {"bazaar": bazaar_extension(FORECAST)},
    }


def test_discovery_item_copies_accepts():
    accepts = [requirement()]
    item = discovery_item(BASE_URL, accepts, PRIMES, SERVICE, 0)
    accepts[0]["amount"] = "1"
    assert item["accepts"][0]["amount"] == "1000"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"accepts": []}, "accepts"),
        ({"last_updated": -1}, "last_updated"),
        ({"last_updated": 1.5}, "last_updated"),
        ({"last_updated": True}, "last_updated"),
        ({"route": HIDDEN}, "discoverable"),
    ],
)
def test_RevertIf_discovery_item_is_invalid(kwargs, name):
    arguments: dict[str, Any] = dict(
        resource=BASE_URL, accepts=[requirement()], route=PRIMES, service=SERVICE, last_updated=0
    )
    with pytest.raises(ValueError, match=f"^{name}"):
        discovery_item(**{**arguments, **kwargs})


def test_discovery_resources_defaults():
    answer = discovery_resources(items())
    assert answer["x402Version"] == 2
    assert answer["items"] == items()
    assert answer["pagination"] == {"limit": DEFAULT_LIMIT, "offset": 0, "total": 4}


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [(1, 0, [0]), (2, 1, [1, 2]), (MAX_LIMIT, 3, [3]), (1, 4, []), (5, 100, []), (MAX_LIMIT, 0, [0, 1, 2, 3])],
)
def test_discovery_resources_pages(limit, offset, expected):
    everything = items()
    answer = discovery_resources(everything, limit=limit, offset=offset)
    assert answer["items"] == [everything[i] for i in expected]
    assert answer["pagination"] == {"limit": limit, "offset": offset, "total": 4}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": MAX_LIMIT + 1}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": False}, "offset"),
        ({"offset": "1"}, "offset"),
    ],
)
def test_RevertIf_page_is_invalid(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        discovery_resources(items(), **kwargs)


def test_discovery_resources_filters():
    everything = items()
    elsewhere = requirement("exact", "eip155:8453", "0x" + "1" * 40)
    other = discovery_item(f"{BASE_URL}/other", [elsewhere], PRIMES, SERVICE, 0)
    mcp = {**other, "type": "mcp", "extensions": {}}
    listing = [*everything, other, mcp]

    def resources(**kwargs: Any) -> list[str]:
        answer = discovery_resources(listing, limit=MAX_LIMIT, **kwargs)
        assert answer["pagination"]["total"] == len(answer["items"])
        return [item["resource"] for item in answer["items"]]

    assert resources(type_="http") == [item["resource"] for item in [*everything, other]]
    assert resources(type_="mcp") == [mcp["resource"]]
    assert resources(type_="a2a") == []
    assert resources(pay_to=PAYEE, type_="http") == [item["resource"] for item in everything]
    assert resources(scheme="exact") == [other["resource"], mcp["resource"]]
    assert resources(network="eip155:8453", type_="http") == [other["resource"]]
    assert resources(extension="bazaar") == [item["resource"] for item in [*everything, other]]
    assert resources(extension="payment-identifier") == []
    # Filtered totals paginate too.
    assert discovery_resources(listing, type_="http", limit=2, offset=4)["pagination"] == {
        "limit": 2,
        "offset": 4,
        "total": 5,
    }


@given(total=st.integers(0, 250), limit=st.integers(1, MAX_LIMIT), offset=st.integers(0, 300))
def testFuzz_pages_are_slices_with_the_full_total(total, limit, offset):
    listing = [{"resource": str(i), "type": "http", "accepts": []} for i in range(total)]
    answer = discovery_resources(listing, limit=limit, offset=offset)
    assert answer["items"] == listing[offset : offset + limit]
    assert answer["pagination"] == {"limit": limit, "offset": offset, "total": total}


@given(total=st.integers(0, 250), limit=st.integers(1, MAX_LIMIT))
def testFuzz_walking_the_pages_lists_everything_once(total, limit):
    listing = [{"resource": str(i), "type": "http", "accepts": []} for i in range(total)]
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = discovery_resources(listing, limit=limit, offset=offset)
        seen += page["items"]
        offset += limit
        if offset >= page["pagination"]["total"]:
            break
    assert seen == listing


@given(limit=st.integers().filter(lambda n: not 1 <= n <= MAX_LIMIT))
def testFuzz_RevertIf_limit_out_of_range(limit):
    with pytest.raises(ValueError, match="^limit"):
        discovery_resources([], limit=limit)


# -- the query string -------------------------------------------------------------------------


def test_parse_discovery_query():
    assert parse_discovery_query({}) == DiscoveryQuery(None, DEFAULT_LIMIT, 0)
    assert parse_discovery_query({"type": "http", "limit": "100", "offset": "0"}) == DiscoveryQuery("http", 100, 0)
    assert parse_discovery_query(
        {"payTo": PAYEE, "scheme": "aep2", "network": "eip155:31337", "extensions": "bazaar", "limit": "1", "x": "y"}
    ) == DiscoveryQuery(None, 1, 0, PAYEE, "aep2", "eip155:31337", "bazaar")
    # An empty value is an absent one.
    assert parse_discovery_query({"type": "", "limit": "", "offset": ""}) == DiscoveryQuery()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "1e2"}, "limit"),
        ({"limit": "²"}, "limit"),  # a digit to str.isdigit, not a number
        ({"limit": "9" * 400}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "abc"}, "offset"),
        ({"offset": "0x10"}, "offset"),
    ],
)
def test_RevertIf_query_is_invalid(params, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        parse_discovery_query(params)


def test_sdk_catalog_client_reads_our_listing():
    """The SDK's bazaar client lists our resources: its query parameters are the ones we
    read, and it parses every field we answer with."""
    listing = items()
    seen: list[httpx.URL] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        assert request.url.path == "/discovery/resources"
        try:
            query = parse_discovery_query(request.url.params)
        except ValueError as exc:
            return httpx.Response(400, json={"error": str(exc)})
        return httpx.Response(200, json=discovery_resources(listing, **query._asdict()))

    http = httpx.Client(transport=httpx.MockTransport(serve))
    client = with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=BASE_URL, http_client=http)))
    page = client.extensions.bazaar.list_resources(
        ListDiscoveryResourcesParams(type="http", pay_to=PAYEE, scheme="aep2", extensions="bazaar", limit=1, offset=1)
    )
    assert seen[0].params["payTo"] == PAYEE
    assert page.x402_version == 2
    assert (page.pagination.limit, page.pagination.offset, page.pagination.total) == (1, 1, 4)
    [resource] = page.items
    assert resource.resource == f"{BASE_URL}/v1/sentiment" and resource.type == "http"
    assert resource.x402_version == 2 and resource.accepts == [requirement()]
    assert resource.service_name == SERVICE and resource.tags == ["nlp"]
    assert resource.description == SENTIMENT.description and resource.mime_type == "application/json"
    assert resource.extensions == {"bazaar": bazaar_extension(SENTIMENT)}
    with pytest.raises(ValueError, match="400"):
        client.extensions.bazaar.list_resources(ListDiscoveryResourcesParams(limit=500))


# -- /skill.json and /skill.md ----------------------------------------------------------------


CONFIG = GatewayConfig(
    chain_id=31337,
    payee=PAYEE,
    asset=OFFLINE_DEPLOYMENT.token,
    settlement=OFFLINE_DEPLOYMENT.settlement,
    processor=PROCESSOR,
)


def test_skill_json_describes_how_to_call_each_route():
    doc = discovery_json(CONFIG, [*ROUTES, HIDDEN], SERVICE)
    routes = {(r["method"], r["path"]): r for r in doc["routes"]}
    assert ("GET", HIDDEN.path) not in routes
    forecast = routes[("GET", FORECAST.path)]
    assert forecast["tags"] == ["weather", "forecast"]
    assert forecast["inputSchema"] == FORECAST.input_schema and forecast["inputExample"] == {"days": 3}
    assert forecast["outputSchema"] == FORECAST.output_schema
    assert forecast["outputExample"] == FORECAST.output_example
    assert forecast["bodyType"] is None and forecast["price"] == "1000"
    assert routes[("POST", SENTIMENT.path)]["bodyType"] == "json"
    assert routes[("PUT", ECHO.path)]["bodyType"] == "text"
    primes = routes[("GET", PRIMES.path)]
    assert primes["price"] is None and primes["tags"] == [] and primes["inputSchema"] is None
    json.dumps(doc)  # served as JSON


def test_skill_md_describes_how_to_call_each_route():
    text = discovery_markdown(CONFIG, [*ROUTES, HIDDEN], SERVICE)
    assert HIDDEN.path not in text
    assert "## How to call them" in text
    assert "### GET `/v1/forecast/{city}`" in text and "Tags: `weather`, `forecast`" in text
    assert "Query parameters (JSON Schema):" in text and '"maximum": 3' in text
    assert "### POST `/v1/sentiment`" in text and "Body, json (JSON Schema):" in text
    assert "### PUT `/v1/echo/{n:int}`" in text and 'Example body:\n\n```json\n"hello"\n```' in text
    assert "### GET `/v1/primes`" not in text  # nothing to add to the table's row
    assert "`GET /discovery/resources`" in text


def test_skill_md_without_details_has_no_details_section():
    text = discovery_markdown(CONFIG, [PRIMES], SERVICE)
    assert "## How to call them" not in text and "| GET | `/v1/primes` | per request |" in text
