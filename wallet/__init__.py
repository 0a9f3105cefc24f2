"""The co-wallet: the control plane between an owner and its agents (issue 10)."""
