"""A schedule's past runs from ``cpi_jobs``, newest first, for ``reconcile history NAME``.

Jobs keep the schedule's name, so the history of a deleted (or renamed) schedule stays readable.
Each run is a dict read by column name (``job_id`` for the job's id), as the JSON output shows it:
``files`` lists the files the run acted on, ``skipped_files`` counts those it skipped unread as
already imported. Jobs older than the retention are pruned by the daemon's leader
(``store.pruning``), the last ones of each schedule kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from reconciler.errors import NotFound

if TYPE_CHECKING:
    import psycopg

__all__ = ["job_history"]


def job_history(conn: psycopg.Connection[Any], name: str, *, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` runs of schedule ``name``; ``NotFound`` if it has neither runs nor a row."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id::text AS job_id, status, trigger, scheduled_for, started_at, finished_at, "
            "rows_imported, bytes_read, files, skipped_files, error, callback, worker "
            "FROM cpi_jobs "
            "WHERE schedule_name = %s "
            "ORDER BY coalesce(started_at, created_at) DESC, created_at DESC LIMIT %s",
            (name, max(limit, 0)),
        ).fetchall()
    if not rows:
        known = conn.execute("SELECT 1 FROM cpi_schedules WHERE name = %s", (name,)).fetchone()
        if known is None:
            raise NotFound("schedule", name, "the database, and it has no job history")
    conn.rollback()
    return rows
