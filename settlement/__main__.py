"""Command line of the settlement side.

::

    python -m settlement build-circuit --n 64 --i 4 --p 2
    python -m settlement deploy --rpc-url http://127.0.0.1:8545 --key $DEPLOYER_KEY --out build/deployment.json
    python -m settlement run --deployment build/deployment.json --store payments.sqlite --key $AEP2_PROCESSOR_KEY

``run`` settles the store's accepted mandates by the batch policy (``--max-age`` seconds,
batch size the circuit's N) until interrupted, or once with ``--once``. ``--provers N``
worker processes (default: one per core) each load the proving key and prove a batch at a
time, so up to N batches are proven at once; ``--ray ADDRESS`` proves on actors of a Ray cluster
instead (``settlement.ray_provers``). Keys may come from
``$AEP2_PROCESSOR_KEY`` / ``$AEP2_DEPLOYER_KEY`` instead of ``--key``. ``build-circuit`` and
``run`` also build circom's C++ witness generator once when its toolchain is present
(``AEP2_NATIVE_WITNESS=0``: WASM only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from aep2.deployment import Deployment
from aep2.stores import create_store

from .artifacts import build_artifacts, find_native_witness
from .chain import SettlementClient
from .deploy import DEFAULT_SETTLEMENT_WINDOW, DEFAULT_WITHDRAWAL_DELAY, deploy
from .processor import BatchPolicy, SettlementProcessor
from .provers import LocalProverPool, default_pool_size

DEFAULT_SHAPE = (64, 4, 2)


def _key(args: argparse.Namespace, variable: str) -> str:
    key = args.key or os.environ.get(variable)
    if not key:
        raise SystemExit(f"error: pass --key or set {variable}")
    return key


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _find_artifacts(deployment: Deployment):
    artifacts = build_artifacts(deployment.circuit.n, deployment.circuit.i, deployment.circuit.p,
                                native_witness=True)
    if artifacts.hash != deployment.circuit.hash:
        raise SystemExit(
            f"error: circuit artifacts {artifacts.hash} differ from the deployed verifier's {deployment.circuit.hash}"
        )
    return artifacts


async def _ray_pool(args: argparse.Namespace, artifacts):
    # Imported only when asked for: ray takes over a second to import.
    from .ray_provers import RayProverPool

    pool = RayProverPool(artifacts, args.ray_provers, address=args.ray)
    try:
        await pool.start()
    except ConnectionError as exc:
        raise SystemExit(f"error: no Ray cluster at --ray {args.ray}: {exc}") from exc
    return pool


async def _run(args: argparse.Namespace) -> int:
    key = _key(args, "AEP2_PROCESSOR_KEY")
    deployment = Deployment.load(args.deployment)
    artifacts = _find_artifacts(deployment)
    provers = await _ray_pool(args, artifacts) if args.ray else LocalProverPool(artifacts, size=args.provers)
    store = create_store(args.store)
    await store.open()
    client = SettlementClient(args.rpc_url or deployment.rpc_url, deployment.settlement, key)
    processor = SettlementProcessor(
        store,
        client,
        provers,
        deployment.token,
        policy=BatchPolicy(max_size=artifacts.n, max_age_seconds=args.max_age),
    )
    try:
        if args.once:
            results = await processor.settle_all()
            for result in results:
                print(json.dumps({"batch": result.batch_id, "tx": result.tx_hash, "mandates": result.mandates,
                                  "gas": result.gas_used, "prove_seconds": round(result.prove_seconds, 2)}))
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await processor.run(stop, poll_seconds=args.poll)
        return 0
    finally:
        await provers.aclose()
        await client.aclose()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settlement", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-circuit", help="compile the batch circuit, run the (development) setup "
                                "and build circom's C++ witness generator when g++, GMP, nlohmann-json and nasm are here")
    for name, default in zip(("--n", "--i", "--p"), DEFAULT_SHAPE):
        build.add_argument(name, type=int, default=default)

    dep = commands.add_parser("deploy", help="deploy verifier, MockUSDC and Settlement")
    dep.add_argument("--rpc-url", required=True)
    dep.add_argument("--key", help="deployer key (or $AEP2_DEPLOYER_KEY)")
    dep.add_argument("--out", required=True, help="deployment file to write")
    dep.add_argument("--token", help="existing ERC-20 to use instead of deploying MockUSDC")
    dep.add_argument("--withdrawal-delay", type=int, default=DEFAULT_WITHDRAWAL_DELAY, help="seconds")
    dep.add_argument(
        "--settlement-window", type=int, default=DEFAULT_SETTLEMENT_WINDOW,
        help="seconds a served mandate has to settle (at most the withdrawal delay)",
    )
    for name, default in zip(("--n", "--i", "--p"), DEFAULT_SHAPE):
        dep.add_argument(name, type=int, default=default)

    run = commands.add_parser("run", help="settle accepted mandates")
    run.add_argument("--deployment", default=os.environ.get("AEP2_DEPLOYMENT"))
    run.add_argument(
        "--store", default=os.environ.get("AEP2_STORE", "payments.sqlite"),
        help="SQLite file, or postgresql://… URL of the store the gateways share",
    )
    run.add_argument("--rpc-url", help="override the deployment's RPC URL")
    run.add_argument("--key", help="processor key (or $AEP2_PROCESSOR_KEY)")
    run.add_argument("--max-age", type=float, default=30.0, help="cut a batch when its oldest mandate is this old (s)")
    run.add_argument("--poll", type=float, default=1.0)
    run.add_argument(
        "--provers", type=_positive, default=default_pool_size(),
        help="prover worker processes, each holding the proving key (default: one per core)",
    )
    run.add_argument("--once", action="store_true", help="settle what is pending now, then exit")
    run.add_argument(
        "--ray", metavar="ADDRESS",
        help="prove on Ray actors instead: 'local' starts a Ray here, 'auto' joins the running cluster, "
        "ray://host:10001 reaches one through Ray Client",
    )
    run.add_argument("--ray-provers", type=_positive, metavar="N", help="prover actors on Ray (default: one per CPU)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "build-circuit":
        artifacts = build_artifacts(args.n, args.i, args.p, native_witness=True)
        native = find_native_witness(artifacts)
        print(json.dumps({"directory": str(artifacts.directory), "constraints": artifacts.constraints,
                          "hash": artifacts.hash, "developmentSetup": artifacts.development_setup,
                          "nativeWitness": str(native.directory) if native else None}))
        return 0
    if args.command == "deploy":
        artifacts = build_artifacts(args.n, args.i, args.p)
        deployment = deploy(
            args.rpc_url, _key(args, "AEP2_DEPLOYER_KEY"), artifacts, token=args.token,
            withdrawal_delay=args.withdrawal_delay, settlement_window=args.settlement_window, path=args.out,
        )
        print(json.dumps(deployment.to_json()))
        return 0
    if not args.deployment:
        raise SystemExit("error: pass --deployment or set AEP2_DEPLOYMENT")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
