"""Services of the examples as child processes: one command each (``uvicorn`` or a module's
own ``serve``), configured through the environment as in production."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import httpx

__all__ = ["start_command", "start_uvicorn", "stop_process"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def start_uvicorn(
    app: str,
    port: int,
    *,
    env: Mapping[str, str],
    ready_path: str,
    name: str,
    uvicorn_args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``uvicorn app`` (``"module:attr"``; add ``"--factory"`` to ``uvicorn_args`` for a
    factory) on ``127.0.0.1:port`` with ``env`` over this process's environment; returns the
    process and its base URL once ``GET ready_path`` answers 200 (see ``start_command``).
    """
    argv = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *uvicorn_args]
    return start_command(argv, port, env=env, ready_path=ready_path, name=name, timeout=timeout)


def start_command(
    argv: list[str],
    port: int,
    *,
    env: Mapping[str, str],
    ready_path: str,
    name: str,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``python argv…`` (a server listening on ``127.0.0.1:port``) with ``env`` over this
    process's environment; returns the process and its base URL once ``GET ready_path``
    answers 200. The log goes to a temporary file (a pipe nobody reads would fill up and
    freeze the service). Raises ``RuntimeError`` naming ``name`` (with the log) if it exits or
    does not answer within ``timeout`` seconds.
    """
    with tempfile.NamedTemporaryFile(prefix=f"aep2-{name.replace(' ', '-')}-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = Path(log.name).read_text(errors="replace")
            raise RuntimeError(f"the {name} exited during start-up ({log.name}): {error.strip()}")
        try:
            if httpx.get(url + ready_path, timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"the {name} did not answer within {timeout} s (log: {log.name})")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started by ``start_uvicorn`` (terminate, then kill after 15 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
