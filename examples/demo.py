"""The end-to-end demo on a local Anvil node: ``make demo`` (or ``python -m examples.demo``).

1. Builds the batch circuit artifacts (cached after the first run) and starts Anvil.
2. Deploys the verifier, MockUSDC and Settlement; funds payers' escrow.
3. Starts our x402 facilitator and the example payee service behind the gateway, each under
   uvicorn (subprocesses); the gateway settles ``exact`` through the facilitator's URL.
4. Runs payer agents (our SDK, ``aep2`` mandates) making paid calls across three routes,
   and a few calls by the official ``x402`` client over ``exact`` (EIP-3009).
5. Runs the settlement processor (batches proven with Groth16, settled on chain) until
   everything is settled; ``exact`` payments were settled before each answer.
6. Checks every on-chain balance against the gateway's records and prints a summary; the
   last line is one JSON object (``calls_paid``, ``mandates_settled``, ``batches``,
   ``prove_seconds``, ``gas_per_mandate``, ``balances_match``, …).

Options: ``--agents`` (4), ``--calls`` per agent (80), ``--in-flight`` requests per agent
(8), ``--max-age`` of a batch in seconds (5), ``--n/--i/--p`` circuit shape (64/4/2). The
soak run of the settlement guarantee: ``--agents 16 --in-flight 16 --max-age 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from eth_account import Account
from web3 import Web3

from aep2.sqlite_store import SQLiteStore
from examples.payee_service import start_process
from examples.processes import start_uvicorn, stop_process
from payer import AEP2Auth, Escrow, PayerState, create_intent, create_session_key
from settlement.artifacts import build_artifacts
from settlement.chain import SettlementClient
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, free_port, mint
from settlement.processor import BatchPolicy, SettlementProcessor
from settlement.prover import Prover

DEPOSIT = 5_000_000  # 5 USDC of escrow per payer (6 decimals)
EXACT_WALLET = 1_000_000


def step(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r    {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)


async def run_agent(url: str, auth: AEP2Auth, calls: int, counter: list[int], total: int, in_flight: int) -> int:
    """One payer agent: ``calls`` paid requests across the three routes, ``in_flight`` at a time
    (so its nonces reach the gateway out of order)."""
    paid = 0
    semaphore = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(auth=auth, base_url=url, timeout=30) as client:

        async def call(k: int) -> None:
            nonlocal paid
            async with semaphore:
                route = k % 3
                if route == 0:
                    response = await client.get(f"/v1/forecast/city-{k}")
                elif route == 1:
                    response = await client.post("/v1/sentiment", json={"text": f"fast and correct call {k}"})
                else:
                    response = await client.get("/v1/primes", params={"n": 1000 + k})
                if response.status_code == 200 and "payment-response" in response.headers:
                    paid += 1
                counter[0] += 1
                progress("paid calls", counter[0], total)

        await asyncio.gather(*(call(k) for k in range(calls)))
    return paid


async def exact_calls(url: str, account, token: str, count: int) -> int:
    """Calls by the official x402 client paying with ``exact`` (EIP-3009)."""
    from x402 import x402Client
    from x402.http.clients.httpx import x402HttpxClient
    from x402.mechanisms.evm.exact.register import register_exact_evm_client
    from x402.mechanisms.evm.signers import EthAccountSigner

    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), networks="eip155:31337")
    # MockUSDC is not one of the SDK's known assets: allow it explicitly, with a per-call cap.
    client.set_spend_controls(
        {"allowed_assets": [{"network": "eip155:31337", "asset": token, "max_amount_per_payment": "10000"}]}
    )
    paid = 0
    async with x402HttpxClient(client, base_url=url, timeout=30) as http:
        for k in range(count):
            response = await http.get(f"/v1/forecast/exact-{k}")
            paid += response.status_code == 200
    return paid


async def main(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aep2-demo-"))
    step(f"building the batch circuit N={args.n}, I={args.i}, P={args.p} (cached after the first run)")
    artifacts = build_artifacts(args.n, args.i, args.p)
    processes: list[subprocess.Popen] = []
    with Anvil() as node:
        step(f"Anvil on {node.rpc_url}; deploying verifier, MockUSDC and Settlement")
        deployment_path = workdir / "deployment.json"
        deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=deployment_path)
        w3 = Web3(Web3.HTTPProvider(node.rpc_url))
        processor_key, payee, facilitator_key = anvil_key(1), Account.from_key(anvil_key(2)).address, anvil_key(3)
        processor = Account.from_key(processor_key).address

        step(f"funding {args.agents} payers with {DEPOSIT / 1e6:.2f} USDC of escrow each")
        payers = []
        for _ in range(args.agents):
            key = "0x" + bytes(Account.create().key).hex()
            w3.provider.make_request("anvil_setBalance", [Account.from_key(key).address, hex(10**19)])
            mint(node.rpc_url, deployment.token, Account.from_key(key).address, DEPOSIT)
            escrow = Escrow(deployment, key, processor=processor)
            escrow.deposit(DEPOSIT)
            escrow.authorize_processor(processor)
            payers.append(escrow)
        exact_payer = Account.from_key(anvil_key(9))
        mint(node.rpc_url, deployment.token, exact_payer.address, EXACT_WALLET)
        token = payers[0].token
        payee_before = token.functions.balanceOf(payee).call()

        step("starting the x402 facilitator for `exact` (uvicorn --factory facilitator.app:from_env)")
        facilitator, facilitator_url = start_uvicorn(
            "facilitator.app:from_env", free_port(), uvicorn_args=("--factory",), ready_path="/supported",
            name="facilitator", env={"FACILITATOR_RPC_URL": node.rpc_url, "FACILITATOR_PRIVATE_KEY": facilitator_key},
        )
        processes.append(facilitator)
        try:
            step("starting the example payee service behind the gateway (uvicorn), settling `exact` through it")
            store_path = workdir / "payments.sqlite"
            gateway, url = start_process(
                free_port(), deployment=deployment_path, payee=payee, store=store_path, processor=processor,
                facilitator_url=facilitator_url,
            )
            processes.append(gateway)
            step(f"loading the proving key ({artifacts.constraints:,} constraints; tens of seconds at N=64)")
            store = SQLiteStore(str(store_path))
            await store.open()
            settler = SettlementProcessor(
                store,
                SettlementClient(node.rpc_url, deployment.settlement, processor_key),
                Prover(artifacts),
                deployment.token,
                policy=BatchPolicy(max_size=artifacts.n, max_age_seconds=args.max_age),
            )
            stop = asyncio.Event()
            settling = asyncio.create_task(settler.run(stop, poll_seconds=1.0))

            step(f"{args.agents} payer agents making {args.calls} paid calls each (aep2 mandates), settling alongside")
            auths = []
            for escrow in payers:
                key = create_session_key()
                intent = create_intent(
                    escrow.account.key, session_key=key, asset=deployment.token, max_amount=DEPOSIT,
                    max_per_payment=10_000, valid_for_seconds=24 * 3600, chain_id=deployment.chain_id,
                    settlement=deployment.settlement, processor=processor,
                )
                auths.append(AEP2Auth(intent, key, PayerState(str(workdir / f"payer-{escrow.address}.sqlite"))))
            counter = [0]
            total = args.agents * args.calls
            paid = await asyncio.gather(*(run_agent(url, auth, args.calls, counter, total, args.in_flight) for auth in auths))
            calls_paid = sum(paid)

            step("the official x402 client pays a few calls with `exact` (EIP-3009)")
            exact_paid = await exact_calls(url, exact_payer, deployment.token, args.exact_calls)

            step("settling the remaining mandates")
            stop.set()
            await settling
            await settler.settle_all()
            await settler.client.aclose()

            mandates = await store.mandates()
            settled = [m for m in mandates if m.status == "settled"]
            batches = [b for b in await store.batches() if b.status == "settled"]
            gas = 0
            for batch in batches:
                gas += w3.eth.get_transaction_receipt(batch.tx_hash)["gasUsed"]
            totals = await store.totals()
            prove_seconds = sum(r.prove_seconds for r in settler.results)

            step("checking on-chain balances against the gateway's records")
            mismatches = []
            for escrow, auth in zip(payers, auths):
                expected = DEPOSIT - totals["payers"].get(escrow.address, 0)
                if escrow.balance() != expected:
                    mismatches.append(f"escrow of {escrow.address}: {escrow.balance()} ≠ {expected}")
                if auth.spent != totals["payers"].get(escrow.address, 0):
                    mismatches.append(f"payer {escrow.address} SDK spent {auth.spent} ≠ settled")
            expected_payee = payee_before + sum(totals["payees"].values()) + sum(totals["exact_payees"].values())
            if token.functions.balanceOf(payee).call() != expected_payee:
                mismatches.append("payee balance differs from the settled totals")
            expected_exact = EXACT_WALLET - totals["exact_payers"].get(exact_payer.address, 0)
            if token.functions.balanceOf(exact_payer.address).call() != expected_exact:
                mismatches.append("exact payer's wallet differs from the settled exact payments")
            unsettled = [m for m in mandates if m.status != "settled"]
            if unsettled:
                mismatches.append(f"{len(unsettled)} mandates not settled")
            await store.close()
        finally:
            for process in processes:
                stop_process(process)

    for line in mismatches:
        print(f"    MISMATCH {line}", file=sys.stderr)
    summary = {
        "calls_paid": calls_paid + exact_paid,
        "aep2_calls_paid": calls_paid,
        "exact_calls_paid": exact_paid,
        "mandates_settled": len(settled),
        "batches": len(batches),
        "prove_seconds": round(prove_seconds, 2),
        "gas_per_mandate": round(gas / max(len(settled), 1)),
        "payee_received": sum(totals["payees"].values()) + sum(totals["exact_payees"].values()),
        "balances_match": not mismatches,
        "circuit": {"n": artifacts.n, "i": artifacts.i, "p": artifacts.p, "constraints": artifacts.constraints},
        "seconds": round(time.monotonic() - started, 1),
    }
    print(
        f"\n{summary['calls_paid']} paid calls ({calls_paid} aep2 mandates, {exact_paid} x402 exact); "
        f"{summary['mandates_settled']} mandates settled in {summary['batches']} batches "
        f"({summary['prove_seconds']} s proving, {summary['gas_per_mandate']} gas per mandate); "
        f"payee received {summary['payee_received'] / 1e6:.6f} USDC; balances match: {summary['balances_match']}",
    )
    return summary


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--calls", type=int, default=80, help="paid calls per agent")
    parser.add_argument("--exact-calls", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=8, help="concurrent requests per agent")
    parser.add_argument("--max-age", type=float, default=5.0, help="batch age that cuts a batch (s)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--i", type=int, default=4)
    parser.add_argument("--p", type=int, default=2)
    summary = asyncio.run(main(parser.parse_args()))
    print(json.dumps(summary))
    return 0 if summary["balances_match"] else 1


if __name__ == "__main__":
    sys.exit(cli())
