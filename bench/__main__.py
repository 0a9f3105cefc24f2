"""Run every benchmark and print one JSON object per line.

Each line is ``{"metric", "value", "unit"}`` plus ``"baseline"`` and ``"ratio"`` where a
baseline measured in the same run applies. Usage: ``python -m bench [name ...]`` with names
from ``SUITES`` (default: all of them, in order). ``prover`` and ``gas`` share one proof per
batch size (``bench.settle`` runs the pipeline once per process); ``AEP2_BENCH_SIZES=16,64``
restricts the batch sizes (default ``16,64,256``). ``latency`` times paid ``exact`` (settled on
chain before the answer) and ``aep2`` calls one at a time against an unpriced call;
``AEP2_BENCH_LATENCY_CALLS`` sets its calls per kind (default 50). ``replicas`` measures two gateway
replicas on one PostgreSQL store against one (a throwaway server from Debian's package).
``council`` times the AI review council's decision offline and against a local Messages API stub
at a fixed latency. ``cards`` times card authorizations under 32 concurrent merchants against
one merchant at a time. ``witness`` times circom's C++ witness generator at N=256 against its
WASM one (building the C++ one on first use). ``provers`` settles a backlog of 6 batches of 64
with 2 prover workers against 1 (``settle_throughput``). ``keyload`` times 2 prover workers
getting the proving key: one load forked twice against two loads.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

SUITES = (
    "verify", "throughput", "replicas", "latency", "wallet", "council", "cards", "witness", "prover", "gas", "provers",
    "keyload",
)


def main(argv: list[str]) -> int:
    names = argv or list(SUITES)
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    total = time.perf_counter()
    for name in names:
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        for row in module.run():
            print(json.dumps(row), flush=True)
        print(f"bench.{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(f"bench: total {time.perf_counter() - total:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
