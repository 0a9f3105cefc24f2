"""Shared fixtures: a real Anvil node, the compiled contracts deployed with a small batch
circuit, funded payers, and a real uvicorn server on loopback for any ASGI app."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
import uvicorn
from hypothesis import settings
from eth_account import Account
from web3 import Web3
from web3._utils.http_session_manager import HTTPSessionManager

from aep2.deployment import Deployment
from payer import Escrow
from settlement.artifacts import CircuitArtifacts, build_artifacts
from settlement.deploy import deploy
from settlement.devchain import Anvil, anvil_key, mint

if TYPE_CHECKING:  # imported for real as a plugin, below: importing it here would skip its assertion rewriting
    from postgres_fixtures import PostgresServer

# A throwaway PostgreSQL server for any package's tests (``postgresql_server``).
pytest_plugins = ["postgres_fixtures"]

# Property tests assert behaviour, not speed: no per-example deadline on these noisy 2-core machines.
settings.register_profile("aep2", deadline=None)
settings.load_profile("aep2")

#: Shape of the circuit the chain tests deploy: small, so setup and proofs take seconds.
SMALL_SHAPE = (4, 2, 2)
PROCESSOR_KEY = anvil_key(1)
PAYEE = Account.from_key(anvil_key(2)).address


@pytest.fixture(autouse=True)
def fresh_web3_session_lock() -> None:
    """A fresh lock for web3.py's HTTP session cache before every test.

    web3.py 7 guards the session caches of all providers with one class-level
    ``threading.Lock`` and takes it for async providers in an executor thread: an async call
    cancelled while waiting for it (a processor task killed on purpose in a crash test) leaves
    it held for good, and every later sync provider in the process blocks on its first
    request. A test must not inherit another test's cancelled calls.
    """
    HTTPSessionManager._lock = threading.Lock()


@pytest.fixture(scope="session")
def payee() -> str:
    """The example service's payee address (Anvil account 2)."""
    return PAYEE


@pytest.fixture(scope="session")
def processor_key() -> str:
    """The settlement processor's key (Anvil account 1)."""
    return PROCESSOR_KEY


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def small_artifacts() -> CircuitArtifacts:
    return build_artifacts(*SMALL_SHAPE)


@pytest.fixture(scope="session")
def deployment(anvil: Anvil, small_artifacts: CircuitArtifacts, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    path = tmp_path_factory.mktemp("deployment") / "deployment.json"
    return deploy(anvil.rpc_url, anvil_key(0), small_artifacts, path=path)


@pytest.fixture
def make_payer(anvil: Anvil, deployment: Deployment) -> Callable[..., Escrow]:
    """``make_payer(escrow=…, wallet=…, processor=…)``: a fresh funded payer account."""
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))

    def factory(*, escrow: int = 1_000_000, wallet: int = 0, processor: str | None = None) -> Escrow:
        account = Account.create()
        w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])
        mint(anvil.rpc_url, deployment.token, account.address, escrow + wallet)
        consented = processor or Account.from_key(PROCESSOR_KEY).address
        payer = Escrow(deployment, account.key, processor=consented)
        if escrow:
            payer.deposit(escrow)
        payer.authorize_processor(consented)
        return payer

    return factory


class LiveServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], LiveServer]]:
    """``serve(app)`` starts ``app`` on loopback and returns the running ``LiveServer``."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "payments.sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """``new_store_location()``: where a new, empty payment store lives, on the backend named
    by the parameter: a SQLite file in ``tmp_path``, or a fresh database on the session's
    PostgreSQL server (a ``postgresql://`` URL; dropped after the test). Either goes to
    ``aep2.stores.create_store``."""
    created: list[str] = []
    files = itertools.count()
    server: PostgresServer | None = (
        request.getfixturevalue("postgresql_server") if request.param == "postgresql" else None
    )

    def location() -> str:
        if server is None:
            return str(tmp_path / f"payments{next(files)}.sqlite")
        created.append(server.create_database())
        return server.dsn(created[-1])

    yield location
    for name in created:
        assert server is not None
        server.drop_database(name)

