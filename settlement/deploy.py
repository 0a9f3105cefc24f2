"""Deploying the contracts from Python (web3.py) and writing the deployment file.

``deploy(rpc_url, deployer_key, artifacts)`` compiles the circuit's generated Groth16
verifier (solc-js behind ``contracts/tools/solc``), deploys it, MockUSDC (local chains
only: pass ``token=`` to use an existing ERC-20), the ``PoseidonT5`` library
(npm poseidon-solidity) and Settlement linked to it, and returns a ``Deployment``
(docs/PROTOCOL.md §6).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from aep2.deployment import PROJECT_ROOT, CircuitShape, Deployment, contract_artifact

from .artifacts import VERIFIER_CONTRACT, CircuitArtifacts

__all__ = ["compile_verifier", "deploy", "DEFAULT_WITHDRAWAL_DELAY", "DEFAULT_SETTLEMENT_WINDOW", "DEV_CHAIN_IDS"]

SOLC = PROJECT_ROOT / "contracts" / "tools" / "solc"
#: Seconds between requesting and executing a withdrawal; at least the settlement window.
DEFAULT_WITHDRAWAL_DELAY = 24 * 3600
#: Seconds a served mandate has to settle (PROTOCOL.md §7): the processor's batch age plus
#: proving and inclusion must stay well inside it.
DEFAULT_SETTLEMENT_WINDOW = 3600
#: Chains on which a development-setup verifier may be deployed (Anvil, Hardhat/Ganache).
DEV_CHAIN_IDS = (31337, 1337)


def compile_verifier(source: Path) -> dict[str, Any]:
    """Compile the generated verifier; returns ``{"abi", "bytecode"}``. Cached next to the source."""
    cached = source.with_suffix(".json")
    if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
        return json.loads(cached.read_text())
    request = {
        "language": "Solidity",
        "sources": {source.name: {"content": source.read_text()}},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "evmVersion": "cancun",
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    result = subprocess.run(
        [str(SOLC), "--standard-json"], input=json.dumps(request), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"solc failed: {result.stderr.strip()}")
    output = json.loads(result.stdout)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("verifier does not compile: " + "; ".join(e["formattedMessage"] for e in errors))
    contract = output["contracts"][source.name][VERIFIER_CONTRACT]
    compiled = {"abi": contract["abi"], "bytecode": "0x" + contract["evm"]["bytecode"]["object"]}
    cached.write_text(json.dumps(compiled))
    return compiled


def _deploy_contract(w3: Web3, account: Any, artifact: dict[str, Any], *args: Any) -> str:
    contract = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = contract.constructor(*args).build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "gas": 15_000_000,  # PoseidonT5 alone takes several million
            "chainId": w3.eth.chain_id,
        }
    )
    tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise RuntimeError(f"deployment of {artifact.get('name', 'contract')} reverted")
    return receipt["contractAddress"]


def _link(artifact: dict[str, Any], libraries: dict[str, str]) -> dict[str, Any]:
    """``artifact`` with its library placeholders replaced by the deployed addresses."""
    code = artifact["bytecode"].removeprefix("0x")
    for references in artifact["linkReferences"].values():
        for name, spots in references.items():
            address = libraries[name].removeprefix("0x").lower()
            for spot in spots:
                start = 2 * spot["start"]
                code = code[:start] + address + code[start + 2 * spot["length"] :]
    return {**artifact, "bytecode": "0x" + code}


def deploy(
    rpc_url: str,
    deployer_key: str,
    artifacts: CircuitArtifacts,
    *,
    token: str | None = None,
    withdrawal_delay: int = DEFAULT_WITHDRAWAL_DELAY,
    settlement_window: int = DEFAULT_SETTLEMENT_WINDOW,
    path: str | Path | None = None,
) -> Deployment:
    """Deploy verifier, token (unless given), PoseidonT5 and Settlement; write ``path`` if given.

    ``withdrawal_delay`` and ``settlement_window`` are seconds, the delay at least the window.
    Raises ``ValueError`` for a delay shorter than the window or for development-setup keys
    on a chain outside ``DEV_CHAIN_IDS`` (the contract refuses both too), and
    ``RuntimeError`` when compilation or a deployment transaction fails.
    """
    if not 0 < settlement_window <= withdrawal_delay:
        raise ValueError(
            f"settlement_window: {settlement_window} s must be positive and at most the withdrawal delay "
            f"({withdrawal_delay} s)"
        )
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
    if artifacts.development_setup and w3.eth.chain_id not in DEV_CHAIN_IDS:
        raise ValueError(
            f"artifacts: keys from the unsafe development setup cannot be deployed to chain {w3.eth.chain_id}; "
            "build with AEP2_ZKEY=<ceremony .zkey>"
        )
    account = Account.from_key(deployer_key)
    verifier = _deploy_contract(w3, account, compile_verifier(artifacts.solidity_verifier))
    if token is None:
        token = _deploy_contract(w3, account, contract_artifact("MockUSDC"))
    poseidon = _deploy_contract(w3, account, contract_artifact("PoseidonT5"))
    settlement = _deploy_contract(
        w3, account, _link(contract_artifact("Settlement"), {"PoseidonT5": poseidon}), verifier, withdrawal_delay,
        settlement_window,
    )
    deployment = Deployment(
        chain_id=w3.eth.chain_id,
        rpc_url=rpc_url,
        settlement=settlement,
        token=Web3.to_checksum_address(token),
        verifier=verifier,
        circuit=CircuitShape(artifacts.n, artifacts.i, artifacts.p, artifacts.hash),
        deployed_at=w3.eth.block_number,
        settlement_window=settlement_window,
    )
    if path is not None:
        deployment.save(path)
    return deployment
