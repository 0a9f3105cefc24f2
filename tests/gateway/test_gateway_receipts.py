"""``GET /payments/<paymentId>``: an ``aep2`` receipt follows its mandate through the
processor's batch (``batch: null`` → proving → submitted → settled, with transaction, block,
proof seconds and gas), and a batch that failed and let its mandate go is not shown.

In-process on a ``StaticChainReader``; the batch steps are the store calls the processor makes.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from gateway_fixtures import OFFLINE_DEPLOYMENT, InProcessGateway, StaticChainReader, signer_for

PATH = "/v1/forecast/paris"
TX = "0x" + "5e" * 32


@pytest.fixture
async def gateway():
    gateway = InProcessGateway(OFFLINE_DEPLOYMENT, ":memory:", reader=StaticChainReader())
    yield gateway
    await gateway.aclose()


async def paid_receipt(gateway: InProcessGateway) -> tuple[str, dict]:
    signer = signer_for(Account.create(), OFFLINE_DEPLOYMENT)
    async with gateway.client() as client:
        assert (await client.get(PATH, headers={"PAYMENT-SIGNATURE": signer.header("GET", PATH)})).status_code == 200
        (record,) = await gateway.store.mandates()
        return record.payment_id, (await client.get(f"/payments/{record.payment_id}")).json()


async def receipt(gateway: InProcessGateway, payment_id: str) -> dict:
    async with gateway.client() as client:
        response = await client.get(f"/payments/{payment_id}")
    assert response.status_code == 200
    return response.json()


async def test_the_receipt_follows_the_mandate_into_its_batch_and_onto_the_chain(gateway):
    payment_id, accepted = await paid_receipt(gateway)
    assert (accepted["status"], accepted["transaction"], accepted["batch"]) == ("accepted", "", None)
    assert accepted["paymentId"] == payment_id and accepted["scheme"] == "aep2"

    batch = await gateway.store.seal_batch([payment_id], time_ref=1)
    proving = await receipt(gateway, payment_id)
    assert proving["status"] == "batched"
    assert proving["batch"] == {"id": batch.batch_id, "status": "proving", "transaction": "", "block": None,
                                "proveSeconds": None, "gasUsed": None}

    await gateway.store.mark_batch_submitted(batch.batch_id, TX, b"\x02raw", 0, prove_seconds=1.5)
    submitted = (await receipt(gateway, payment_id))["batch"]
    assert (submitted["status"], submitted["transaction"], submitted["proveSeconds"], submitted["block"]) == (
        "submitted", TX, 1.5, None)

    await gateway.store.mark_batch_settled(batch.batch_id, TX, 77, gas_used=250_123)
    settled = await receipt(gateway, payment_id)
    assert (settled["status"], settled["transaction"]) == ("settled", TX)
    assert settled["batch"] == {"id": batch.batch_id, "status": "settled", "transaction": TX, "block": 77,
                                "proveSeconds": 1.5, "gasUsed": 250_123}
    assert "raw" not in str(settled)  # the signed bytes stay in the store


async def test_a_batch_that_let_its_mandate_go_is_not_its_batch(gateway):
    payment_id, _ = await paid_receipt(gateway)
    failed = await gateway.store.seal_batch([payment_id], time_ref=1)
    await gateway.store.fail_batch(failed.batch_id, "interrupted before submission", retry=True)
    back = await receipt(gateway, payment_id)
    assert (back["status"], back["batch"]) == ("accepted", None)
    again = await gateway.store.seal_batch([payment_id], time_ref=2)
    assert (await receipt(gateway, payment_id))["batch"]["id"] == again.batch_id != failed.batch_id
