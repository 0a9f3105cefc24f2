"""The co-wallet: the control plane between an owner and its agents (issue 10)."""

# The webhook outbox, the service, the cards and the settlement watcher register their tables
# on ``wallet.db.metadata``: imported with the package so the migrations' schema check sees
# every table.
from . import cards, service, settlements, webhooks

__all__ = ["cards", "service", "settlements", "webhooks"]
