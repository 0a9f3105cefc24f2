"""The 402 quote on the wire: v2 ``PAYMENT-REQUIRED`` header and v1 body, validated with the
official x402 SDK's models; unpriced routes pass through; discovery lists routes and prices."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from gateway_fixtures import FORECAST_PRICE, PAYEE, PROCESSOR, SENTIMENT_PRICE
from x402.schemas import PaymentRequired
from x402.schemas.v1 import PaymentRequiredV1

pytestmark = pytest.mark.chain


def test_unpaid_priced_route_answers_402_with_v2_header(gateway_server, deployment):
    response = httpx.get(f"{gateway_server.url}/v1/forecast/paris?days=3")
    assert response.status_code == 402
    raw = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"], validate=True))
    assert raw["x402Version"] == 2
    assert raw["error"].startswith("payment_required")
    assert raw["resource"]["url"] == f"{gateway_server.url}/v1/forecast/paris?days=3"
    by_scheme = {entry["scheme"]: entry for entry in raw["accepts"]}
    # `exact` first: a client that takes accepts[0] gets the scheme every x402 client knows.
    assert list(by_scheme) == ["exact", "aep2"]
    for entry in raw["accepts"]:
        assert entry["network"] == "eip155:31337"
        assert entry["amount"] == str(FORECAST_PRICE) and isinstance(entry["amount"], str)
        assert entry["payTo"] == PAYEE
        assert entry["asset"] == deployment.token
        assert isinstance(entry["maxTimeoutSeconds"], int)
    assert by_scheme["exact"]["extra"]["name"] == "USD Coin"
    assert by_scheme["exact"]["extra"]["version"] == "2"
    assert by_scheme["aep2"]["extra"]["settlement"] == deployment.settlement
    assert by_scheme["aep2"]["extra"]["processor"] == PROCESSOR

    # The official SDK's pydantic model accepts it and reads the same offers.
    model = PaymentRequired.model_validate(raw)
    assert model.x402_version == 2
    assert [(a.scheme, a.network, a.amount, a.pay_to, a.asset) for a in model.accepts] == [
        ("exact", "eip155:31337", "1000", PAYEE, deployment.token),
        ("aep2", "eip155:31337", "1000", PAYEE, deployment.token),
    ]
    assert model.resource is not None and model.resource.url.endswith("/v1/forecast/paris?days=3")
    # The headers are readable from a browser (CORS exposes them).
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]


def test_402_body_is_the_v1_form(gateway_server, deployment):
    response = httpx.post(f"{gateway_server.url}/v1/sentiment", json={"text": "good"})
    assert response.status_code == 402
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    model = PaymentRequiredV1.model_validate(body)
    assert model.x402_version == 1 and body["error"] == "payment_required"
    assert [(a.scheme, a.max_amount_required, a.pay_to, a.asset, a.resource) for a in model.accepts] == [
        ("exact", str(SENTIMENT_PRICE), PAYEE, deployment.token, f"{gateway_server.url}/v1/sentiment"),
        ("aep2", str(SENTIMENT_PRICE), PAYEE, deployment.token, f"{gateway_server.url}/v1/sentiment"),
    ]
    assert all(a.network == "eip155:31337" and a.max_timeout_seconds > 0 for a in model.accepts)
    assert model.accepts[0].extra == {"name": "USD Coin", "version": "2"}
    # Chain 31337 has no v1 name: its CAIP-2 id stands in (a named chain: test_gateway_x402_v1).
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-SIGNATURE" in response.headers["vary"]


def test_computed_price_is_quoted_per_request(gateway_server):
    cheap = httpx.get(f"{gateway_server.url}/v1/primes?n=100")
    dear = httpx.get(f"{gateway_server.url}/v1/primes?n=100000")
    amounts = [
        PaymentRequired.model_validate(
            json.loads(base64.b64decode(r.headers["PAYMENT-REQUIRED"]))
        ).accepts[0].amount
        for r in (cheap, dear)
    ]
    assert amounts == ["501", "1500"]


def test_unpriced_route_passes_through_without_payment_headers(gateway_server):
    response = httpx.get(f"{gateway_server.url}/health")
    assert response.status_code == 200 and response.json() == {"ok": True}
    for name in ("PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"):
        assert name not in response.headers
    # A method the route does not price is the app's business (405), not a 402.
    response = httpx.delete(f"{gateway_server.url}/v1/forecast/paris")
    assert response.status_code == 405 and "PAYMENT-REQUIRED" not in response.headers


def test_skill_json_lists_routes_and_prices(gateway_server, deployment):
    doc = httpx.get(f"{gateway_server.url}/skill.json").json()
    assert doc["x402Version"] == 2 and doc["network"] == "eip155:31337"
    assert doc["payTo"] == PAYEE and doc["asset"] == deployment.token
    assert doc["schemes"] == ["exact", "aep2"]
    assert doc["aep2"]["settlement"] == deployment.settlement and doc["aep2"]["chainId"] == 31337
    # The processor an intent must name, and the grace the contract gives served mandates.
    assert doc["aep2"]["processor"] == PROCESSOR
    assert doc["aep2"]["settlementWindow"] == deployment.settlement_window
    routes = {(r["method"], r["path"]): r["price"] for r in doc["routes"]}
    assert routes == {
        ("GET", "/v1/forecast/{city}"): str(FORECAST_PRICE),
        ("POST", "/v1/sentiment"): str(SENTIMENT_PRICE),
        ("GET", "/v1/primes"): None,
    }


def test_skill_md_lists_routes_and_prices(gateway_server, deployment):
    response = httpx.get(f"{gateway_server.url}/skill.md")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/markdown")
    text = response.text
    assert f"| GET | `/v1/forecast/{{city}}` | {FORECAST_PRICE} |" in text
    assert f"| POST | `/v1/sentiment` | {SENTIMENT_PRICE} |" in text
    assert "| GET | `/v1/primes` | per request |" in text
    assert PAYEE in text and deployment.token in text and "eip155:31337" in text
    assert f"naming `processor` = `{PROCESSOR}`" in text
