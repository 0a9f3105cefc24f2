"""Background work in rounds: one coroutine run every few seconds until a stop event is set
(the webhook outbox's deliveries, the settlement watcher's polls)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_rounds"]


async def run_rounds(
    one_round: Callable[[], Awaitable[Any]], stop: asyncio.Event, interval: float, logger: logging.Logger, what: str
) -> None:
    """Await ``one_round()``, then wait ``interval`` seconds or until ``stop`` is set, until it
    is set. A round that raises is logged on ``logger`` as ``"<what> round failed"`` and the
    rounds go on (the database unavailable for a while, say)."""
    while not stop.is_set():
        try:
            await one_round()
        except Exception:
            logger.exception("%s round failed", what)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
