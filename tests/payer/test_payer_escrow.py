"""``Escrow`` acts on the payer's escrow account with one processor (escrow is held per
(payer, token, processor)), offline: the contract calls it builds, not their effect (the
chain tests in tests/gateway exercise that on Anvil)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from eth_utils import to_checksum_address
from payer_fixtures import ASSET, CHAIN_ID, PROCESSOR, SETTLEMENT

from aep2.deployment import CircuitShape, Deployment
from payer import Escrow

DEPLOYMENT = Deployment(
    chain_id=CHAIN_ID,
    rpc_url="http://127.0.0.1:9",
    settlement=to_checksum_address(SETTLEMENT),
    token=to_checksum_address(ASSET),
    verifier=to_checksum_address("0x" + "7e" * 20),
    circuit=CircuitShape(4, 2, 2, "offline"),
    deployed_at=0,
    settlement_window=3600,
)


def test_processor_is_required(owner):
    with pytest.raises(TypeError, match="processor"):
        Escrow(DEPLOYMENT, owner.key)  # type: ignore[call-arg]


def test_every_escrow_call_names_the_processor(owner, monkeypatch):
    escrow = Escrow(DEPLOYMENT, owner.key, processor=PROCESSOR.lower())
    processor = to_checksum_address(PROCESSOR)
    assert escrow.processor == processor
    sent: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(escrow, "_send", lambda call, gas=300_000: sent.append((call.fn_name, tuple(call.args))))
    allowance = SimpleNamespace(call=lambda: 2**256 - 1)  # already approved: no approve sent
    monkeypatch.setattr(
        escrow,
        "token",
        SimpleNamespace(address=DEPLOYMENT.token, functions=SimpleNamespace(allowance=lambda *a: allowance)),
    )

    escrow.deposit(500)
    escrow.request_withdrawal(200)
    escrow.cancel_withdrawal()
    escrow.execute_withdrawal()
    escrow.authorize_processor(processor, False)
    assert sent == [
        ("deposit", (DEPLOYMENT.token, processor, 500)),
        ("requestWithdrawal", (DEPLOYMENT.token, processor, 200)),
        ("cancelWithdrawal", (DEPLOYMENT.token, processor)),
        ("executeWithdrawal", (DEPLOYMENT.token, processor)),
        ("setProcessor", (processor, False)),
    ]



def test_views_read_the_processor_account(owner, monkeypatch):
    escrow = Escrow(DEPLOYMENT, owner.key, processor=PROCESSOR)
    processor = to_checksum_address(PROCESSOR)
    real = escrow.settlement.functions
    answers = {"balanceOf": 700, "pendingWithdrawal": (300, 1_234)}
    read: list[tuple[str, tuple[Any, ...]]] = []

    def view(name: str) -> Any:
        def build(*args: Any) -> SimpleNamespace:
            getattr(real, name)(*args)  # raises unless the contract's ABI takes these arguments
            read.append((name, args))
            return SimpleNamespace(call=lambda: answers[name])

        return build

    stub = SimpleNamespace(address=escrow.settlement.address, functions=SimpleNamespace(**{n: view(n) for n in answers}))
    monkeypatch.setattr(escrow, "settlement", stub)
    assert escrow.balance() == 700
    assert escrow.pending_withdrawal() == (300, 1_234)
    account = (escrow.address, DEPLOYMENT.token, processor)
    assert read == [("balanceOf", account), ("pendingWithdrawal", account)]
