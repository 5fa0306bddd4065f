"""Jobs as the HTTP API lists them: pages of typed rows, every value bound.

``daemon.api`` calls these with a session from ``store.pooling.ReadPool``; its schedules come
from ``store.schedules``. A schedule's history is its jobs by the schedule's name, so the runs of
a deleted schedule stay readable by that name. Ids are always parameters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

if TYPE_CHECKING:
    import psycopg

__all__ = ["JobRow", "fetch_job", "list_jobs"]

_JOB = """
SELECT id::text AS id, schedule_id::text AS schedule_id, schedule_name,
       project_id::text AS project_id, project_name, trigger, status, scheduled_for,
       started_at, finished_at, heartbeat_at, rows_imported, bytes_read, files, skipped_files,
       error, callback, worker, created_at
FROM cpi_jobs
"""


@dataclass(frozen=True, slots=True)
class JobRow:
    """One ``cpi_jobs`` row: a run, its outcome, its per-file results and its callback."""

    id: str
    schedule_id: str | None
    schedule_name: str | None
    project_id: str | None
    project_name: str | None
    trigger: str
    status: str
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    rows_imported: int
    bytes_read: int
    files: Any
    skipped_files: int
    error: str | None
    callback: Any
    worker: str | None
    created_at: datetime | None


def list_jobs(
    conn: psycopg.Connection[Any], schedule_name: str, *, limit: int, offset: int = 0
) -> tuple[list[JobRow], int]:
    """One page of the runs of ``schedule_name``, newest first, and how many it has in all."""
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        rows = cur.execute(
            _JOB + "WHERE schedule_name = %s "
            "ORDER BY coalesce(started_at, created_at) DESC, created_at DESC, id "
            "LIMIT %s OFFSET %s",
            (schedule_name, limit, offset),
        ).fetchall()
    if offset == 0 and len(rows) < limit:
        return rows, len(rows)
    counted = conn.execute(
        "SELECT count(*) FROM cpi_jobs WHERE schedule_name = %s", (schedule_name,)
    ).fetchone()
    return rows, int(counted[0]) if counted else 0


def fetch_job(conn: psycopg.Connection[Any], job_id: str) -> JobRow | None:
    """The job ``job_id`` (a UUID, in any spelling); None if there is no such job."""
    by_id = _uuid(job_id)
    if by_id is None:
        return None
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        return cur.execute(_JOB + "WHERE id = %s", (by_id,)).fetchone()


def _uuid(text: str) -> uuid.UUID | None:
    """``text`` as a UUID if it is one: the database is never asked to cast user text."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
