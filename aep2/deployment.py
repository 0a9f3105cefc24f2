"""The deployment file (docs/PROTOCOL.md §6) and the compiled contracts' ABIs.

Deployment writes the file; the gateway, the payer SDK and the settlement processor read
it (path from ``$AEP2_DEPLOYMENT`` by default). ABIs and bytecode come from forge's
``out/`` directory (``make contracts``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

__all__ = ["Deployment", "CircuitShape", "contract_artifact", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CircuitShape:
    """The batch circuit the verifier was generated for: N mandates, I intents, P payees."""

    n: int
    i: int
    p: int
    hash: str


@dataclass(frozen=True)
class Deployment:
    """Addresses of one deployment on one chain; ``settlement_window`` is the Settlement's
    ``settlementWindow()`` in seconds (docs/PROTOCOL.md §7)."""

    chain_id: int
    rpc_url: str
    settlement: str
    token: str
    verifier: str
    circuit: CircuitShape
    deployed_at: int
    settlement_window: int

    @property
    def network(self) -> str:
        """CAIP-2 id, ``eip155:<chainId>``."""
        return f"eip155:{self.chain_id}"

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "chainId": self.chain_id,
            "rpcUrl": self.rpc_url,
            "settlement": self.settlement,
            "token": self.token,
            "verifier": self.verifier,
            "circuit": asdict(self.circuit),
            "settlementWindow": self.settlement_window,
            "deployedAt": self.deployed_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        """Parse the file's JSON; raises ``ValueError`` naming a missing or bad field."""
        try:
            circuit = data["circuit"]
            return cls(
                chain_id=int(data["chainId"]),
                rpc_url=str(data["rpcUrl"]),
                settlement=to_checksum_address(data["settlement"]),
                token=to_checksum_address(data["token"]),
                verifier=to_checksum_address(data["verifier"]),
                circuit=CircuitShape(int(circuit["n"]), int(circuit["i"]), int(circuit["p"]), str(circuit["hash"])),
                deployed_at=int(data["deployedAt"]),
                settlement_window=int(data["settlementWindow"]),
            )
        except KeyError as exc:
            raise ValueError(f"deployment: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"deployment: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Deployment:
        """Read the file at ``path`` or ``$AEP2_DEPLOYMENT``; raises ``FileNotFoundError``/``ValueError``."""
        location = path or os.environ.get("AEP2_DEPLOYMENT")
        if not location:
            raise FileNotFoundError("no deployment file: pass a path or set AEP2_DEPLOYMENT")
        return cls.from_json(json.loads(Path(location).read_text()))


@lru_cache(maxsize=None)
def contract_artifact(name: str) -> dict[str, Any]:
    """``{"abi": [...], "bytecode": "0x…", "linkReferences": {...}}`` of a contract compiled by
    forge into ``out/`` (library placeholders in the bytecode are listed in ``linkReferences``).

    Raises ``FileNotFoundError`` telling to run ``make contracts`` when it is missing.
    """
    path = PROJECT_ROOT / "out" / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make contracts` (forge build) first")
    data = json.loads(path.read_text())
    bytecode = data["bytecode"]
    return {"abi": data["abi"], "bytecode": bytecode["object"], "linkReferences": bytecode.get("linkReferences", {})}
