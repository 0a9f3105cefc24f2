"""The end-to-end demo on a local Anvil node, an agent economy on one command: ``make demo``
(or ``python -m examples.demo``).

1. Builds the batch circuit artifacts (cached after the first run) and starts Anvil.
2. Deploys the verifier, MockUSDC and Settlement. Sets up the co-wallet with its CLI
   (``python -m wallet init``, ``deposit``) and serves it as its own process
   (``python -m wallet serve``, council ``offline`` unless ``AEP2_WALLET_COUNCIL`` says
   otherwise); prints its dashboard's URL. The owner sets the standing rules over the API:
   auto-approve mission intents within bounds, review spends above a threshold (the council
   decides), deny off-mission spends.
3. Starts the x402 facilitator, the example data API (background traffic), three specialised
   service agents (research, copywriting, design: ``examples.specialists``, each its own
   process and payee) and the ad network's card checkout (``examples.merchant``). Every
   gateway writes the one payment store the settlement processor reads.
4. The orchestrator agent (``examples.orchestrator``: Claude with ``ANTHROPIC_API_KEY``, else
   the deterministic planner) breaks ``--goal`` into research, copywriting, design and an ad
   purchase, asks the co-wallet for one intent for the whole mission and carries it out
   (``examples.mission``): specialists paid per call through ``payer.WalletAuth`` (it holds an
   API key only), one spend decided by the council, one denied as off-mission, the ads paid
   with a single-use card captured for less than its amount.
5. Meanwhile payer agents with their own escrow (our SDK, ``aep2`` mandates) make paid calls
   to the data API, a few by the official ``x402`` client over ``exact`` (EIP-3009), and the
   settlement processor proves and settles batches on chain until everything is settled.
6. Checks, to the base unit: the chain against the gateway store (every escrow and payee),
   the co-wallet's ledger against the chain (``python -m wallet reconcile``; a card capture
   moves ledger money to the merchant with no on-chain movement, so the chain's escrow must
   equal the ledger's escrow plus the captured card spend, and that is the only difference
   allowed), and the ledger against the gateway store, payment by payment. The last line is
   one JSON object (``balances_match``, ``service_agents_paid``, ``council``, ``cards``,
   ``mandates_settled``, ``batches``, ``gas``…).

Options: ``--goal``, ``--agents`` (4), ``--calls`` per agent (80), ``--in-flight`` requests per
agent (8), ``--max-age`` of a batch in seconds (5), ``--n/--i/--p`` circuit shape (64/4/2),
``--keep`` (leave everything running until Ctrl-C). The soak run of the settlement guarantee:
``--agents 16 --in-flight 16 --max-age 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from web3 import Web3

from aep2.deployment import Deployment
from aep2.sqlite_store import SQLiteStore
from examples.cowallet import CoWallet
from examples.mission import AD_MCC, AD_MERCHANT, JOBS, Budget, MissionReport, run_mission
from examples.orchestrator import planner_from_env
from examples.payee_service import start_process
from examples.processes import start_uvicorn, stop_process
from examples.specialists import SPECIALISTS, start_specialist
from payer import AEP2Auth, Escrow, PayerState, create_intent, create_session_key
from settlement.artifacts import CircuitArtifacts, build_artifacts
from settlement.chain import SettlementClient
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, free_port, mint
from settlement.processor import BatchPolicy, SettlementProcessor
from settlement.provers import LocalProverPool, default_pool_size
from wallet.cards import card_payee

DEPOSIT = 5_000_000  # 5 USDC of escrow per payer (6 decimals)
EXACT_WALLET = 1_000_000
OWNER_DEPOSIT = 5_000_000  # the co-wallet owner's escrow
REVIEW_ABOVE = 250_000  # spends above 0.25 USDC go to review (the council)
DEFAULT_GOAL = "launch a marketing campaign for a new product"

console = Console(stderr=True, highlight=False, soft_wrap=True)


def step(message: str) -> None:
    console.print(f"[bold cyan]==>[/] {message}")


def say(message: str) -> None:
    console.print(f"    [green]•[/] {message}")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


async def run_agent(client_args: dict[str, Any], calls: int, in_flight: int, advance: Any) -> int:
    """One payer agent: ``calls`` paid requests across the data API's three routes,
    ``in_flight`` at a time (so its nonces reach the gateway out of order)."""
    paid = 0
    semaphore = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(timeout=30, **client_args) as client:

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
                advance()

        await asyncio.gather(*(call(k) for k in range(calls)))
    return paid


async def exact_calls(url: str, account: Any, token: str, count: int) -> int:
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


def _fund(w3: Web3, rpc_url: str, token: str, address: str, amount: int) -> None:
    """Gas and ``amount`` MockUSDC for ``address`` (local chain only)."""
    w3.provider.make_request("anvil_setBalance", [address, hex(10**19)])  # type: ignore[arg-type]
    mint(rpc_url, token, address, amount)


async def _watch_settlement(store_path: Path, progress: Progress, task: Any, stop: asyncio.Event) -> None:
    """Keep the settlement bar current: settled mandates of all the store holds."""
    store = SQLiteStore(str(store_path))
    await store.open()
    try:
        while True:
            mandates = await store.mandates()
            progress.update(task, total=max(len(mandates), 1), completed=sum(m.status == "settled" for m in mandates))
            if stop.is_set():
                return
            await asyncio.sleep(0.5)
    finally:
        await store.close()


@dataclass
class _World:
    """What the services run on: the chain, the deployment, the keys and the processes."""

    rpc_url: str
    deployment: Deployment
    deployment_path: Path
    workdir: Path
    w3: Web3
    artifacts: CircuitArtifacts
    wallet: CoWallet
    processor_key: str
    facilitator_key: str
    payee: str  # the data API's
    specialist_payees: dict[str, str]  # kind -> address
    processes: list[subprocess.Popen[bytes]]

    @property
    def processor(self) -> str:
        return str(Account.from_key(self.processor_key).address)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the economy and return its summary (see the module's docstring)."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aep2-demo-"))
    step(f"building the batch circuit N={args.n}, I={args.i}, P={args.p} (cached after the first run)")
    with _progress() as progress:
        progress.add_task("circuit artifacts", total=None)
        artifacts = await asyncio.to_thread(build_artifacts, args.n, args.i, args.p, native_witness=True)
    processes: list[subprocess.Popen[bytes]] = []
    wallet: CoWallet | None = None
    with Anvil() as node:
        step(f"Anvil on {node.rpc_url}; deploying verifier, MockUSDC and Settlement")
        deployment_path = workdir / "deployment.json"
        deployment = deploy(node.rpc_url, anvil_key(0), artifacts, path=deployment_path)
        w3 = Web3(Web3.HTTPProvider(node.rpc_url))
        processor_key, facilitator_key = anvil_key(1), anvil_key(3)
        processor = Account.from_key(processor_key).address
        payee = Account.from_key(anvil_key(2)).address
        specialist_payees = {kind: Account.from_key(anvil_key(4 + k)).address for k, kind in enumerate(SPECIALISTS)}
        try:
            step("setting up the co-wallet with its CLI (init, deposit) and serving it (python -m wallet serve)")
            wallet = CoWallet.create(workdir, deployment=deployment_path, processor=processor)
            _fund(w3, node.rpc_url, deployment.token, wallet.owner_address, OWNER_DEPOSIT)
            wallet.deposit(OWNER_DEPOSIT)
            wallet_url = wallet.serve(free_port())
            # The wallet's settings, owner token included, for the dashboard and the CLI (--keep).
            settings = workdir / "wallet.env"
            settings.touch(mode=0o600)
            settings.write_text("".join(f"{k}={v}\n" for k, v in wallet.env.items()))
            console.print(f"\n    [bold]dashboard:[/] [link={wallet_url}/dashboard]{wallet_url}/dashboard[/link]"
                          f"  (owner token in {settings})\n")
            world = _World(node.rpc_url, deployment, deployment_path, workdir, w3, artifacts, wallet, processor_key,
                           facilitator_key, payee, specialist_payees, processes)
            report, background = await _economy(args, world)
            summary = await _summarise(args, started, world, report, background)
            _emit(summary)
            if args.keep:
                step("--keep: everything stays up (Anvil, wallet, services); Ctrl-C to stop")
                await _until_stopped()
        finally:
            for process in processes:
                stop_process(process)
            if wallet is not None:
                wallet.stop()
    return summary


async def _economy(args: argparse.Namespace, world: _World) -> tuple[MissionReport, dict[str, Any]]:
    """Start the services, run the mission and the background traffic with settlement
    alongside, and settle everything; the mission's report and the background's figures."""
    rpc_url, deployment, w3, wallet, artifacts = world.rpc_url, world.deployment, world.w3, world.wallet, world.artifacts
    processor, processor_key, payee, specialist_payees = world.processor, world.processor_key, world.payee, world.specialist_payees
    step("the owner's standing rules: auto-approve mission intents, council above "
         f"{REVIEW_ABOVE / 1e6:.2f} USDC, deny off-mission spends")
    mission_payees = sorted([*specialist_payees.values(), card_payee(AD_MERCHANT)])
    budget = Budget()
    await wallet.owner("PUT", "/v1/rules", {
        "reviewAbove": REVIEW_ABOVE, "offMission": "deny",
        # Where agents may spend over HTTP, and where the wallet asks for settlement receipts.
        "hostAllowlist": ["127.0.0.1"],
        "autoApprove": {"maxBudget": 2_000_000, "maxDurationSeconds": 7200, "maxPerPaymentCap": 500_000,
                        "payees": mission_payees},
    })
    orchestrator = await wallet.owner("POST", "/v1/agents", {"name": "orchestrator"})
    acquirer = await wallet.owner("POST", "/v1/acquirers", {"name": "ad network acquirer"})
    say(f"agent {orchestrator['agentId']} (orchestrator) holds an API key only; acquirer {acquirer['acquirerId']}")

    step(f"funding {args.agents} background payers with {DEPOSIT / 1e6:.2f} USDC of escrow each")
    payers = []
    for _ in range(args.agents):
        key = "0x" + bytes(Account.create().key).hex()
        _fund(w3, rpc_url, deployment.token, Account.from_key(key).address, DEPOSIT)
        escrow = Escrow(deployment, key, processor=processor)
        escrow.deposit(DEPOSIT)
        escrow.authorize_processor(processor)
        payers.append(escrow)
    exact_payer = Account.from_key(anvil_key(9))
    mint(rpc_url, deployment.token, exact_payer.address, EXACT_WALLET)
    token = payers[0].token
    watched = [payee, *specialist_payees.values()]
    before = {address: token.functions.balanceOf(address).call() for address in watched}

    step("starting the facilitator, the data API, three service agents and the ad network's checkout")
    store_path = world.workdir / "payments.sqlite"
    facilitator, facilitator_url = start_uvicorn(
        "facilitator.app:from_env", free_port(), uvicorn_args=("--factory",), ready_path="/supported",
        name="facilitator", env={"FACILITATOR_RPC_URL": rpc_url, "FACILITATOR_PRIVATE_KEY": world.facilitator_key},
    )
    processes = world.processes
    processes.append(facilitator)
    gateway, url = start_process(free_port(), deployment=world.deployment_path, payee=payee, store=store_path,
                                 processor=processor, facilitator_url=facilitator_url)
    processes.append(gateway)
    specialists = {}
    for kind, address in specialist_payees.items():
        process, specialists[kind] = start_specialist(kind, free_port(), deployment=world.deployment_path, payee=address,
                                                      store=store_path, processor=processor)
        processes.append(process)
        say(f"{kind} agent at {specialists[kind]}, paid to {address}: "
            + ", ".join(f"{o.path} ${o.price / 1e6:.2f}" for o in SPECIALISTS[kind]))
    merchant, merchant_url = start_uvicorn(
        "examples.merchant:app", free_port(), ready_path="/health", name="ad merchant",
        env={"AEP2_WALLET_URL": wallet.url, "AEP2_ACQUIRER_KEY": acquirer["apiKey"], "AEP2_MERCHANT_ID": AD_MERCHANT,
             "AEP2_MCC": AD_MCC},
    )
    processes.append(merchant)

    step(f"{args.provers} prover worker(s) load the proving key ({artifacts.constraints:,} constraints; "
         "tens of seconds at N=64)")
    provers = LocalProverPool(artifacts, size=args.provers)
    try:
        with _progress() as progress:
            progress.add_task("proving keys", total=None)
            await provers.ready()
        store = SQLiteStore(str(store_path))
        await store.open()
        settler = SettlementProcessor(
            store, SettlementClient(rpc_url, deployment.settlement, processor_key), provers, deployment.token,
            policy=BatchPolicy(max_size=artifacts.n, max_age_seconds=args.max_age),
        )
        stop = asyncio.Event()
        settling = asyncio.create_task(settler.run(stop, poll_seconds=1.0, drain=True))

        planner = planner_from_env(os.environ)
        plan = await planner.plan(args.goal)
        await planner.aclose()
        step(f"the orchestrator planned \"{plan.goal}\" with the {plan.planner} planner:")
        for task in plan.tasks:
            say(f"{task.kind}: {task.title}: {task.brief}")

        step(f"the mission runs while {args.agents} background payers make {args.calls} paid calls each; settling alongside")
        auths = [
            AEP2Auth(create_intent(
                escrow.account.key, session_key=(key := create_session_key()), asset=deployment.token, max_amount=DEPOSIT,
                max_per_payment=10_000, valid_for_seconds=24 * 3600, chain_id=deployment.chain_id,
                settlement=deployment.settlement, processor=processor,
            ), key, PayerState(str(world.workdir / f"payer-{escrow.address}.sqlite")))
            for escrow in payers
        ]
        stop_watch = asyncio.Event()
        with _progress() as progress:
            background_bar = progress.add_task("background paid calls", total=args.agents * args.calls)
            mission_bar = progress.add_task("mission steps", total=sum(len(j) for j in JOBS.values()) + 3)
            settled_bar = progress.add_task("mandates settled (proving)", total=1)
            watcher = asyncio.create_task(_watch_settlement(store_path, progress, settled_bar, stop_watch))
            paid, report = await asyncio.gather(
                asyncio.gather(*(
                    run_agent({"auth": auth, "base_url": url}, args.calls, args.in_flight,
                              lambda: progress.advance(background_bar))
                    for auth in auths
                )),
                run_mission(plan, wallet_url=wallet.url, api_key=orchestrator["apiKey"], specialists=specialists,
                            payees=mission_payees, merchant_url=merchant_url, budget=budget, say=say,
                            tick=lambda: progress.advance(mission_bar)),
            )
            exact_paid = await exact_calls(url, exact_payer, deployment.token, args.exact_calls)
            stop.set()
            await settling
            await settler.settle_all()
            stop_watch.set()
            await watcher
        await settler.client.aclose()
    finally:
        await provers.aclose()
    mandates = await store.mandates()
    totals = await store.totals()
    batches = [b for b in await store.batches() if b.status == "settled"]
    await store.close()
    background = {
        "aep2_paid": sum(paid), "exact_paid": exact_paid, "payers": payers, "auths": auths, "exact_payer": exact_payer,
        "token": token, "before": before, "mandates": mandates, "totals": totals, "batches": batches,
        "prove_seconds": sum(r.prove_seconds for r in settler.results), "owner": wallet.owner_address,
    }
    return report, background


async def _summarise(
    args: argparse.Namespace, started: float, world: _World, report: MissionReport, background: dict[str, Any]
) -> dict[str, Any]:
    """Check every balance to the base unit and build the summary."""
    w3, wallet, artifacts = world.w3, world.wallet, world.artifacts
    payee, specialist_payees = world.payee, world.specialist_payees
    step("checking the chain against the gateway store, the ledger against both")
    mandates, totals, token = background["mandates"], background["totals"], background["token"]
    paid_to = {k.lower(): v for k, v in totals["payees"].items()}
    paid_by = {k.lower(): v for k, v in totals["payers"].items()}
    gateway_vs_chain: list[str] = []
    for escrow, auth in zip(background["payers"], background["auths"]):
        spent = paid_by.get(escrow.address.lower(), 0)
        if escrow.balance() != DEPOSIT - spent:
            gateway_vs_chain.append(f"escrow of {escrow.address}: {escrow.balance()} ≠ {DEPOSIT - spent}")
        if auth.spent != spent:
            gateway_vs_chain.append(f"payer {escrow.address} SDK spent {auth.spent} ≠ settled {spent}")
    exact_to = sum(totals["exact_payees"].values())
    for address in [payee, *specialist_payees.values()]:
        expected = background["before"][address] + paid_to.get(address.lower(), 0) + (exact_to if address == payee else 0)
        if token.functions.balanceOf(address).call() != expected:
            gateway_vs_chain.append(f"payee {address}: chain differs from the store's settled total")
    exact_payer = background["exact_payer"]
    if token.functions.balanceOf(exact_payer.address).call() != EXACT_WALLET - totals["exact_payers"].get(exact_payer.address, 0):
        gateway_vs_chain.append("exact payer's wallet differs from the settled exact payments")
    unsettled = [m for m in mandates if m.status != "settled"]
    if unsettled:
        gateway_vs_chain.append(f"{len(unsettled)} mandates not settled")

    # The co-wallet's ledger against the chain. A card capture books card → merchant in the
    # ledger while nothing moves on chain (the merchant is paid off chain, by the card network),
    # so the chain's escrow holds the ledger's escrow plus the captured card spend.
    reconciliation = wallet.reconcile()
    captured = report.card.get("captured", 0)
    ledger_vs_chain: list[str] = []
    for difference in reconciliation["differences"]:
        if difference["check"] == "escrow" and difference["ledger"] + captured == difference["chain"]:
            continue
        ledger_vs_chain.append(f"{difference['check']} {difference['subject']}: ledger {difference['ledger']}, "
                               f"chain {difference['chain']} {difference['detail']}")
    owner_spent = paid_by.get(background["owner"].lower(), 0)
    if reconciliation["chainEscrow"] != OWNER_DEPOSIT - owner_spent:
        gateway_vs_chain.append(f"owner escrow {reconciliation['chainEscrow']} ≠ {OWNER_DEPOSIT} − {owner_spent}")
    if reconciliation["ledgerEscrow"] + captured != reconciliation["chainEscrow"]:
        ledger_vs_chain.append("ledger escrow + captured card spend ≠ chain escrow")

    # The ledger against the gateway store, payment by payment.
    payments = (await wallet.owner("GET", "/v1/payments"))["payments"]
    stored = {m.payment_id: m for m in mandates if m.payer.lower() == background["owner"].lower()}
    ledger_vs_gateway = [
        f"payment {p['paymentId']}: ledger {p['status']} {p['amount']}, store "
        + (f"{stored[p['paymentId']].status} {stored[p['paymentId']].mandate.amount}" if p["paymentId"] in stored else "absent")
        for p in payments
        if p["paymentId"] not in stored or p["status"] != "settled" or stored[p["paymentId"]].mandate.amount != p["amount"]
    ]
    if len(stored) != len(payments):
        ledger_vs_gateway.append(f"{len(stored)} mandates of the owner in the store, {len(payments)} in the ledger")
    mismatches = gateway_vs_chain + ledger_vs_chain + ledger_vs_gateway
    for line in mismatches:
        console.print(f"    [red]MISMATCH[/] {line}")

    kinds = {address.lower(): kind for kind, address in specialist_payees.items()}
    per_agent: dict[str, dict[str, int]] = {kind: {"calls": 0, "received": 0} for kind in specialist_payees}
    for p in payments:
        if p["status"] == "settled" and p["payee"].lower() in kinds:
            per_agent[kinds[p["payee"].lower()]]["calls"] += 1
            per_agent[kinds[p["payee"].lower()]]["received"] += p["amount"]
    reviews = (await wallet.owner("GET", "/v1/reviews?status=all"))["reviews"]
    council = Counter(r["status"] for r in reviews if r["decidedBy"] == "council")
    decisions = (await wallet.owner("GET", "/v1/decisions"))["decisions"]
    off_mission = sum(d["outcome"] == "deny" and d["rule"] == "off_mission" for d in decisions)
    card = report.card
    gas = sum(w3.eth.get_transaction_receipt(b.tx_hash)["gasUsed"] for b in background["batches"])
    settled = [m for m in mandates if m.status == "settled"]
    x402_spend = sum(p["amount"] for p in payments if p["status"] == "settled")
    summary = {
        "goal": report.plan.goal,
        "planner": report.plan.planner,
        "intent": {"id": report.intent.get("id"), "budget": report.intent.get("budget"),
                   "owner_signatures": len({m.mandate.intent_id for m in stored.values()}),
                   "signature": report.owner_signature},
        "service_agents_paid": sum(1 for a in per_agent.values() if a["calls"]),
        "service_agents": per_agent,
        "spend_by_agent": {"orchestrator": {"x402": x402_spend, "card": captured, "total": x402_spend + captured}},
        "council": {"approved": council.get("approved", 0), "denied": council.get("denied", 0)},
        "off_mission_denied": off_mission,
        "cards": [{"id": card.get("id"), "merchant": card.get("merchantId"), "amount": card.get("amount"),
                   "captured": captured, "released": card.get("amount", 0) - captured, "status": card.get("status")}],
        "calls_paid": background["aep2_paid"] + background["exact_paid"] + len(report.calls),
        "aep2_calls_paid": background["aep2_paid"],
        "exact_calls_paid": background["exact_paid"],
        "mission_calls_paid": len(report.calls),
        "mandates_settled": len(settled),
        "batches": len(background["batches"]),
        "gas": gas,
        "prove_seconds": round(background["prove_seconds"], 2),
        "provers": args.provers,
        "gas_per_mandate": round(gas / max(len(settled), 1)),
        "payee_received": sum(totals["payees"].values()) + sum(totals["exact_payees"].values()),
        "checks": {"gateway_vs_chain": not gateway_vs_chain, "ledger_vs_chain": not ledger_vs_chain,
                   "ledger_vs_gateway": not ledger_vs_gateway},
        "balances_match": not mismatches,
        "dashboard": f"{wallet.url}/dashboard",
        "circuit": {"n": artifacts.n, "i": artifacts.i, "p": artifacts.p, "constraints": artifacts.constraints},
        "seconds": round(time.monotonic() - started, 1),
    }
    return summary


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM. Handled here, not as KeyboardInterrupt, so the services
    are stopped either way, and also when the shell started the demo with SIGINT ignored."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _emit(summary: dict[str, Any]) -> None:
    """The human summary, then the one-line JSON summary (the demo's last line)."""
    agents = ", ".join(f"{k} {v['calls']} calls ${v['received'] / 1e6:.2f}" for k, v in summary["service_agents"].items())
    card = summary["cards"][0]
    print(
        f"\nplanner: {summary['planner']}; intent {summary['intent']['id']} signed once by the owner "
        f"({summary['intent']['signature'][:18]}…)\n"
        f"{summary['service_agents_paid']} service agents paid ({agents}); council approved {summary['council']['approved']}, "
        f"denied {summary['council']['denied']}; {summary['off_mission_denied']} off-mission denial; "
        f"card {card['status']}: captured ${card['captured'] / 1e6:.2f} of ${card['amount'] / 1e6:.2f}, "
        f"${card['released'] / 1e6:.2f} released\n"
        f"{summary['calls_paid']} paid calls; {summary['mandates_settled']} mandates settled in {summary['batches']} batches "
        f"({summary['prove_seconds']} s proving, {summary['gas']:,} gas, {summary['gas_per_mandate']} per mandate); "
        f"balances match: {summary['balances_match']} ({summary['seconds']} s)"
    )
    print(json.dumps(summary), flush=True)


def cli() -> int:
    """``python -m examples.demo``: exit status 0 when every balance matches."""
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", default=DEFAULT_GOAL, help=f"the orchestrator's goal (default: {DEFAULT_GOAL!r})")
    parser.add_argument("--agents", type=int, default=4, help="background payer agents")
    parser.add_argument("--calls", type=int, default=80, help="paid calls per background agent")
    parser.add_argument("--exact-calls", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=8, help="concurrent requests per agent")
    parser.add_argument("--max-age", type=float, default=5.0, help="batch age that cuts a batch (s)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--provers", type=int, default=default_pool_size(),
                        help="prover worker processes proving batches at once (default: one per core)")
    parser.add_argument("--i", type=int, default=4)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    try:
        summary = asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        return 130
    return 0 if summary["balances_match"] else 1


if __name__ == "__main__":
    sys.exit(cli())
