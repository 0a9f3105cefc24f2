"""Child process of the key-loading benchmark (``bench.keyload``).

``python -m bench._keyload load <proving_key.bin>``: loads the proving key with
``groth16py.ProvingKey.load`` and prints ``ready <pid>``.

``python -m bench._keyload fork <proving_key.bin> <k>``: loads the key once, then forks ``k``
children that share it copy-on-write, and prints ``ready <loader pid> <child pid> ...`` once
every child runs.

Either then holds its processes (so the parent can read their memory) until stdin closes.
"""

from __future__ import annotations

import os
import sys

import groth16py


def _hold_forked(k: int, key: object) -> list[int]:
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    children = []
    for _ in range(k):
        pid = os.fork()
        if pid == 0:
            # The child holds ``key`` without touching its pages; it exits when the loader
            # closes ``hold_w`` (os.read returns b"").
            os.close(ready_r)
            os.close(hold_w)
            os.write(ready_w, b".")
            os.read(hold_r, 1)
            os._exit(0 if key is not None else 1)
        children.append(pid)
    os.close(ready_w)
    os.close(hold_r)
    for _ in range(k):
        os.read(ready_r, 1)
    print("ready", os.getpid(), *children, flush=True)
    sys.stdin.read()
    os.close(hold_w)
    return [os.waitpid(pid, 0)[1] for pid in children]


def main(argv: list[str]) -> int:
    mode, key_path = argv[0], argv[1]
    key = groth16py.ProvingKey.load(key_path)
    if mode == "fork":
        statuses = _hold_forked(int(argv[2]), key)
        return 0 if not any(statuses) else 1
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
