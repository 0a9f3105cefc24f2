"""Where ``SQLiteStore`` lived before the stores became a package: ``aep2.stores.sqlite``."""

from __future__ import annotations

from .stores import SCHEMA_VERSION, SQLiteStore

__all__ = ["SQLiteStore", "SCHEMA_VERSION"]
