"""Idempotent schema migrations, safe when several processes start at the same moment.

``open_store`` calls ``migrate`` on every connection it opens. The whole of ``schema.sql`` runs in
one transaction under a transaction-level advisory lock, so concurrent starters queue instead of
racing on ``CREATE TABLE IF NOT EXISTS`` (which is not race-free in PostgreSQL on its own).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATION_LOCK", "migrate", "schema_sql"]

# Advisory lock keys: arbitrary constants, distinct from the apply lock in store.locking.
MIGRATION_LOCK = 0x7265636F6E01


@cache
def schema_sql() -> str:
    """The management schema, from the packaged ``schema.sql``."""
    return resources.files("reconciler.store").joinpath("schema.sql").read_text("utf-8")


def _is_current(conn: psycopg.Connection[Any]) -> bool:
    # Cheap check so the common case (already migrated) costs one round trip and takes no lock.
    row = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_cpi_jobs_occurrence'"
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Bring the management schema up to date; a no-op when it already is."""
    if _is_current(conn):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(schema_sql().encode())
