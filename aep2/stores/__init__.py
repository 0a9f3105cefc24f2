"""``PaymentStore`` implementations, and ``create_store`` to pick one by its location.

- ``SQLiteStore``: one file, the zero-configuration default (one gateway process, and the
  processor on the same machine).
- ``PostgresStore``: a PostgreSQL server that several gateway replicas and the processor
  share.

Parts, one concern each: ``schema`` (tables, triggers, migrations), ``reservations``
(intents and the reservation hot path), ``batches`` (settlement batches), ``exact``
(``exact`` payments and payment identifiers), over ``database`` (the SQL interface both
backends implement) and ``records`` (rows to records, by column name).
"""

from __future__ import annotations

from .base import SQLStore
from .postgres import PostgresStore, is_postgres_url
from .schema import SCHEMA_VERSION
from .sqlite import SQLiteStore

__all__ = ["create_store", "SQLStore", "SQLiteStore", "PostgresStore", "SCHEMA_VERSION"]


def create_store(location: str) -> SQLStore:
    """The ``PaymentStore`` at ``location``, not yet opened: a ``PostgresStore`` for a
    ``postgresql://…`` (or ``postgres://…``) URL, otherwise a ``SQLiteStore`` on that file path.

    This is how ``AEP2_STORE`` (gateway), ``--store`` (processor) and ``FACILITATOR_STORE``
    are read. Raises ``ValueError`` for an empty location.
    """
    if not location:
        raise ValueError("store location: empty (a SQLite file path or a postgresql:// URL)")
    if is_postgres_url(location):
        return PostgresStore(location)
    return SQLiteStore(location)
