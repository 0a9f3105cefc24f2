"""The append-only triggers the migrations put on the ledger, the audit log and the council's
votes: SQLAlchemy's metadata cannot describe triggers, so each revision that creates such a
table calls ``refuse_update_and_delete`` for it."""

from __future__ import annotations

from alembic import op

__all__ = ["refuse_update_and_delete"]


def refuse_update_and_delete(table: str) -> None:
    """Triggers that make ``table`` append-only, in the dialect's own trigger language."""
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
            )
        return
    if dialect == "postgresql":
        # one shared function; a row trigger for UPDATE and DELETE, a statement one for TRUNCATE
        op.execute(
            "CREATE OR REPLACE FUNCTION wallet_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only: ' "
            "|| TG_OP || ' refused', ERRCODE = 'integrity_constraint_violation'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION wallet_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION wallet_append_only()"
        )
        return
    raise NotImplementedError(f"append-only triggers for dialect {dialect!r}")
