"""Proving-key loading: ``key_read_seconds_n*``, ``key_ready_seconds_n*_fork_2`` (against
``_spawn_2``) and ``key_pss_mib_n*_fork_2`` (against ``_spawn_2``).

groth16py's ``ProvingKey.load`` spends nearly all its time validating the G2 points of the
key (the ``b_g2_query``: arkworks' on-curve and subgroup check of each point); reading the
file takes a fraction of a second (``key_read_seconds``, page cache warm). For ``WORKERS``
prover processes, each N compares, in fresh processes (``bench._keyload``):

- ``spawn``: ``WORKERS`` processes each load the key, at once, as ``LocalProverPool`` does;
- ``fork``: one process loads it, then forks ``WORKERS`` children sharing it copy-on-write.

``key_ready_seconds`` is the wall time from starting the processes until every worker holds
a key. ``key_pss_mib`` is the proportional set size summed over every process that stays
(the fork's loader included): memory shared copy-on-write counts once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from settlement.artifacts import build_artifacts

from .common import BATCH_SIZES, INTENT_SLOTS, PAYEE_SLOTS, log, row

WORKERS = 2


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for process {pid}")


def _ready(commands: list[list[str]]) -> tuple[float, float]:
    """Start ``commands`` at once; (seconds until each printed ``ready``, their total PSS)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for c in commands]
    try:
        pids = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"key loader {proc.args} failed")
            pids += [int(pid) for pid in line[1:]]
        seconds = time.perf_counter() - started
        pss = sum(_pss_mib(pid) for pid in pids)
    finally:
        for proc in procs:
            proc.communicate()
    if any(proc.returncode for proc in procs):
        raise RuntimeError("a key loader exited with an error")
    return seconds, pss


def run() -> list[dict[str, Any]]:
    rows = []
    loader = [sys.executable, "-m", "bench._keyload"]
    for n in BATCH_SIZES:
        key = str(build_artifacts(n, INTENT_SLOTS, PAYEE_SLOTS).proving_key)
        started = time.perf_counter()
        size = len(Path(key).read_bytes())
        read_seconds = time.perf_counter() - started
        log(f"keyload n={n}: {size / 2**20:.0f} MiB key, {WORKERS} spawned loads")
        spawn_seconds, spawn_pss = _ready([loader + ["load", key] for _ in range(WORKERS)])
        log(f"keyload n={n}: one load forked {WORKERS} times")
        fork_seconds, fork_pss = _ready([loader + ["fork", key, str(WORKERS)]])
        rows.append(row(f"key_read_seconds_n{n}", read_seconds, "s"))
        rows.append(row(f"key_ready_seconds_n{n}_fork_{WORKERS}", fork_seconds, "s", spawn_seconds))
        rows.append(row(f"key_pss_mib_n{n}_fork_{WORKERS}", fork_pss, "MiB", spawn_pss, digits=1))
    return rows
