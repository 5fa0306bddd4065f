"""Idempotent schema migrations, safe when several processes start at the same moment.

``open_store`` calls ``migrate`` on every connection it opens. The whole of ``schema.sql`` runs in
one transaction under a transaction-level advisory lock, so concurrent starters queue instead of
racing on ``CREATE TABLE IF NOT EXISTS`` (which is not race-free in PostgreSQL on its own).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from psycopg import sql

from reconciler.store.locks import Fixed

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATION_LOCK", "apply_schema", "is_current", "migrate", "schema_sql"]

MIGRATION_LOCK = Fixed.MIGRATION


@cache
def schema_sql() -> str:
    """The management schema, from the packaged ``schema.sql``."""
    return resources.files("reconciler.store").joinpath("schema.sql").read_text("utf-8")


def _version() -> str:
    return "reconcile schema " + hashlib.sha256(schema_sql().encode()).hexdigest()[:16]


def is_current(conn: psycopg.Connection[Any]) -> bool:
    """Whether this version's schema is in place: one cheap query, no lock.

    The version is the hash of ``schema.sql``, kept as the comment of a table only reconcile
    uses, so any change to the file migrates again.
    """
    row = conn.execute(
        "SELECT obj_description(to_regclass('cpi_imported_files'), 'pg_class')"
    ).fetchone()
    return bool(row and row[0] == _version())


def apply_schema(conn: psycopg.Connection[Any]) -> None:
    """Run the schema inside the caller's transaction, serialised with other migrators."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn.execute(schema_sql().encode())
    conn.execute(sql.SQL("COMMENT ON TABLE cpi_imported_files IS {}").format(_version()))


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Bring the management schema up to date and commit; a no-op when it already is."""
    with conn.transaction():
        if not is_current(conn):
            apply_schema(conn)
