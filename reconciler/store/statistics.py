"""A schedule's run statistics in ``cpi_schedules``: total, successful and failed runs, last run.

``store.jobs`` counts a run when it records its end, ``store.liveness`` when it abandons a dead
one; both inside the transaction that writes the job's final status, so the statistics and the
job rows always agree. ``daemon.collecting`` reads what ``/metrics`` shows of every schedule
with ``schedule_gauges``: one query, so every replica exports the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

if TYPE_CHECKING:
    import psycopg

__all__ = ["LANDED_ROWS", "ScheduleGauges", "count_run", "end_running", "schedule_gauges"]

# A job's rows when it ended without its runner (abandoned, or cut off by a shutdown): those the
# import ledger records for it, not the running totals its heartbeat kept, which include rows of
# files whose transaction died with the process. Used in ``UPDATE cpi_jobs j SET rows_imported``.
LANDED_ROWS = (
    "(SELECT coalesce(sum(f.rows_imported), 0) FROM cpi_imported_files f WHERE f.job_id = j.id)"
)


def count_run(
    conn: psycopg.Connection[Any],
    schedule_id: Any,
    job_id: str,
    started_at: datetime,
    *,
    new_run: int,
    succeeded: int,
    failed: int,
) -> None:
    """Add to the schedule's counters (negative to take back) and move its last run forward."""
    if schedule_id is None:  # the schedule was deleted meanwhile; history keeps its name
        return
    conn.execute(
        "UPDATE cpi_schedules SET total_runs = coalesce(total_runs, 0) + %(new)s, "
        "successful_runs = coalesce(successful_runs, 0) + %(ok)s, "
        "failed_runs = coalesce(failed_runs, 0) + %(failed)s, "
        "last_job_id = CASE WHEN last_run_at IS NULL OR last_run_at <= %(started)s "
        "  THEN %(job)s::uuid ELSE last_job_id END, "
        "last_run_at = GREATEST(last_run_at, %(started)s) WHERE id = %(id)s",
        {"new": new_run, "ok": succeeded, "failed": failed, "started": started_at,
         "job": job_id, "id": schedule_id},
    )  # fmt: skip


def end_running(
    conn: psycopg.Connection[Any], *, set_: str, where: str, params: Any
) -> list[tuple[str, datetime | None, str | None]]:
    """End the ``running`` jobs matching ``where`` (alias ``j``) with ``set_`` and count each as
    a failed run, in the caller's transaction: how a run that did not record its own end is
    ended (abandoned, cut off by a shutdown, or lost with its session). Each ended job's id,
    ``finished_at`` and ``error``."""
    rows = conn.execute(
        "UPDATE cpi_jobs j SET " + set_ + " WHERE j.status = 'running' AND " + where + " "
        "RETURNING j.id::text, j.schedule_id, j.started_at, j.finished_at, j.error",
        params,
    ).fetchall()
    for job_id, schedule_id, started_at, _, _ in rows:
        count_run(conn, schedule_id, job_id, started_at, new_run=1, succeeded=0, failed=1)
    return [(job_id, finished_at, error) for job_id, _, _, finished_at, error in rows]


@dataclass(frozen=True, slots=True)
class ScheduleGauges:
    """What ``/metrics`` shows of one schedule; ``next_run_at`` only while it is armed (enabled,
    its project present), ``last_status`` of its latest run that ended."""

    name: str
    cron_expression: str | None
    interval_seconds: int | None
    timezone: str
    next_run_at: datetime | None
    last_status: str | None
    last_success_at: datetime | None


# Each lateral walks idx_cpi_jobs_schedule_name backwards from the newest job and stops at the
# first match: a few index entries per schedule, whatever the length of its history.
_GAUGES = """
SELECT s.name,
       CASE WHEN s.schedule_type = 'cron' THEN s.cron_expression END AS cron_expression,
       CASE WHEN s.schedule_type = 'interval' THEN s.interval_seconds END AS interval_seconds,
       coalesce(s.timezone, 'UTC') AS timezone,
       CASE WHEN coalesce(s.enabled, true) AND s.project_id IS NOT NULL
            THEN s.next_run_at END AS next_run_at,
       last.status AS last_status, ok.finished_at AS last_success_at
FROM cpi_schedules s
LEFT JOIN LATERAL (
    SELECT j.status FROM cpi_jobs j
    WHERE j.schedule_name = s.name AND j.status <> 'running'
    ORDER BY j.started_at DESC LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT j.finished_at FROM cpi_jobs j
    WHERE j.schedule_name = s.name AND j.status = 'succeeded'
    ORDER BY j.started_at DESC LIMIT 1
) ok ON true
WHERE s.owner = %s
"""


def schedule_gauges(conn: psycopg.Connection[Any], owner: str) -> list[ScheduleGauges]:
    """Every schedule ``owner`` manages, enabled or not, with its latest run and success."""
    with conn.cursor(row_factory=class_row(ScheduleGauges)) as cur:
        return cur.execute(_GAUGES, (owner,)).fetchall()
