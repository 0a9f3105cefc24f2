"""Child process of the prover benchmark: one fresh process per batch size, so its peak RSS
(``ru_maxrss`` of itself and of its node witness child) belongs to that N alone.

``python -m bench._prove <n> <i> <p>``: builds (or finds cached) the artifacts of
``Batch(n, i, p)``, loads the proving key, prints ``ready <load seconds> <artifacts dir>``, then reads one line ``<inputs.json> <out.json>`` from stdin, proves the circuit inputs
(witness + Groth16 proof via ``settlement.prover.Prover.prove``), checks the proof in
process and writes ``{"words", "publicInputs", "seconds", "loadSeconds", "maxrssSelfKiB",
"maxrssChildrenKiB"}`` to ``out.json``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from settlement.artifacts import build_artifacts
from settlement.prover import Prover


def main(argv: list[str]) -> int:
    n, i, p = (int(arg) for arg in argv[:3])
    # Cached; a first run builds here, under the cache lock. The C++ witness generator too, as
    # the processor (``python -m settlement run``) builds it: the rows time what it runs.
    artifacts = build_artifacts(n, i, p, native_witness=True)
    started = time.perf_counter()
    prover = Prover(artifacts)
    load_seconds = time.perf_counter() - started
    print(f"ready {load_seconds:.3f} {artifacts.directory}", flush=True)
    line = sys.stdin.readline().split()
    if not line:
        return 1  # the parent gave up
    inputs_path, out_path = line
    inputs = json.loads(Path(inputs_path).read_text())
    proof = prover.prove(inputs)
    if not prover.verify(proof):
        raise SystemExit("the proof does not verify in process")
    result = {
        "words": [str(w) for w in proof.words],
        "publicInputs": [str(v) for v in proof.public_inputs],
        "seconds": proof.seconds,
        "loadSeconds": load_seconds,
        "maxrssSelfKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrssChildrenKiB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    Path(out_path).write_text(json.dumps(result))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
