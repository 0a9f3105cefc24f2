"""The co-wallet: the control plane between an owner and its agents (issue 10)."""

# The webhook outbox and the service register their tables on ``wallet.db.metadata``:
# imported with the package so ``Database.create()`` always creates them.
from . import service, webhooks

__all__ = ["service", "webhooks"]
