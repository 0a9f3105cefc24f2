"""Fixtures live in ``payer_fixtures`` (a unique module name, importable from the tests)."""

from payer_fixtures import make_intent, owner, session_key, signed_intent  # noqa: F401
