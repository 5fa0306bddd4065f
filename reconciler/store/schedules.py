"""Schedule rows as they are stored, read into ``ScheduleRecord`` values with named fields.

``commands.reporting`` (``reconcile status``) reads every schedule or one with
``fetch_schedules``; ``commands.exporting`` reads the rows another owner (or none) wrote with
``fetch_unowned``; ``imports.runs.resolving`` reads the one a run needs with ``fetch_schedule``, the
daemon asks ``schedule_ref`` for the identity a job row keeps, and the HTTP API pages through
them with ``list_schedules`` and finds one by name or id with ``find_schedule``. One query shape
for all of them, each row read by column name, never by position, every value bound.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

from reconciler.errors import NotFound
from reconciler.model.occurrences import Timing
from reconciler.store.jobs import ScheduleRef

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ScheduleRecord",
    "fetch_schedule",
    "fetch_schedules",
    "fetch_unowned",
    "find_schedule",
    "list_schedules",
    "records",
    "schedule_ref",
]

_FILTER = (
    "WHERE (%(project)s::text IS NULL OR p.name = %(project)s) "
    "AND (%(enabled)s::boolean IS NULL OR coalesce(s.enabled, true) = %(enabled)s) "
)
_SELECT = """
SELECT s.id::text AS id, s.name, p.id::text AS project_id, p.name AS project,
       p.spec AS project_spec, s.schedule_type, s.cron_expression, s.interval_seconds,
       s.timezone, s.enabled, s.callback_url, s.sftp_override, s.local_files,
       s.misfire_grace_seconds, s.timeout_seconds, s.retries, s.retry_backoff_seconds,
       s.owner, s.source_file, s.source_line, s.spec_hash, s.interval_anchor,
       s.next_run_at, s.last_run_at, s.last_job_id::text AS last_job_id, s.total_runs,
       s.successful_runs, s.failed_runs, s.created_at, s.updated_at, j.status AS last_status
FROM cpi_schedules s
LEFT JOIN cpi_projects p ON p.id = s.project_id
LEFT JOIN cpi_jobs j ON j.id = s.last_job_id
"""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One ``cpi_schedules`` row with its project's name and spec and its last job's status.

    Values are as stored, NULLs included: other programs write this table too, so each reader
    decides what a missing value means. JSON columns are as parsed (``local_files`` is a list of
    globs relative to the schedules folder unless edited by hand).
    """

    id: str
    name: str
    project_id: str | None
    project: str | None
    project_spec: Any
    schedule_type: str | None
    cron_expression: str | None
    interval_seconds: int | None
    timezone: str | None
    enabled: bool | None
    callback_url: str | None
    sftp_override: Any
    local_files: Any
    misfire_grace_seconds: int | None
    timeout_seconds: int | None
    retries: int | None
    retry_backoff_seconds: int | None
    owner: str | None
    source_file: str | None
    source_line: int | None
    spec_hash: str | None
    interval_anchor: datetime | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: str | None
    total_runs: int | None
    successful_runs: int | None
    failed_runs: int | None
    created_at: datetime | None
    updated_at: datetime | None
    last_status: str | None

    @property
    def ref(self) -> ScheduleRef:
        """The identity a job row keeps of this schedule and its project."""
        return ScheduleRef(self.id, self.name, self.project_id, self.project)

    @property
    def timing(self) -> Timing:
        """When it fires, as the scheduler reads it: the kind ``schedule_type`` names."""
        return Timing(
            self.cron_expression if self.schedule_type == "cron" else None,
            self.interval_seconds if self.schedule_type == "interval" else None,
            self.timezone or "UTC",
            self.interval_anchor,
        )


def records(
    conn: psycopg.Connection[Any], where: str, params: dict[str, Any]
) -> list[ScheduleRecord]:
    """The schedules ``where`` selects (SQL after the FROM clause: ``s`` is the schedule, ``p``
    its project, ``j`` its last job), as records: the one way every module reads the table."""
    with conn.cursor(row_factory=class_row(ScheduleRecord)) as cur:
        return cur.execute(_SELECT + where, params).fetchall()


def fetch_schedules(
    conn: psycopg.Connection[Any], *, name: str | None = None
) -> list[ScheduleRecord]:
    """Every schedule (or only ``name``, if given), sorted by name."""
    return records(
        conn, "WHERE %(name)s::text IS NULL OR s.name = %(name)s ORDER BY s.name", {"name": name}
    )


def fetch_unowned(conn: psycopg.Connection[Any], *, owner: str) -> list[ScheduleRecord]:
    """The schedules with a project that ``owner`` does not own, by project then name."""
    return records(
        conn,
        "WHERE p.id IS NOT NULL AND s.owner IS DISTINCT FROM %(owner)s ORDER BY p.name, s.name",
        {"owner": owner},
    )


def fetch_schedule(conn: psycopg.Connection[Any], name: str) -> ScheduleRecord | None:
    """The schedule ``name``, or None if the database has no such row."""
    found = records(conn, "WHERE s.name = %(name)s", {"name": name})
    return found[0] if found else None


def schedule_ref(conn: psycopg.Connection[Any], name: str) -> ScheduleRef:
    """The identity of schedule ``name`` for its job rows; ``NotFound`` if it is not stored."""
    record = fetch_schedule(conn, name)
    if record is None:
        raise NotFound("schedule", name, "the database; run `reconcile apply` first")
    return record.ref


def list_schedules(
    conn: psycopg.Connection[Any],
    *,
    project: str | None = None,
    enabled: bool | None = None,
    limit: int,
    offset: int = 0,
) -> tuple[list[ScheduleRecord], int]:
    """One page of schedules by name, and how many match the filters in all."""
    params = {"project": project, "enabled": enabled, "limit": limit, "offset": offset}
    rows = records(conn, _FILTER + "ORDER BY s.name LIMIT %(limit)s OFFSET %(offset)s", params)
    if offset == 0 and len(rows) < limit:  # the whole set is on this page
        return rows, len(rows)
    counted = conn.execute(
        "SELECT count(*) FROM cpi_schedules s LEFT JOIN cpi_projects p ON p.id = s.project_id "
        + _FILTER,
        params,
    ).fetchone()
    return rows, int(counted[0]) if counted else 0


def find_schedule(conn: psycopg.Connection[Any], key: str) -> ScheduleRecord | None:
    """The schedule named ``key``, else the one whose id is ``key``; None if neither exists."""
    try:
        by_id = uuid.UUID(key)  # the database is never asked to cast user text
    except ValueError:
        by_id = None
    found = records(
        conn,
        "WHERE s.name = %(key)s OR s.id = %(id)s ORDER BY s.name = %(key)s DESC LIMIT 1",
        {"key": key, "id": by_id},
    )
    return found[0] if found else None
