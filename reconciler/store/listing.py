"""Schedules and jobs as the HTTP API lists them: pages of typed rows, every value bound.

``daemon.api`` calls these with a session from ``store.pooling.ReadPool``. A schedule is found
by its name or its id (``find_schedule``); its history is its jobs by the schedule's name, so the
runs of a deleted schedule stay readable by that name. Every row carries the original API's
columns (run statistics and the project's name included) and the reconciler's own (owner, source
file and line, grace, the last job's status). Names, ids and filters are always parameters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "JobRow",
    "ScheduleRow",
    "fetch_job",
    "find_schedule",
    "list_jobs",
    "list_schedules",
]

_SCHEDULE = """
SELECT s.id::text AS id, s.name, s.project_id::text AS project_id, p.name AS project_name,
       s.schedule_type, s.cron_expression, s.interval_seconds, s.timezone, s.enabled,
       s.callback_url, s.sftp_override, s.local_files, s.last_run_at, s.next_run_at,
       s.last_job_id::text AS last_job_id, s.total_runs, s.successful_runs, s.failed_runs,
       s.created_at, s.updated_at, s.owner, s.source_file, s.source_line,
       s.misfire_grace_seconds, j.status AS last_status
FROM cpi_schedules s
LEFT JOIN cpi_projects p ON p.id = s.project_id
LEFT JOIN cpi_jobs j ON j.id = s.last_job_id
"""
_FILTER = (
    "WHERE (%(project)s::text IS NULL OR p.name = %(project)s) "
    "AND (%(enabled)s::boolean IS NULL OR coalesce(s.enabled, true) = %(enabled)s) "
)
_JOB = """
SELECT id::text AS id, schedule_id::text AS schedule_id, schedule_name,
       project_id::text AS project_id, project_name, trigger, status, scheduled_for,
       started_at, finished_at, heartbeat_at, rows_imported, bytes_read, files, error,
       callback, worker, created_at
FROM cpi_jobs
"""


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One ``cpi_schedules`` row as stored (NULLs included), with its project's name."""

    id: str
    name: str
    project_id: str | None
    project_name: str | None
    schedule_type: str | None
    cron_expression: str | None
    interval_seconds: int | None
    timezone: str | None
    enabled: bool | None
    callback_url: str | None
    sftp_override: Any
    local_files: Any
    last_run_at: datetime | None
    next_run_at: datetime | None
    last_job_id: str | None
    total_runs: int | None
    successful_runs: int | None
    failed_runs: int | None
    created_at: datetime | None
    updated_at: datetime | None
    owner: str | None
    source_file: str | None
    source_line: int | None
    misfire_grace_seconds: int | None
    last_status: str | None


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
    error: str | None
    callback: Any
    worker: str | None
    created_at: datetime | None


def list_schedules(
    conn: psycopg.Connection[Any],
    *,
    project: str | None = None,
    enabled: bool | None = None,
    limit: int,
    offset: int = 0,
) -> tuple[list[ScheduleRow], int]:
    """One page of schedules by name, and how many match the filters in all."""
    params = {"project": project, "enabled": enabled, "limit": limit, "offset": offset}
    with conn.cursor(row_factory=class_row(ScheduleRow)) as cur:
        rows = cur.execute(
            _SCHEDULE + _FILTER + "ORDER BY s.name LIMIT %(limit)s OFFSET %(offset)s", params
        ).fetchall()
    if offset == 0 and len(rows) < limit:  # the whole set is on this page
        return rows, len(rows)
    counted = conn.execute(
        "SELECT count(*) FROM cpi_schedules s LEFT JOIN cpi_projects p ON p.id = s.project_id "
        + _FILTER,
        params,
    ).fetchone()
    return rows, int(counted[0]) if counted else 0


def find_schedule(conn: psycopg.Connection[Any], key: str) -> ScheduleRow | None:
    """The schedule named ``key``, else the one whose id is ``key``; None if neither exists."""
    by_id = _uuid(key)
    with conn.cursor(row_factory=class_row(ScheduleRow)) as cur:
        return cur.execute(
            _SCHEDULE + "WHERE s.name = %(key)s OR s.id = %(id)s "
            "ORDER BY s.name = %(key)s DESC LIMIT 1",
            {"key": key, "id": by_id},
        ).fetchone()


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
