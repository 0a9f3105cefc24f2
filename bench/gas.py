"""``gas_per_mandate_n*``: ``settleBatch`` gasUsed / N for a full proven batch, against one EIP-3009
``transferWithAuthorization`` on the same MockUSDC in the same run (see ``bench.settle``)."""

from __future__ import annotations

from typing import Any

from .common import row
from .settle import results


def run() -> list[dict[str, Any]]:
    rows = []
    for n, r in sorted(results().items()):
        rows.append(row(f"gas_per_mandate_n{n}", r["gas"] / n, "gas", r["eip3009_gas"], digits=1))
    for n, r in sorted(results().items()):
        rows.append(row(f"settle_batch_gas_n{n}", r["gas"], "gas", digits=0))
    return rows
