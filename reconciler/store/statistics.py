"""A schedule's run statistics in ``cpi_schedules``: total, successful and failed runs, last run.

``store.jobs`` counts a run when it records its end, ``store.liveness`` when it abandons a dead
one; both inside the transaction that writes the job's final status, so the statistics and the
job rows always agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["LANDED_ROWS", "count_run"]

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
