"""A throwaway PostgreSQL server for development, tests and benchmarks, like
``settlement.devchain.Anvil`` for the chain.

The server is Debian's ``postgresql`` package (``make setup`` installs it), started by hand
rather than as the system cluster: ``initdb`` into a temporary directory, ``pg_ctl start``
with a socket in that directory, ``127.0.0.1`` on a free port, trust authentication and
``fsync=off`` (nothing here must survive a crash). ``initdb`` and ``pg_ctl`` refuse to run as
root, so as root they run as the ``postgres`` user (``runuser``) in a directory it owns.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import asyncpg

__all__ = ["PostgresServer", "find_bindir"]

_T = TypeVar("_T")


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl``.

    Raises ``FileNotFoundError`` naming the package to install when there is none.
    """
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    if not found:
        raise FileNotFoundError(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install Debian's "
            "'postgresql' package (`make setup` does: apt-get install -y postgresql)"
        )
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in its own temporary directory, superuser ``postgres``, no password.

    ``start()`` runs ``initdb`` and ``pg_ctl start`` (about a second); ``stop()`` stops it and
    removes the directory. ``create_database()`` and ``drop_database(name)`` may be called from
    any thread, inside a running event loop or not: they run on the server's own admin
    connection in a private thread.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.root = Path(tempfile.mkdtemp(prefix="aep2-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self._names = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admin: asyncpg.Connection | None = None

    def url(self, database: str, *, driver: str = "asyncpg") -> str:
        """The SQLAlchemy URL of ``database`` on this server (``driver`` after ``postgresql+``)."""
        return f"postgresql+{driver}://postgres@{self.host}:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        """The libpq URL of ``database`` (asyncpg, psql)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self) -> PostgresServer:
        """``initdb``, ``pg_ctl start`` and an admin connection; ``self``.

        Raises ``RuntimeError`` with the tool's stderr and the end of the server log when
        ``initdb`` or ``pg_ctl`` fails.
        """
        """Run ``initdb`` and ``pg_ctl start``; returns ``self``. Raises ``RuntimeError`` with the
        tool's error and the server log when one fails."""
        as_root = os.geteuid() == 0
        if as_root:  # initdb refuses root: the postgres user must own the directory it writes
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.socket_dir.mkdir()
        if as_root:
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-k {self.socket_dir} -c listen_addresses={self.host} -p {self.port} -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="postgres-admin", daemon=True).start()
        self._admin = self._call(asyncpg.connect(self.dsn("postgres")))
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self._loop is not None:
            if self._admin is not None:
                self._call(self._admin.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, template: str = "template1") -> str:
        """A new database, a copy of ``template`` (by default an empty one); its name.

        ``template`` must have no open connections: PostgreSQL refuses to copy it otherwise.
        """
        name = f"test_{next(self._names)}"
        assert self._admin is not None, "start() the server first"
        self._call(self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY = FILE_COPY'))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it."""
        assert self._admin is not None, "start() the server first"
        self._call(self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
