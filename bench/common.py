"""Shared pieces of the benchmarks: circuit shape, rows, a local chain with funded payers."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from web3 import Web3

from aep2.deployment import Deployment
from aep2.eddsa import SessionKey
from aep2.intent import SignedIntent

#: Circuit shape of every batch benchmark: I intent slots and P payee slots for all N.
INTENT_SLOTS = 4
PAYEE_SLOTS = 2
#: Batch sizes the prover and gas benchmarks run, smallest first.
import os

BATCH_SIZES = tuple(int(n) for n in os.environ.get("AEP2_BENCH_SIZES", "16,64,256").split(","))

#: Anvil development accounts (public keys: local chains only).
DEPLOYER_INDEX = 0
PROCESSOR_INDEX = 1
PAYEE_INDICES = (2, 3)
FACILITATOR_INDEX = 4  # sends x402 ``exact`` transfers (``AEP2_FACILITATOR_KEY``)
PRICE = 1_000  # base units per mandate (the payee service's forecast price)


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON rows)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def row(metric: str, value: float, unit: str, baseline: float | None = None, *, digits: int = 3) -> dict[str, Any]:
    """One output line; ``ratio = value / baseline`` when a baseline is given."""
    out: dict[str, Any] = {"metric": metric, "value": round(value, digits), "unit": unit}
    if baseline is not None:
        out["baseline"] = round(baseline, digits)
        out["ratio"] = round(value / baseline, 4) if baseline else None
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


@dataclass
class FundedPayer:
    """A payer account with escrow deposited and the processor authorised, plus its intent."""

    key: str
    address: str
    session_key: SessionKey
    signed_intent: SignedIntent


def fund_payer(
    deployment: Deployment,
    *,
    escrow: int,
    processor: str,
    max_amount: int,
    max_per_payment: int = 5_000,
    valid_for_seconds: int = 7 * 24 * 3600,
) -> FundedPayer:
    """A fresh payer: ETH for gas, ``escrow`` MockUSDC deposited, ``processor`` authorised,
    and a signed intent naming ``processor`` (not registered) for a fresh session key."""
    from payer import Escrow, create_intent, create_session_key
    from settlement.devchain import mint

    account = Account.create()
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])
    mint(deployment.rpc_url, deployment.token, account.address, escrow)
    payer = Escrow(deployment, account.key, processor=processor)
    payer.deposit(escrow)
    payer.authorize_processor(processor)
    key = create_session_key()
    signed = create_intent(
        account.key,
        session_key=key,
        asset=deployment.token,
        max_amount=max_amount,
        max_per_payment=max_per_payment,
        valid_for_seconds=valid_for_seconds,
        chain_id=deployment.chain_id,
        settlement=deployment.settlement,
        processor=processor,
    )
    return FundedPayer("0x" + bytes(account.key).hex(), account.address, key, signed)
