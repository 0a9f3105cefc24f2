"""``GatewayConfig`` requires the settlement processor, and discovery tells agents which
processor their intents must name (``/skill.json``, ``/skill.md``)."""

from __future__ import annotations

import dataclasses

import pytest
from gateway_fixtures import OFFLINE_DEPLOYMENT, PAYEE, PROCESSOR, InProcessGateway, StaticChainReader

from aep2.intent import ZERO_ADDRESS
from gateway.config import GatewayConfig

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
