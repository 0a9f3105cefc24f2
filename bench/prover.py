"""Circuit size and proving: ``constraints_per_mandate``, ``prove_seconds_n*``, ``prove_peak_gib_n256``.

Each N is proved once, in a fresh child process, on a full batch of real signed mandates; the
same proof is then settled on chain for the gas rows (``bench.settle`` runs both, once).
``prove_seconds`` covers witness generation (circom's C++ generator where its toolchain is
present, as the processor runs it, else its Node/WASM one) and the Groth16 proof,
not loading the proving key (reported apart as ``key_load_seconds_n*``).
``prove_peak_gib`` adds the child's own peak RSS and its node witness child's peak RSS (an
upper bound on their concurrent peak; both parts are reported too).
"""

from __future__ import annotations

from typing import Any

from .common import row
from .settle import results


def run() -> list[dict[str, Any]]:
    res = results()
    rows = []
    largest = max(res)
    c_large = res[largest]["constraints"]
    rows.append(row("constraints_per_mandate", c_large / largest, "constraints"))
    if len(res) > 1:
        previous = sorted(res)[-2]
        c_prev = res[previous]["constraints"]
        rows.append(row(f"constraints_marginal_per_mandate_n{previous}_n{largest}",
                        (c_large - c_prev) / (largest - previous), "constraints"))
    for n, r in sorted(res.items()):
        rows.append(row(f"prove_seconds_n{n}", r["prove_seconds"], "s"))
        rows.append(row(f"prove_seconds_per_mandate_n{n}", r["prove_seconds"] / n, "s", digits=4))
    for n, r in sorted(res.items()):
        rows.append(row(f"prove_peak_gib_n{n}", r["rss_self_gib"] + r["rss_children_gib"], "GiB"))
    big = res[largest]
    rows.append(row(f"prove_peak_gib_prover_only_n{largest}", big["rss_self_gib"], "GiB"))
    rows.append(row(f"prove_peak_gib_witness_child_n{largest}", big["rss_children_gib"], "GiB"))
    for n, r in sorted(res.items()):
        rows.append(row(f"key_load_seconds_n{n}", r["load_seconds"], "s"))
    return rows
