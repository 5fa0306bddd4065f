"""A schedule's past runs from ``cpi_jobs``, newest first: what ``reconcile history NAME`` lists
and the HTTP API's ``GET /schedules/{name}/history`` answers, read by one function.

``schedule_runs`` is that function: a page of ``store.listing``'s ``JobRow`` (the one query of
a schedule's jobs), and ``NotFound`` for a name with neither runs nor a schedule. Jobs keep the
schedule's name, so the history of a deleted (or renamed) schedule stays readable by it.

``job_history`` is the command's: each run as a dict by column name (``job_id`` for the job's
id), as its JSON output shows it, with which try of its occurrence it is (``attempt``, 1 for the
run itself) and the job whose failure it retries (``retry_of``). ``files`` lists the files the
run acted on, ``skipped_files`` counts those it skipped unread as already imported. Jobs older
than the retention are pruned by the daemon's leader (``store.pruning``), the last ones of each
schedule kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from reconciler.errors import NotFound
from reconciler.store.listing import JobRow, list_jobs

if TYPE_CHECKING:
    import psycopg

__all__ = ["job_history", "schedule_runs"]


def schedule_runs(
    conn: psycopg.Connection[Any], name: str, *, limit: int, offset: int = 0
) -> tuple[list[JobRow], int]:
    """Up to ``limit`` runs of schedule ``name`` after the first ``offset``, and how many it
    has in all; ``NotFound`` if it has neither runs nor a row."""
    jobs, total = list_jobs(conn, name, limit=max(limit, 0), offset=offset)
    if total == 0:
        known = conn.execute("SELECT 1 FROM cpi_schedules WHERE name = %s", (name,)).fetchone()
        if known is None:
            raise NotFound("schedule", name, "the database, and it has no job history")
    return jobs, total


def job_history(conn: psycopg.Connection[Any], name: str, *, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` runs of schedule ``name``, newest first, as documents."""
    jobs, _ = schedule_runs(conn, name, limit=limit)
    tries = _tries(conn, jobs)
    conn.rollback()
    return [_document(job, *tries.get(job.id, (1, None))) for job in jobs]


def _tries(conn: psycopg.Connection[Any], jobs: list[JobRow]) -> dict[str, tuple[int, str | None]]:
    """Each job's attempt and the job it retries (``JobRow`` does not carry them)."""
    if not jobs:
        return {}
    rows = conn.execute(
        "SELECT id::text, attempt, retry_of::text FROM cpi_jobs WHERE id = ANY(%s)",
        ([UUID(job.id) for job in jobs],),
    ).fetchall()
    return {job_id: (attempt, retry_of) for job_id, attempt, retry_of in rows}


def _document(job: JobRow, attempt: int, retry_of: str | None) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "trigger": job.trigger,
        "scheduled_for": job.scheduled_for,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "rows_imported": job.rows_imported,
        "bytes_read": job.bytes_read,
        "files": job.files,
        "skipped_files": job.skipped_files,
        "error": job.error,
        "callback": job.callback,
        "worker": job.worker,
        "attempt": attempt,
        "retry_of": retry_of,
    }
