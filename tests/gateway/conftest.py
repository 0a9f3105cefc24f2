"""Fixtures live in ``gateway_fixtures`` (a unique module name, importable from the tests)."""

from gateway_fixtures import gateway_server  # noqa: F401
