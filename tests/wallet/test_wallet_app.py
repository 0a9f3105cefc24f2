"""The wallet's HTTP API and its CLI, over real HTTP: the agent/owner split, the Intent-Pay path,
problem details, limits, idempotency, the OpenAPI document, ``python -m wallet audit verify``
and a scan of every response and log line for secrets.

Most tests use httpx's ``ASGITransport`` in-process; one serves the app with uvicorn on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from aep2.x402 import decode_header
from wallet import audit, webhooks
from uvicorn.logging import AccessFormatter

from wallet.app import create_app, install_log_redaction
from wallet.db import Database
from wallet.keys import OwnerKeystore, Sealer, session_key_aad
from wallet.service import WalletService, wallet_intents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_fixtures import FORECAST_PRICE, OFFLINE_DEPLOYMENT, PAYEE, PROCESSOR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAST_KDF: dict[str, Any] = {"kdf": "scrypt", "iterations": 2**10}  # tests only
PASSWORD = "correct horse battery staple"
OWNER_TOKEN = "owner-token-" + "x" * 32
URL = "http://gateway.test/v1/forecast/paris"
DRAFT = {"budget": 100_000, "purpose": "forecasts", "durationSeconds": 3600, "perPaymentCap": 5_000}


def requirement(amount: int = FORECAST_PRICE) -> dict[str, Any]:
    return {
        "scheme": "aep2",
        "network": OFFLINE_DEPLOYMENT.network,
        "asset": OFFLINE_DEPLOYMENT.token,
        "amount": str(amount),
        "payTo": PAYEE,
        "maxTimeoutSeconds": 300,
        "extra": {"settlement": OFFLINE_DEPLOYMENT.settlement, "processor": PROCESSOR, "minDeadlineSeconds": 300},
    }


def owner() -> dict[str, str]:
    return {"Authorization": f"Bearer {OWNER_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["type"].endswith(code) and body["title"]
    return body


class Recorder:
    """Every response body the tests saw, for the secret scan."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.bodies.append(response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items()))


@pytest.fixture
async def wallet(wallet_db, tmp_path) -> AsyncIterator[WalletService]:
    sealer = Sealer(os.urandom(32))
    hooks = webhooks.Webhooks(wallet_db, sealer=sealer, allow_private_targets=True)
    service = WalletService(
        wallet_db,
        owner=OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF),
        sealer=sealer,
        deployment=OFFLINE_DEPLOYMENT,
        processor=PROCESSOR,
        webhooks=hooks,
    )
    await service.record_deposit(10**9)
    yield service
    await hooks.aclose()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(wallet, recorder) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(wallet, owner_token=OWNER_TOKEN)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://wallet.test", event_hooks={"response": [recorder]}
        ) as http:
            yield http


async def new_agent(client: httpx.AsyncClient, name: str = "agent") -> tuple[str, str]:
    created = await client.post("/v1/agents", json={"name": name}, headers=owner())
    assert created.status_code == 201, created.text
    body = created.json()
    return body["agentId"], body["apiKey"]


async def agent_with_intent(client: httpx.AsyncClient, name: str = "agent") -> tuple[str, str, str]:
    agent_id, key = await new_agent(client, name)
    drafted = await client.post("/v1/intents", json=DRAFT, headers=bearer(key))
    assert drafted.status_code == 201 and drafted.json()["status"] == "pending_approval", drafted.text
    intent_id = drafted.json()["id"]
    approved = await client.post(f"/v1/intents/{intent_id}/approve", headers=owner())
    assert approved.status_code == 200 and approved.json()["status"] == "active", approved.text
    return agent_id, key, intent_id


# ---------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------


async def test_agent_keys_and_the_owner_token_never_open_each_others_routes(client):
    _agent_id, key = await new_agent(client)
    assert (await client.get("/v1/intents", headers=bearer(key))).status_code == 200

    for method, path in [("POST", "/v1/agents"), ("PUT", "/v1/rules"), ("POST", "/v1/kill-switch"),
                         ("GET", "/v1/audit/verify"), ("POST", "/v1/intents/int_x/approve")]:
        refused = await client.request(method, path, json={"name": "x"}, headers=bearer(key))
        body = problem(refused, 401, "unauthenticated")
        assert refused.headers["www-authenticate"] == "Bearer" and key not in refused.text, body

    problem(await client.get("/v1/intents", headers=owner()), 401, "unauthenticated")
    problem(await client.post("/v1/payments/authorize", json={}, headers=owner()), 401, "unauthenticated")
    problem(await client.get("/v1/intents"), 401, "unauthenticated")
    problem(await client.get("/v1/intents", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")
    problem(await client.post("/v1/agents", json={"name": "x"}, headers=bearer(OWNER_TOKEN + "y")), 401, "unauthenticated")


async def test_the_owner_rotates_an_agent_key_over_http(client):
    agent_id, old = await new_agent(client)
    problem(await client.post(f"/v1/agents/{agent_id}/rotate-key", headers=bearer(old)), 401, "unauthenticated")
    rotated = await client.post(f"/v1/agents/{agent_id}/rotate-key", json={"graceSeconds": 30}, headers=owner())
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store", rotated.text
    new = rotated.json()["apiKey"]
    for key in (old, new):  # the old one during its grace period
        assert (await client.get("/v1/intents", headers=bearer(key))).status_code == 200
    now = await client.post(f"/v1/agents/{agent_id}/rotate-key", headers=owner())
    problem(await client.get("/v1/intents", headers=bearer(new)), 401, "unauthenticated")
    assert (await client.get("/v1/intents", headers=bearer(now.json()["apiKey"]))).status_code == 200
    bad = await client.post(f"/v1/agents/{agent_id}/rotate-key", json={"graceSeconds": -1}, headers=owner())
    assert problem(bad, 422, "invalid_body")["field"] == "graceSeconds"
    problem(await client.post("/v1/agents/agt_nope/rotate-key", headers=owner()), 404, "not_found")


# ---------------------------------------------------------------------------------------------
# Intent-Pay over HTTP
# ---------------------------------------------------------------------------------------------


async def test_draft_approve_authorize_returns_a_header_and_idempotency_replays_it(client, wallet):
    agent_id, key, intent_id = await agent_with_intent(client)
    listed = (await client.get("/v1/intents", headers=bearer(key))).json()["intents"]
    assert [i["id"] for i in listed] == [intent_id] and listed[0]["remaining"] == DRAFT["budget"]

    request = {"requirement": requirement(), "url": URL, "method": "POST", "body": base64.b64encode(b"{}").decode()}
    headers = bearer(key) | {"Idempotency-Key": "call-1"}
    first = await client.post("/v1/payments/authorize", json=request, headers=headers)
    assert first.status_code == 200, first.text
    paid = first.json()
    assert paid["outcome"] == "allow" and paid["intentId"] == intent_id and paid["amount"] == FORECAST_PRICE
    assert paid["rule"] == "default" and not paid["replayed"]
    payload = decode_header(paid["header"], header="PAYMENT-SIGNATURE")
    assert payload["accepted"]["payTo"] == PAYEE

    again = (await client.post("/v1/payments/authorize", json=request, headers=headers)).json()
    assert again["replayed"] and again["header"] == paid["header"] and again["paymentId"] == paid["paymentId"]
    assert len(await wallet.payments()) == 1
    other = request | {"url": URL + "?city=rome"}
    body = problem(await client.post("/v1/payments/authorize", json=other, headers=headers), 422, "idempotency_conflict")
    assert body["field"] == "idempotency_key"
    clash = request | {"idempotencyKey": "call-2"}
    problem(await client.post("/v1/payments/authorize", json=clash, headers=headers), 422, "invalid_request")

    # Another agent cannot confirm this payment; its own agent can, once or twice.
    _other_id, other_key = await new_agent(client, "other")
    problem(await client.post(f"/v1/payments/{paid['paymentId']}/confirm", json={}, headers=bearer(other_key)),
            404, "not_found")
    receipt = {"success": True, "extra": {"paymentId": paid["paymentId"]}}
    for _ in range(2):
        confirmed = await client.post(f"/v1/payments/{paid['paymentId']}/confirm", json=receipt, headers=bearer(key))
        assert confirmed.status_code == 200 and confirmed.json()["status"] == "settled", confirmed.text
    problem(await client.post(f"/v1/payments/{paid['paymentId']}/release", headers=bearer(key)), 409, "invalid_state")

    second = await client.post("/v1/payments/authorize", json=request | {"url": URL + "/2"}, headers=bearer(key))
    released = await client.post(f"/v1/payments/{second.json()['paymentId']}/release", json={"reason": "timeout"},
                                 headers=bearer(key))
    assert released.status_code == 200 and released.json()["status"] == "released", released.text
    assert (await client.get("/v1/audit/verify", headers=owner())).json()["ok"] is True


async def test_a_policy_denial_is_a_403_problem_naming_the_rule(client):
    agent_id, key, _intent_id = await agent_with_intent(client)
    rules = await client.put("/v1/rules", json={"agentId": agent_id, "perTransactionCap": 10}, headers=owner())
    assert rules.status_code == 200 and rules.json()["perTransactionCap"] == 10, rules.text
    denied = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                               headers=bearer(key))
    body = problem(denied, 403, "policy_denied")
    assert body["rule"] == "per_transaction_cap" and body["decisionId"] and "header" not in body

    bad = await client.put("/v1/rules", json={"timezone": "Mars/Olympus"}, headers=owner())
    assert problem(bad, 422, "invalid_body")["field"] == "timezone"


async def test_a_standing_rule_set_over_http_approves_the_next_draft(client):
    agent_id, key = await new_agent(client, "auto")
    rule = {"maxBudget": DRAFT["budget"], "maxDurationSeconds": DRAFT["durationSeconds"]}
    rules = await client.put("/v1/rules", json={"agentId": agent_id, "autoApprove": rule}, headers=owner())
    assert rules.status_code == 200 and rules.json()["autoApprove"]["maxBudget"] == DRAFT["budget"], rules.text
    drafted = await client.post("/v1/intents", json=DRAFT, headers=bearer(key))
    assert drafted.status_code == 201 and drafted.json()["status"] == "active", drafted.text
    bigger = await client.post("/v1/intents", json=DRAFT | {"budget": DRAFT["budget"] + 1}, headers=bearer(key))
    assert bigger.json()["status"] == "pending_approval"


async def test_review_waits_for_the_owner_then_the_agent_polls_the_header(client):
    agent_id, key, _intent_id = await agent_with_intent(client)
    await client.put("/v1/rules", json={"reviewAbove": 10}, headers=owner())
    asked = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                              headers=bearer(key))
    assert asked.status_code == 202 and asked.json()["outcome"] == "review", asked.text
    review_id = asked.json()["reviewId"]
    assert (await client.get(f"/v1/reviews/{review_id}", headers=bearer(key))).status_code == 202
    approved = await client.post(f"/v1/reviews/{review_id}/approve", headers=owner())
    assert approved.status_code == 200 and "header" not in approved.json(), approved.text
    polled = await client.get(f"/v1/reviews/{review_id}", headers=bearer(key))
    assert polled.status_code == 200 and polled.json()["header"], polled.text


async def test_polling_an_expired_review_is_410(client, wallet):
    wallet.review_ttl_seconds = 0.3
    _agent_id, key, _intent_id = await agent_with_intent(client)
    await client.put("/v1/rules", json={"reviewAbove": 10}, headers=owner())
    asked = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                              headers=bearer(key))
    review_id = asked.json()["reviewId"]
    await asyncio.sleep(0.4)
    assert problem(await client.get(f"/v1/reviews/{review_id}", headers=bearer(key)), 410, "review_expired")["field"]
    problem(await client.post(f"/v1/reviews/{review_id}/approve", headers=owner()), 410, "review_expired")


async def test_the_kill_switch_over_http_stops_spending(client):
    agent_id, key, intent_id = await agent_with_intent(client)
    engaged = await client.post("/v1/kill-switch", json={"agentId": agent_id, "reason": "test"}, headers=owner())
    assert engaged.status_code == 200 and engaged.json()["revokedIntents"] == [intent_id], engaged.text
    denied = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                               headers=bearer(key))
    assert problem(denied, 403, "policy_denied")["rule"] == "kill_switch_agent"
    released = await client.request("DELETE", "/v1/kill-switch", json={"agentId": agent_id}, headers=owner())
    assert released.status_code == 200 and released.json()["engaged"] is False
    problem(await client.post(f"/v1/intents/{intent_id}/approve", headers=owner()), 409, "invalid_state")
    problem(await client.post("/v1/intents/int_nope/deny", headers=owner()), 404, "not_found")
    problem(await client.post(f"/v1/intents/{intent_id}/register", headers=owner()), 409, "invalid_state")

    drafted = [(await client.post("/v1/intents", json=DRAFT, headers=bearer(key))).json()["id"] for _ in range(2)]
    denied_intent = await client.post(f"/v1/intents/{drafted[0]}/deny", json={"reason": "no"}, headers=owner())
    assert denied_intent.status_code == 200 and denied_intent.json()["status"] == "denied", denied_intent.text
    await client.post(f"/v1/intents/{drafted[1]}/approve", headers=owner())
    revoked = await client.post(f"/v1/intents/{drafted[1]}/revoke", headers=owner())
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked", revoked.text


async def test_the_owner_reads_rules_reviews_payments_decisions(client):
    agent_id, key, _intent_id = await agent_with_intent(client)
    await client.put("/v1/rules", json={"reviewAbove": 1_500}, headers=owner())
    await client.put("/v1/rules", json={"agentId": agent_id, "perTransactionCap": 3_000}, headers=owner())
    assert (await client.get("/v1/rules", headers=owner())).json()["reviewAbove"] == 1_500
    own = (await client.get("/v1/rules", params={"agentId": agent_id}, headers=owner())).json()
    assert (own["perTransactionCap"], own["reviewAbove"], own["agentId"]) == (3_000, None, agent_id)
    paid = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                             headers=bearer(key))
    await client.post("/v1/payments/authorize", json={"requirement": requirement(4_000), "url": URL},
                      headers=bearer(key))  # denied: over the agent's cap
    await client.put("/v1/rules", json={"agentId": agent_id, "reviewAbove": 10}, headers=owner())
    asked = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL + "/r"},
                              headers=bearer(key))

    pending = (await client.get("/v1/reviews", headers=owner())).json()["reviews"]
    assert [r["id"] for r in pending] == [asked.json()["reviewId"]] and pending[0]["expiresAt"]
    assert (await client.get("/v1/reviews", params={"status": "approved"}, headers=owner())).json()["reviews"] == []
    assert len((await client.get("/v1/reviews", params={"status": "all"}, headers=owner())).json()["reviews"]) == 1
    bad = await client.get("/v1/reviews", params={"status": "maybe"}, headers=owner())
    assert problem(bad, 422, "invalid_request")["field"] == "status"
    payments = (await client.get("/v1/payments", headers=owner())).json()["payments"]
    assert [p["paymentId"] for p in payments] == [paid.json()["paymentId"]] and "header" not in payments[0]
    assert (await client.get("/v1/payments", params={"agentId": "agt_other"}, headers=owner())).json() == {"payments": []}
    decisions = (await client.get("/v1/decisions", params={"agentId": agent_id}, headers=owner())).json()["decisions"]
    assert [d["outcome"] for d in decisions] == ["allow", "deny", "review"]
    for path in ("/v1/rules", "/v1/reviews", "/v1/payments", "/v1/decisions", "/v1/webhooks"):
        problem(await client.get(path, headers=bearer(key)), 401, "unauthenticated")


async def test_webhook_endpoints_over_http_show_the_secret_once(client, wallet):
    created = await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks", "eventTypes": ["payment.settled"]},
                                headers=owner())
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store", created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["eventTypes"] == ["payment.settled"]
    listed = await client.get("/v1/webhooks", headers=owner())
    assert [e["id"] for e in listed.json()["endpoints"]] == [endpoint["id"]]
    assert endpoint["secret"] not in listed.text and "secret" not in listed.json()["endpoints"][0]

    refused = await client.post("/v1/webhooks", json={"url": "http://u:pw@127.0.0.1/x", "eventTypes": ["payment.settled"]},
                                headers=owner())
    assert problem(refused, 422, "invalid_request")["field"] == "url" and "pw" not in refused.json()["detail"]
    wrong_type = await client.post("/v1/webhooks", json={"url": "https://a.example/x", "eventTypes": ["nope"]},
                                   headers=owner())
    assert problem(wrong_type, 422, "invalid_request")["field"] == "eventTypes"
    strict = _strict(wallet)
    transport = httpx.ASGITransport(app=create_app(strict, owner_token=OWNER_TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://wallet.test") as http:
        metadata = await http.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest", "eventTypes": ["payment.settled"]},
                                   headers=owner())
        assert problem(metadata, 422, "invalid_request")["field"] == "url"
    await strict.webhooks.aclose()

    assert (await client.delete(f"/v1/webhooks/{endpoint['id']}", headers=owner())).status_code == 204
    assert (await client.get("/v1/webhooks", headers=owner())).json() == {"endpoints": []}
    problem(await client.delete(f"/v1/webhooks/{endpoint['id']}", headers=owner()), 404, "not_found")


def _strict(wallet: WalletService) -> WalletService:
    """The same service with a ``Webhooks`` that keeps the default: no private targets."""
    strict = webhooks.Webhooks(wallet.db, sealer=wallet.sealer)
    return WalletService(wallet.db, owner=wallet.owner, sealer=wallet.sealer, deployment=wallet.deployment,
                         processor=wallet.processor, webhooks=strict)


# ---------------------------------------------------------------------------------------------
# Bad input and limits
# ---------------------------------------------------------------------------------------------


async def test_bad_bodies_are_422_problems_naming_the_field(client):
    _agent_id, key = await new_agent(client)
    malformed = await client.post("/v1/intents", content=b"{not json", headers=bearer(key))
    assert problem(malformed, 422, "invalid_body")["field"] == "body"
    wrong_type = await client.post("/v1/intents", json=DRAFT | {"budget": "lots"}, headers=bearer(key))
    assert problem(wrong_type, 422, "invalid_body")["field"] == "budget"
    unknown = await client.post("/v1/intents", json=DRAFT | {"budgett": 1}, headers=bearer(key))
    assert problem(unknown, 422, "invalid_body")["field"] == "budgett"
    missing = await client.post("/v1/intents", json={"budget": 1}, headers=bearer(key))
    assert problem(missing, 422, "invalid_body")["field"] == "purpose"
    not_b64 = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL, "body": "@@"},
                                headers=bearer(key))
    assert problem(not_b64, 422, "invalid_body")["field"] == "body"
    service_level = await client.post("/v1/intents", json=DRAFT | {"payees": ["0xnope"]}, headers=bearer(key))
    assert problem(service_level, 422, "invalid_request")["field"] == "payees"
    no_intent = await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL},
                                  headers=bearer(key))
    problem(no_intent, 409, "no_matching_intent")
    bad_requirement = await client.post("/v1/payments/authorize", json={"requirement": {"scheme": 1}, "url": URL},
                                        headers=bearer(key))
    assert problem(bad_requirement, 422, "invalid_request")["field"].startswith("requirement")
    problem(await client.get("/v1/nowhere"), 404, "not_found")
    problem(await client.delete("/v1/intents", headers=bearer(key)), 405, "method_not_allowed")


async def test_a_body_over_64_kib_is_413_with_or_without_content_length(client):
    _agent_id, key = await new_agent(client)
    big = b'{"name": "' + b"a" * (64 * 1024) + b'"}'
    problem(await client.post("/v1/agents", content=big, headers=owner()), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    problem(await client.post("/v1/intents", content=chunks(), headers=bearer(key)), 413, "payload_too_large")


async def test_each_credential_has_its_own_rate_limit_with_retry_after(wallet):
    app = create_app(wallet, owner_token=OWNER_TOKEN, rate_limit="3/minute")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wallet.test") as client:
        agents = [await new_agent(client, name) for name in ("a", "b")]  # two owner calls
        _a, key_a = agents[0]
        _b, key_b = agents[1]
        for _ in range(3):
            assert (await client.get("/v1/intents", headers=bearer(key_a))).status_code == 200
        limited = await client.get("/v1/intents", headers=bearer(key_a))
        problem(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert (await client.get("/v1/intents", headers=bearer(key_b))).status_code == 200
        assert (await client.get("/v1/audit/verify", headers=owner())).status_code == 200  # owner: call 3 of 3
        problem(await client.get("/v1/audit/verify", headers=owner()), 429, "rate_limited")


async def test_failed_authentications_brake_even_correct_credentials_until_the_window_passes(wallet):
    # A window long enough that a loaded machine cannot let it pass before the checks are done.
    app = create_app(wallet, owner_token=OWNER_TOKEN, auth_failures="3/6 seconds")

    def from_client(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(host, 4000))
        return httpx.AsyncClient(transport=transport, base_url="http://wallet.test")

    async with from_client("203.0.113.1") as guesser, from_client("203.0.113.2") as bystander:
        (_a, key_a), (_b, key_b) = await new_agent(bystander, "a"), await new_agent(bystander, "b")
        prefix_and_id, secret = key_a.split(".")
        wrong = [c for c in "0123" if c != secret[-1]][:3]  # three guesses, none of them the secret
        for c in wrong:  # guesses at agent a's secret
            problem(await guesser.get("/v1/intents", headers=bearer(f"{prefix_and_id}.{secret[:-1]}{c}")),
                    401, "unauthenticated")
        braked = await guesser.get("/v1/intents", headers=bearer(key_a))  # the right key, too late
        problem(braked, 429, "rate_limited")
        assert 1 <= int(braked.headers["retry-after"]) <= 6
        problem(await guesser.get("/v1/intents", headers=bearer(key_b)), 429, "rate_limited")  # the client
        problem(await bystander.get("/v1/intents", headers=bearer(key_a)), 429, "rate_limited")  # the key id
        assert (await bystander.get("/v1/intents", headers=bearer(key_b))).status_code == 200

        for _ in range(3):  # the owner token: counted per client only
            problem(await bystander.get("/v1/audit/verify", headers=bearer(OWNER_TOKEN + "?")), 401, "unauthenticated")
        problem(await bystander.get("/v1/audit/verify", headers=owner()), 429, "rate_limited")
        async with from_client("203.0.113.3") as other:
            assert (await other.get("/v1/audit/verify", headers=owner())).status_code == 200

        await asyncio.sleep(6.1)  # the window passes
        assert (await guesser.get("/v1/intents", headers=bearer(key_a))).status_code == 200
        assert (await bystander.get("/v1/audit/verify", headers=owner())).status_code == 200


async def test_openapi_lists_every_path_with_its_security(client):
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert {
        "/v1/intents", "/v1/payments/authorize", "/v1/payments/execute", "/v1/payments/{payment_id}/confirm",
        "/v1/payments/{payment_id}/release", "/v1/reviews/{review_id}", "/v1/agents",
        "/v1/intents/{intent_id}/approve", "/v1/intents/{intent_id}/deny", "/v1/intents/{intent_id}/revoke",
        "/v1/kill-switch", "/v1/rules", "/v1/reviews/{review_id}/approve", "/v1/reviews/{review_id}/deny",
        "/v1/audit/verify", "/v1/agents/{agent_id}/rotate-key", "/v1/intents/{intent_id}/register",
        "/v1/payments", "/v1/decisions", "/v1/reviews", "/v1/webhooks", "/v1/webhooks/{endpoint_id}",
        "/v1/payments/mine",
    } == set(document["paths"])
    assert document["paths"]["/v1/agents"]["post"]["security"] == [{"ownerToken": []}]
    assert document["paths"]["/v1/intents"]["get"]["security"] == [{"agentKey": []}]
    assert document["paths"]["/v1/payments/mine"]["get"]["security"] == [{"agentKey": []}]
    draft = document["components"]["schemas"]["DraftIntent"]
    assert {"budget", "perPaymentCap", "durationSeconds"} <= set(draft["properties"])


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


async def test_no_response_or_log_line_carries_a_key_or_a_full_api_key(client, wallet, recorder, caplog):
    caplog.set_level(logging.DEBUG)
    create_app(wallet, owner_token=OWNER_TOKEN)  # installs the redaction on caplog's handler too
    agent_id, key, intent_id = await agent_with_intent(client)
    logging.getLogger("wallet.test").warning("a careless line with %s and %s", key, wallet.owner.account.key.hex())
    for i in range(3):
        await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": f"{URL}/{i}"},
                          headers=bearer(key))
    await client.post("/v1/payments/authorize", json={"requirement": requirement(), "url": URL}, headers=bearer(key + "x"))
    await client.post("/v1/kill-switch", headers=owner())

    async with wallet.db.snapshot() as conn:
        row = (await conn.execute(wallet_intents.select().where(wallet_intents.c.id == intent_id))).one()
    session = wallet.sealer.open_session_key(row.sealed_session_key, aad=session_key_aad(intent_id=intent_id, agent_id=agent_id))
    owner_key = wallet.owner.account.key.hex().removeprefix("0x")
    secrets = {
        "owner key": owner_key,
        "session key": session.to_hex().removeprefix("0x"),
        "session key (decimal)": str(session.secret),
        "api key": key,
        "api key secret": key.split(".", 1)[1],
        "owner token": OWNER_TOKEN,
    }
    creation = [b for b in recorder.bodies if '"apiKey"' in b]
    assert len(creation) == 1 and key in creation[0]  # shown once, at creation
    others = [b for b in recorder.bodies if b not in creation]
    assert len(others) == 7  # draft, approve, 3 authorizations, a 401, the kill switch
    logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "careless line" in logs
    for name, secret in secrets.items():
        for text in others:
            assert secret.lower() not in text.lower(), f"{name} in a response"
        assert secret.lower() not in logs.lower(), f"{name} in the log"
    assert logging.getLogger("aiosqlite").getEffectiveLevel() >= logging.INFO


def test_uvicorn_access_lines_are_redacted_and_still_format():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s', use_colors=False))
    access = logging.getLogger("wallet.test.access")
    access.addHandler(handler)
    access.propagate = False
    try:
        install_log_redaction()
        key = "aep2_0123456789abcdef." + "s" * 43
        access.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/x?k={key}", "1.1", 200)
    finally:
        access.removeHandler(handler)
    line = stream.getvalue()
    assert '"GET /v1/x?k=aep2_0123456789abcdef.[redacted] HTTP/1.1" 200' in line and "s" * 43 not in line


# ---------------------------------------------------------------------------------------------
# The kill switch thrown mid-run, over HTTP
# ---------------------------------------------------------------------------------------------


async def kill_mid_run(http: httpx.AsyncClient, agents: list[tuple[str, str]], *, one_agent: bool) -> set[str]:
    """Each agent (``(id, key)``) asks for payments in a loop over ``http``; once 20 are signed
    the owner engages the switch (global, or for the first agent; no revocation: the switch
    alone must stop them). Every call begun after that answer must be a 403 naming the
    switch. Returns the stopped agents' ids."""
    stopped = {agents[0][0]} if one_agent else {a for a, _k in agents}
    engaged = asyncio.Event()
    signed: list[str] = []
    late: list[tuple[str, httpx.Response]] = []

    async def spend(agent_id: str, key: str) -> None:
        for n in range(10_000):
            begun_after = engaged.is_set()
            answer = await http.post("/v1/payments/authorize", headers=bearer(key),
                                     json={"requirement": requirement(1), "url": f"{URL}/{agent_id}/{n}"})
            assert answer.status_code in (200, 403), answer.text
            if answer.status_code == 200:
                signed.append(answer.json()["paymentId"])
            if begun_after:
                late.append((agent_id, answer))
                if agent_id in stopped or len(late) > 20:
                    return
        raise AssertionError("the spend loop never saw the switch")

    tasks = [asyncio.create_task(spend(agent_id, key)) for agent_id, key in agents]
    while len(signed) < 20:
        await asyncio.sleep(0.001)
    body = {"reason": "mid-run", "revoke": False} | ({"agentId": agents[0][0]} if one_agent else {})
    assert (await http.post("/v1/kill-switch", json=body, headers=owner())).status_code == 200
    engaged.set()
    await asyncio.gather(*tasks)
    rule = "kill_switch_agent" if one_agent else "kill_switch_global"
    for agent_id, answer in late:
        if agent_id in stopped:
            assert problem(answer, 403, "policy_denied")["rule"] == rule
    return stopped


async def assert_signed_before_the_switch(db: Database, stopped: set[str], one_agent: bool) -> None:
    """The audit chain's order: every signature of a stopped agent precedes the switch."""
    async with db.snapshot() as conn:
        records = await audit.records(conn, limit=100_000)
    [switch_at] = [r.seq for r in records if r.action == "killswitch.engaged"]
    signed = [(r.seq, r.payload["agent_id"]) for r in records if r.action == "payment.authorized"]
    assert any(agent in stopped for _seq, agent in signed)
    assert all(seq < switch_at for seq, agent in signed if agent in stopped)
    if one_agent:
        assert any(seq > switch_at for seq, agent in signed if agent not in stopped)


@pytest.mark.parametrize("one_agent", [False, True])
async def test_kill_switch_mid_run_over_asgi_stops_every_later_signature(wallet, one_agent):
    app = create_app(wallet, owner_token=OWNER_TOKEN, rate_limit="100000/second")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wallet.test") as http:
            agents = [(await agent_with_intent(http, f"a{n}"))[:2] for n in range(4)]
            stopped = await kill_mid_run(http, agents, one_agent=one_agent)
    await assert_signed_before_the_switch(wallet.db, stopped, one_agent)


def test_kill_switch_mid_run_over_uvicorn_stops_every_later_signature(serve, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.sqlite'}"
    keystore = OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF)
    sealer = Sealer(os.urandom(32))

    def service(db: Database) -> WalletService:
        return WalletService(db, owner=keystore, sealer=sealer, deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR,
                             webhooks=webhooks.Webhooks(db, sealer=sealer))

    async def fund() -> None:
        async with Database(url) as db:
            await db.create()
            await service(db).record_deposit(10**9)

    asyncio.run(fund())
    db = Database(url)  # first used on uvicorn's event loop
    live = service(db)
    server = serve(create_app(live, owner_token=OWNER_TOKEN, rate_limit="100000/second"))

    async def run() -> set[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            agents = [(await agent_with_intent(http, f"a{n}"))[:2] for n in range(4)]
            return await kill_mid_run(http, agents, one_agent=False)

    stopped = asyncio.run(run())
    server.stop()

    async def check() -> None:
        await live.webhooks.aclose()
        await db.aclose()
        async with Database(url) as fresh:
            await assert_signed_before_the_switch(fresh, stopped, one_agent=False)

    asyncio.run(check())


# ---------------------------------------------------------------------------------------------
# A real server, and the CLI
# ---------------------------------------------------------------------------------------------


def test_the_api_over_uvicorn_on_loopback(serve, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'live.sqlite'}"

    async def create() -> None:
        async with Database(url) as db:
            await db.create()

    asyncio.run(create())
    db = Database(url)  # no I/O yet: it is first used on uvicorn's event loop
    sealer = Sealer(os.urandom(32))
    service = WalletService(
        db, owner=OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF), sealer=sealer,
        deployment=OFFLINE_DEPLOYMENT, processor=PROCESSOR, webhooks=webhooks.Webhooks(db, sealer=sealer),
    )
    server = serve(create_app(service, owner_token=OWNER_TOKEN, webhook_interval=0.05))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        agent = http.post("/v1/agents", json={"name": "live"}, headers=owner()).json()
        assert http.post("/v1/deposit", headers=owner()).status_code == 404
        drafted = http.post("/v1/intents", json=DRAFT, headers=bearer(agent["apiKey"])).json()
        # The owner's escrow is empty: approval is refused as a problem, not a 500.
        refused = http.post(f"/v1/intents/{drafted['id']}/approve", headers=owner())
        problem(refused, 409, "insufficient_funds")
        assert http.get("/v1/audit/verify", headers=owner()).json()["ok"] is True
        assert http.get("/openapi.json").status_code == 200
    server.stop()  # then close what the test opened (the pool's connections outlive uvicorn's loop)

    async def close() -> None:
        await service.webhooks.aclose()
        await db.aclose()

    asyncio.run(close())


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wallet", *args], cwd=ROOT, env=os.environ | env, capture_output=True, text=True,
        timeout=120,
    )


def test_cli_init_add_agent_and_audit_verify_exit_codes(tmp_path):
    deployment = tmp_path / "deployment.json"
    OFFLINE_DEPLOYMENT.save(deployment)
    database = tmp_path / "cli.sqlite"
    env = {
        "AEP2_WALLET_DB": f"sqlite+aiosqlite:///{database}",
        "AEP2_WALLET_KEY": Sealer.generate_key(),
        "AEP2_WALLET_OWNER_PASSWORD": PASSWORD,
        "AEP2_WALLET_OWNER_KEYSTORE": str(tmp_path / "owner.json"),
        "AEP2_DEPLOYMENT": str(deployment),
        "AEP2_PROCESSOR": PROCESSOR,
    }
    init = run_cli("init", env=env)
    assert init.returncode == 0 and init.stdout.strip().startswith("0x"), init.stderr
    added = run_cli("add-agent", "cli-agent", env=env)
    assert added.returncode == 0 and "api key:" in added.stdout, added.stderr
    agent_id = added.stdout.split()[2]
    rotated = run_cli("rotate-key", agent_id, "--grace", "60", env=env)
    assert rotated.returncode == 0 and "api key:" in rotated.stdout and "in 60 s" in rotated.stdout, rotated.stderr
    assert run_cli("rotate-key", "agt_missing", env=env).returncode == 1
    assert run_cli("kill-switch", "on", env=env).returncode == 0
    assert run_cli("approve", "int_missing", env=env).returncode == 1
    verified = run_cli("audit", "verify", env=env)
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 3 records"), verified.stderr

    with sqlite3.connect(database) as conn:  # tamper: drop the append-only trigger, edit a record
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute("UPDATE audit_log SET payload = replace(payload, 'cli-agent', 'someone') WHERE seq = 1")
    broken = run_cli("audit", "verify", env=env)
    assert broken.returncode == 1 and "broken at seq 1: edited" in broken.stderr, (broken.stdout, broken.stderr)

    assert run_cli("add-agent", "x", env=env | {"AEP2_WALLET_OWNER_PASSWORD": "wrong"}).returncode == 2
