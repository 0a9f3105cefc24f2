"""``GatewayConfig`` requires the settlement processor, discovery tells agents which
processor their intents must name (``/skill.json``, ``/skill.md``), and the ``exact`` token
domain is read from the token: a configured domain that contradicts it stops the gateway."""

from __future__ import annotations

import dataclasses

import pytest
import uvicorn
from gateway_fixtures import OFFLINE_DEPLOYMENT, PAYEE, PROCESSOR, InProcessGateway, StaticChainReader

from aep2.intent import ZERO_ADDRESS
from aep2.x402 import decode_header
from gateway.config import GatewayConfig
from gateway.middleware import PaymentMiddleware

BASE = dict(chain_id=31337, payee=PAYEE, asset=OFFLINE_DEPLOYMENT.token, settlement=OFFLINE_DEPLOYMENT.settlement)


def test_processor_is_required():
    with pytest.raises(TypeError, match="processor"):
        GatewayConfig(**BASE)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="processor"):
        GatewayConfig.from_deployment(OFFLINE_DEPLOYMENT, PAYEE)  # type: ignore[call-arg]


@pytest.mark.parametrize("processor", [ZERO_ADDRESS, "0x" + "0" * 40, "0x1234", None])
def test_processor_must_be_a_non_zero_address(processor):
    with pytest.raises(ValueError, match="^processor"):
        GatewayConfig(**BASE, processor=processor)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^processor"):
        GatewayConfig.from_deployment(OFFLINE_DEPLOYMENT, PAYEE, processor=processor)  # type: ignore[arg-type]


def test_from_deployment_reads_the_settlement_window():
    config = GatewayConfig.from_deployment(OFFLINE_DEPLOYMENT, PAYEE, processor=PROCESSOR.lower())
    assert config.processor == PROCESSOR  # checksummed
    assert config.settlement_window == 3600 and config.max_chain_staleness == 60.0
    short = dataclasses.replace(OFFLINE_DEPLOYMENT, settlement_window=100)
    assert GatewayConfig.from_deployment(short, PAYEE, processor=PROCESSOR).max_chain_staleness == 10.0
    # Unknown window (an older deployment object): the 60 s default bound.
    assert GatewayConfig(**BASE, processor=PROCESSOR).max_chain_staleness == 60.0
    with pytest.raises(ValueError, match="^settlement_window"):
        GatewayConfig(**BASE, processor=PROCESSOR, settlement_window=0)


def test_example_service_requires_the_processor(tmp_path, monkeypatch):
    import examples.payee_service as service

    with pytest.raises(TypeError, match="processor"):
        service.create_app(OFFLINE_DEPLOYMENT, PAYEE, str(tmp_path / "s.sqlite"))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="^processor"):
        service.create_app(OFFLINE_DEPLOYMENT, PAYEE, str(tmp_path / "s.sqlite"), processor=ZERO_ADDRESS)
    path = tmp_path / "deployment.json"
    OFFLINE_DEPLOYMENT.save(path)
    monkeypatch.setenv("AEP2_DEPLOYMENT", str(path))
    monkeypatch.setenv("AEP2_PAYEE", PAYEE)
    monkeypatch.setenv("AEP2_STORE", str(tmp_path / "s.sqlite"))
    monkeypatch.delenv("AEP2_PROCESSOR", raising=False)
    with pytest.raises(RuntimeError, match="AEP2_PROCESSOR"):
        service.app
    monkeypatch.setenv("AEP2_PROCESSOR", PROCESSOR)
    assert service.app is not None


async def test_discovery_names_the_processor(tmp_path):
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, str(tmp_path / "s.sqlite"), reader=StaticChainReader())
    try:
        async with gateway.client() as client:
            doc = (await client.get("/skill.json")).json()
            text = (await client.get("/skill.md")).text
    finally:
        await gateway.aclose()
    assert doc["aep2"]["processor"] == PROCESSOR and doc["aep2"]["settlementWindow"] == 3600
    assert f"naming `processor` = `{PROCESSOR}`" in text
    assert f"setProcessor({PROCESSOR}, true)" in text
    # Owners deposit with this processor: escrow is per (payer, token, processor).
    assert f"deposit({OFFLINE_DEPLOYMENT.token}, {PROCESSOR}, amount)" in text
    assert "funds deposited with another processor are not counted" in text
    assert "pending withdrawal" in text and "any order" in text


class UnusedFacilitator:
    """Stands in where a test only needs the gateway to offer ``exact`` (never called)."""

    async def verify(self, payload, requirements):  # pragma: no cover - must not be reached
        raise AssertionError("verify called")

    async def settle(self, payload, requirements):  # pragma: no cover - must not be reached
        raise AssertionError("settle called")

    async def supported(self):  # pragma: no cover - must not be reached
        raise AssertionError("supported called")

    async def aclose(self) -> None:
        pass


async def exact_offer(gateway: InProcessGateway) -> dict:
    async with gateway.client() as client:
        response = await client.get("/v1/forecast/paris")
    assert response.status_code == 402
    required = decode_header(response.headers["PAYMENT-REQUIRED"])
    return next(entry for entry in required["accepts"] if entry["scheme"] == "exact")


async def test_exact_domain_is_read_from_the_token(tmp_path):
    reader = StaticChainReader()
    reader.domain = ("Bridged USDC", "7")
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, str(tmp_path / "s.sqlite"), reader=reader, facilitator=UnusedFacilitator())
    try:
        assert (await exact_offer(gateway))["extra"] == {"name": "Bridged USDC", "version": "7"}
    finally:
        await gateway.aclose()


@pytest.mark.parametrize(
    ("configured", "reported", "field"),
    [
        ({"token_name": "USD Coin"}, ("Fake Coin", "2"), "token_name"),
        ({"token_version": "1"}, ("USD Coin", "2"), "token_version"),
        ({}, None, "token_name/token_version"),  # the token has no eip712Domain() and none is given
    ],
)
async def test_a_token_domain_contradicting_the_config_stops_the_gateway(tmp_path, configured, reported, field):
    reader = StaticChainReader()
    reader.domain = reported
    gateway = InProcessGateway(
        OFFLINE_DEPLOYMENT, str(tmp_path / "s.sqlite"), reader=reader, facilitator=UnusedFacilitator(), **configured
    )
    middleware = PaymentMiddleware(gateway.app, **gateway.middleware_options)
    try:
        with pytest.raises(ValueError, match=f"^{field}"):
            await middleware.startup()
        # Served without a lifespan, a priced request is refused, never served unpaid.
        async with gateway.client() as client:
            response = await client.get("/v1/forecast/paris")
        assert response.status_code == 503 and gateway.handled["/v1/forecast/paris"] == 0
    finally:
        await gateway.aclose()


async def test_uvicorn_refuses_to_start_on_a_token_domain_mismatch(tmp_path):
    reader = StaticChainReader()
    reader.domain = ("Fake Coin", "2")
    gateway = InProcessGateway(
        OFFLINE_DEPLOYMENT, str(tmp_path / "s.sqlite"), reader=reader, facilitator=UnusedFacilitator(), token_name="USD Coin"
    )
    server = uvicorn.Server(uvicorn.Config(gateway.app, host="127.0.0.1", port=0, lifespan="on", log_level="critical"))
    try:
        with pytest.raises(SystemExit):  # uvicorn's exit on a failed lifespan start-up
            await server.serve()
        assert not server.started
    finally:
        await gateway.aclose()


def test_a_matching_configured_domain_is_accepted(tmp_path):
    config = GatewayConfig(**BASE, processor=PROCESSOR, token_name="USD Coin", token_version="2")
    assert (config.token_name, config.token_version) == ("USD Coin", "2")
