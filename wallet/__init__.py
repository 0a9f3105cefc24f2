"""The co-wallet: the control plane between an owner and its agents (issue 10)."""

# The webhook outbox, the service and the cards register their tables on ``wallet.db.metadata``:
# imported with the package so the migrations' schema check sees every table.
from . import cards, service, webhooks

__all__ = ["cards", "service", "webhooks"]
