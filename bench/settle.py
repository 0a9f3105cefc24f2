"""Batch settlement benchmarks: circuit size, proving time and memory, and gas per mandate.

For each N in ``BATCH_SIZES`` (circuit ``Batch(N, INTENT_SLOTS, PAYEE_SLOTS)``), on a fresh
Anvil with that N's verifier deployed (``settlement.deploy.deploy``):

1. 4 payers deposit escrow, authorise the processor and register one intent each;
2. N real mandates are signed, N/4 per intent (nonces from 0), alternating between 2 payees,
   deadlines an hour ahead; ``time_ref`` = the latest block's timestamp;
3. a fresh child process (``bench._prove``, started early so it loads the proving key while
   the chain is set up) proves the full batch with ``Prover.prove`` (witness + proof) and
   reports its time and peak RSS (itself and its node witness child);
4. the same proof is submitted with ``settleBatch``; gas per mandate = receipt ``gasUsed``/N,
   against the gas of one EIP-3009 ``transferWithAuthorization`` on the same MockUSDC.

``prover.run()`` and ``gas.run()`` both read this module's results, computed once per process.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from aep2.deployment import Deployment, contract_artifact
from aep2.mandate import Mandate, request_hash
from aep2.store import MandateRecord, MandateStatus
from aep2.eip3009 import TRANSFER_WITH_AUTHORIZATION_TYPES
from settlement.artifacts import PROJECT_ROOT, build_artifacts
from settlement.chain import SettlementClient
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, mint
from settlement.witness import IntentSlot, build_statement

from .common import (
    BATCH_SIZES,
    INTENT_SLOTS,
    PAYEE_INDICES,
    PAYEE_SLOTS,
    PRICE,
    PROCESSOR_INDEX,
    FundedPayer,
    Timer,
    fund_payer,
    log,
)

GIB_KIB = 1024 * 1024  # ru_maxrss is in KiB on Linux


def _send(w3: Web3, key: str, call: Any, gas: int = 300_000) -> dict[str, Any]:
    account = Account.from_key(key)
    tx = call.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending"),
         "gas": gas, "chainId": w3.eth.chain_id}
    )
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
    if receipt["status"] != 1:
        raise RuntimeError(f"{call.fn_name} reverted")
    return dict(receipt)


def eip3009_gas(deployment: Deployment) -> int:
    """Gas of one ``transferWithAuthorization`` (signed by a holder, submitted by another account).

    Sender and recipient already hold tokens (steady state: no zero-to-non-zero balance write),
    as the payees of the settlement batches do.
    """
    w3 = Web3(Web3.HTTPProvider(deployment.rpc_url))
    holder = Account.create()
    recipient = Account.from_key(anvil_key(PAYEE_INDICES[0])).address
    submitter = anvil_key(5)
    mint(deployment.rpc_url, deployment.token, holder.address, 10 * PRICE)
    mint(deployment.rpc_url, deployment.token, recipient, 1)
    valid_before = w3.eth.get_block("latest")["timestamp"] + 3600
    nonce = secrets.token_bytes(32)
    typed = {
        "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
        "primaryType": "TransferWithAuthorization",
        "domain": {"name": "USD Coin", "version": "2", "chainId": deployment.chain_id,
                   "verifyingContract": deployment.token},
        "message": {"from": holder.address, "to": recipient, "value": PRICE, "validAfter": 0,
                    "validBefore": valid_before, "nonce": nonce},
    }
    signature = bytes(holder.sign_typed_data(full_message=typed).signature)
    token = w3.eth.contract(address=deployment.token, abi=contract_artifact("MockUSDC")["abi"])
    function = token.get_function_by_signature(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )
    call = function(holder.address, recipient, PRICE, 0, valid_before, nonce, signature)
    receipt = _send(w3, submitter, call, gas=200_000)
    return int(receipt["gasUsed"])


def _start_prover(n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench._prove", str(n), str(INTENT_SLOTS), str(PAYEE_SLOTS)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def _client(deployment: Deployment) -> SettlementClient:
    return SettlementClient(deployment.rpc_url, deployment.settlement, anvil_key(PROCESSOR_INDEX))


async def _setup_batch(deployment: Deployment, payers: list[FundedPayer], n: int) -> Any:
    """Register the intents and sign the batch's mandates; returns the batch statement."""
    client = _client(deployment)
    try:
        for payer in payers:
            await client.register_intent(payer.signed_intent)
        time_ref = await client.latest_timestamp()
    finally:
        await client.w3.provider.disconnect()
    payees = [Account.from_key(anvil_key(index)).address for index in PAYEE_INDICES]
    deadline = int(time.time()) + 3600
    slots = []
    per_intent = n // len(payers)
    for payer in payers:
        intent = payer.signed_intent.intent
        records = []
        for nonce in range(per_intent):
            mandate = Mandate(
                intent_id=intent.intent_id,
                payee=payees[nonce % len(payees)],
                amount=PRICE,
                nonce=nonce,
                deadline=deadline,
                request_hash=request_hash("GET", f"/v1/forecast/city{nonce}"),
            )
            records.append(
                MandateRecord(mandate.payment_id, mandate, mandate.sign(payer.session_key), payer.address,
                              deployment.token, MandateStatus.BATCHED, time.time())
            )
        slots.append(IntentSlot(intent, 0, tuple(records)))
    return build_statement(slots, time_ref=time_ref, asset=deployment.token, n=n, i=INTENT_SLOTS, p=PAYEE_SLOTS)


async def _settle(deployment: Deployment, statement: Any, proof: dict[str, Any]) -> int:
    client = _client(deployment)
    try:
        publics = [int(v) for v in proof["publicInputs"]]
        on_chain = await client.public_inputs(statement.batch)
        if on_chain != publics:
            raise RuntimeError("the contract's public inputs differ from the proof's")
        receipt = await client.settle_batch(tuple(int(w) for w in proof["words"]), statement.batch)
    finally:
        await client.w3.provider.disconnect()
    return int(receipt["gasUsed"])


def _one(n: int, tmp: Path, prover: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    try:
        if prover is None:
            prover = _start_prover(n)  # builds if needed and loads the key while the chain is set up
        with Timer() as build:
            # Waits on the cache lock while a prover child builds the same artifacts.
            artifacts = build_artifacts(n, INTENT_SLOTS, PAYEE_SLOTS)
        log(f"settle N={n}: artifacts {artifacts.hash} ({artifacts.constraints} constraints) in {build.seconds:.1f} s")
        with Anvil() as node:
            deployment = deploy(node.rpc_url, anvil_key(0), artifacts)
            processor = Account.from_key(anvil_key(PROCESSOR_INDEX)).address
            budget = 10**12
            payers = [fund_payer(deployment, escrow=budget, processor=processor, max_amount=budget)
                      for _ in range(INTENT_SLOTS)]
            for payee_index in PAYEE_INDICES:  # payees already hold tokens (steady state)
                mint(node.rpc_url, deployment.token, Account.from_key(anvil_key(payee_index)).address, 1)
            baseline = eip3009_gas(deployment)
            statement = asyncio.run(_setup_batch(deployment, payers, n))
            assert statement.mandate_count == n
            inputs_path, out_path = tmp / f"inputs-{n}.json", tmp / f"proof-{n}.json"
            inputs_path.write_text(json.dumps(statement.inputs))
            ready = prover.stdout.readline().split() if prover.stdout else []
            if not ready or ready[0] != "ready":
                raise RuntimeError(f"prover child for N={n} failed to load the proving key")
            log(f"settle N={n}: key loaded in {float(ready[1]):.1f} s; proving…")
            assert prover.stdin is not None
            prover.stdin.write(f"{inputs_path} {out_path}\n")
            prover.stdin.flush()
            if prover.wait(timeout=1800) != 0:
                raise RuntimeError(f"prover child for N={n} exited with {prover.returncode}")
            proof = json.loads(out_path.read_text())
            log(f"settle N={n}: proved in {proof['seconds']:.1f} s, peak RSS "
                f"{proof['maxrssSelfKiB'] / GIB_KIB:.2f} GiB (+ witness {proof['maxrssChildrenKiB'] / GIB_KIB:.2f} GiB)")
            gas = asyncio.run(_settle(deployment, statement, proof))
            log(f"settle N={n}: settleBatch {gas} gas ({gas / n:.0f}/mandate), EIP-3009 transfer {baseline} gas")
    finally:
        _stop(prover)
    return {
        "n": n,
        "constraints": artifacts.constraints,
        "prove_seconds": proof["seconds"],
        "load_seconds": proof["loadSeconds"],
        "rss_self_gib": proof["maxrssSelfKiB"] / GIB_KIB,
        "rss_children_gib": proof["maxrssChildrenKiB"] / GIB_KIB,
        "gas": gas,
        "eip3009_gas": baseline,
    }


@lru_cache(maxsize=1)
def results() -> dict[int, dict[str, Any]]:
    """Run the pipeline for every N once per process."""
    out = {}
    sizes = sorted(BATCH_SIZES)
    # The largest N is the long pole (first build: minutes of compile and setup; every run:
    # the largest proving key to load): its child starts now, single-threaded on the other
    # core, while the smaller sizes run one after the other.
    early = _start_prover(sizes[-1]) if len(sizes) > 1 else None
    try:
        with tempfile.TemporaryDirectory(prefix="aep2-bench-settle-") as tmp:
            for n in sizes:
                out[n] = _one(n, Path(tmp), early if n == sizes[-1] else None)
    finally:
        _stop(early)
    return out
