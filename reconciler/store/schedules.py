"""Schedule rows as they are stored, read into ``ScheduleRecord`` values with named fields.

``commands.reporting`` (``reconcile status``) reads every schedule or one with
``fetch_schedules``; ``commands.exporting`` reads the rows another owner (or none) wrote with
``fetch_unowned``; ``imports.resolving`` reads the one a run needs with ``fetch_schedule``, and the
daemon asks ``schedule_ref`` for the identity a job row keeps. One query shape for all of them,
each row read by column name, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

from reconciler.errors import NotFound
from reconciler.store.jobs import ScheduleRef

if TYPE_CHECKING:
    import psycopg

__all__ = ["ScheduleRecord", "fetch_schedule", "fetch_schedules", "fetch_unowned", "schedule_ref"]

_SELECT = """
SELECT s.id::text AS id, s.name, p.id::text AS project_id, p.name AS project,
       p.spec AS project_spec, s.schedule_type, s.cron_expression, s.interval_seconds,
       s.timezone, s.enabled, s.callback_url, s.sftp_override, s.local_files,
       s.misfire_grace_seconds, s.owner, s.source_file, s.source_line, s.interval_anchor,
       s.next_run_at, s.last_run_at, j.status AS last_status
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
    owner: str | None
    source_file: str | None
    source_line: int | None
    interval_anchor: datetime | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_status: str | None

    @property
    def ref(self) -> ScheduleRef:
        """The identity a job row keeps of this schedule and its project."""
        return ScheduleRef(self.id, self.name, self.project_id, self.project)


def _records(
    conn: psycopg.Connection[Any], where: str, params: dict[str, Any]
) -> list[ScheduleRecord]:
    with conn.cursor(row_factory=class_row(ScheduleRecord)) as cur:
        return cur.execute(_SELECT + where, params).fetchall()


def fetch_schedules(
    conn: psycopg.Connection[Any], *, name: str | None = None
) -> list[ScheduleRecord]:
    """Every schedule (or only ``name``, if given), sorted by name."""
    return _records(
        conn, "WHERE %(name)s::text IS NULL OR s.name = %(name)s ORDER BY s.name", {"name": name}
    )


def fetch_unowned(conn: psycopg.Connection[Any], *, owner: str) -> list[ScheduleRecord]:
    """The schedules with a project that ``owner`` does not own, by project then name."""
    return _records(
        conn,
        "WHERE p.id IS NOT NULL AND s.owner IS DISTINCT FROM %(owner)s ORDER BY p.name, s.name",
        {"owner": owner},
    )


def fetch_schedule(conn: psycopg.Connection[Any], name: str) -> ScheduleRecord | None:
    """The schedule ``name``, or None if the database has no such row."""
    found = _records(conn, "WHERE s.name = %(name)s", {"name": name})
    return found[0] if found else None


def schedule_ref(conn: psycopg.Connection[Any], name: str) -> ScheduleRef:
    """The identity of schedule ``name`` for its job rows; ``NotFound`` if it is not stored."""
    record = fetch_schedule(conn, name)
    if record is None:
        raise NotFound("schedule", name, "the database; run `reconcile apply` first")
    return record.ref
