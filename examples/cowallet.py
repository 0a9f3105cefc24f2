"""The co-wallet as the demo runs it: its own process, set up by its owner with the CLI and API.

``CoWallet.create`` writes the environment a production wallet reads (database, sealing key,
owner keystore and password, owner token, deployment, processor, council) into a work
directory and runs ``python -m wallet init``; ``deposit`` runs ``python -m wallet deposit``
(on chain, then booked); ``serve`` starts ``python -m wallet serve`` as a child process. The
owner's HTTP calls (rules, agents, acquirers, reads) carry the owner token; nothing here
holds an agent's key for it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from wallet.keys import Sealer

from .processes import PROJECT_ROOT, start_command, stop_process

__all__ = ["CoWallet"]


@dataclass
class CoWallet:
    """One co-wallet: ``env`` its configuration, ``owner_address`` the escrow's payer, ``url``
    once served. Raises ``RuntimeError`` with the command's output when a CLI command fails."""

    env: dict[str, str]
    owner_address: str = ""
    url: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, workdir: Path, *, deployment: Path, processor: str) -> CoWallet:
        """Configure a wallet in ``workdir`` and ``init`` it (schema and owner keystore). The
        council is ``AEP2_WALLET_COUNCIL`` from this environment, ``offline`` if unset."""
        env = {
            "AEP2_WALLET_DB": f"sqlite+aiosqlite:///{workdir / 'wallet.sqlite'}",
            "AEP2_WALLET_KEY": Sealer.generate_key(),
            "AEP2_WALLET_OWNER_PASSWORD": secrets.token_urlsafe(16),
            "AEP2_WALLET_OWNER_KEYSTORE": str(workdir / "wallet-owner.json"),
            "AEP2_WALLET_OWNER_TOKEN": secrets.token_urlsafe(24),
            "AEP2_DEPLOYMENT": str(deployment),
            "AEP2_PROCESSOR": processor,
            "AEP2_WALLET_COUNCIL": os.environ.get("AEP2_WALLET_COUNCIL", "offline"),
        }
        wallet = cls(env)
        wallet.owner_address = wallet.cli("init").strip()
        return wallet

    def cli(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """``python -m wallet args…`` with this wallet's environment; its standard output when
        its exit status is one of ``ok``."""
        done = subprocess.run([sys.executable, "-m", "wallet", *args], cwd=PROJECT_ROOT, env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=120)
        if done.returncode not in ok:
            raise RuntimeError(f"python -m wallet {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def deposit(self, amount: int) -> None:
        """Deposit ``amount`` base units into the owner's escrow (the owner holds the tokens)."""
        self.cli("deposit", str(amount))

    def serve(self, port: int) -> str:
        """Start ``python -m wallet serve`` on ``127.0.0.1:port``; its base URL."""
        argv = ["-m", "wallet", "serve", "--port", str(port), "--log-level", "warning", "--rate-limit", "1000/second"]
        self.process, self.url = start_command(argv, port, env=self.env, ready_path="/openapi.json", name="co-wallet")
        return self.url

    async def owner(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """An owner call on the API (owner token); the JSON answer. Raises ``RuntimeError``
        with the problem for any status but 2xx."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30,
                                     headers={"Authorization": f"Bearer {self.env['AEP2_WALLET_OWNER_TOKEN']}"}) as http:
            response = await http.request(method, path, json=body)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def reconcile(self) -> dict[str, Any]:
        """``python -m wallet reconcile --json``: the ledger against the chain (exit 1 on a
        difference is an answer here, not a failure)."""
        report: dict[str, Any] = json.loads(self.cli("reconcile", "--json", ok=(0, 1)))
        return report

    def stop(self) -> None:
        """Stop the served wallet, if any."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None
