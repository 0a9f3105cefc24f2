"""A local Anvil node for the demo, the tests and the benchmarks.

``with Anvil() as node:`` starts ``node_modules/.bin/anvil`` on a free loopback port, waits
until it answers ``eth_chainId`` and stops it (and only it) on exit. Its accounts are the
well-known Anvil development keys: never use them outside a local chain.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["Anvil", "anvil_key", "free_port", "mint"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ANVIL = PROJECT_ROOT / "node_modules" / ".bin" / "anvil"

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


def anvil_key(index: int) -> str:
    """Private key of Anvil's development account ``index`` (public knowledge: local use only)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(account.key).hex()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Anvil:
    """A running Anvil process on ``127.0.0.1:port`` (``rpc_url``), chain id ``chain_id``."""

    def __init__(self, *, port: int | None = None, chain_id: int = 31337, block_time: float | None = None) -> None:
        self.port = port or free_port()
        self.chain_id = chain_id
        self.block_time = block_time
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> Anvil:
        """Start the node and wait until it answers; raises ``RuntimeError`` if it does not."""
        if not ANVIL.exists():
            raise RuntimeError(f"{ANVIL} missing: run `make setup` (npm install) first")
        args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id)]
        args += ["--gas-limit", "60000000", "--code-size-limit", "100000"]
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"anvil exited: {error.strip()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"anvil did not answer on {self.rpc_url} within {timeout} s")

    def ready(self) -> bool:
        """Whether the node answers ``eth_chainId``."""
        request = urllib.request.Request(
            self.rpc_url,
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return int(json.loads(response.read())["result"], 16) == self.chain_id
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node (idempotent)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def mint(rpc_url: str, token: str, to: str, amount: int, *, key: str | None = None) -> None:
    """Mint MockUSDC (local chains only): ``amount`` base units to ``to``, sent from ``key``."""
    from eth_account import Account
    from web3 import Web3

    from aep2.deployment import contract_artifact

    w3 = Web3(Web3.HTTPProvider(rpc_url))
    sender = Account.from_key(key or anvil_key(0))
    contract = w3.eth.contract(address=token, abi=contract_artifact("MockUSDC")["abi"])
    tx = contract.functions.mint(to, amount).build_transaction(
        {
            "from": sender.address,
            "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
            "gas": 100_000,
            "chainId": w3.eth.chain_id,
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction))
    if receipt["status"] != 1:
        raise RuntimeError("mint reverted")
