"""What becomes of a job ``store.claiming`` claimed: started, handed back, or retried.

A claimed job is ``running`` with no ``started_at`` and its claimer as ``worker``. The claimer's
run slot calls ``start_claimed``: it takes the schedule's run lock and stamps the job started,
on the condition that the row is still unstarted and still this worker's, so a claim handed over
to another replica is started by exactly one of them. ``hand_back`` gives up the claims a
stopping replica will not start, for another replica to take over at once. ``schedule_retry``
follows a failed scheduled run of a schedule with ``retries`` left with the next attempt of the
same occurrence, waiting (no worker) until its backoff is over, when a claim takes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors

from reconciler.model.durations import retry_delay
from reconciler.store.claiming import HANDOFF, ClaimedRun
from reconciler.store.jobs import Started
from reconciler.store.liveness import job_lock_key, release_job_lock, take_job_lock

if TYPE_CHECKING:
    import psycopg

__all__ = ["hand_back", "schedule_retry", "start_claimed"]

_START_LOCK_WAIT = "5s"  # a claim's start waits this long for a skipper or reaper to let go


def start_claimed(conn: psycopg.Connection[Any], run: ClaimedRun, worker: str) -> Started | None:
    """Start claimed job ``run`` on ``conn`` (autocommit, kept for the whole run): take the
    schedule's run lock and stamp the job started. ``None`` when the claim is no longer
    ``worker``'s (taken over by another replica, or ended meanwhile): nothing was done.

    The lock is taken at once but for a moment (a manual run deciding to skip, a reaper
    checking), so the start waits briefly for it. A lock held longer belongs to a run outside
    this scheduler (an older program's): the job is then recorded ``skipped``.
    """
    name = run.schedule.name
    if not (take_job_lock(conn, name) or _wait_for_lock(conn, name)):
        reason = "another run of this schedule held its run lock"
        with conn.transaction():
            row = conn.execute(
                "UPDATE cpi_jobs SET status = 'skipped', started_at = now(), finished_at = now(), "
                "error = %s WHERE id = %s AND status = 'running' AND started_at IS NULL "
                "AND worker = %s RETURNING started_at",
                (reason, run.job_id, worker),
            ).fetchone()
        return None if row is None else Started(run.job_id, "skipped", row[0], error=reason)
    row = conn.execute(
        "UPDATE cpi_jobs SET started_at = now(), heartbeat_at = now() "
        "WHERE id = %s AND status = 'running' AND started_at IS NULL AND worker = %s "
        "RETURNING started_at",
        (run.job_id, worker),
    ).fetchone()
    if row is None:
        release_job_lock(conn, name)
        return None
    return Started(run.job_id, "running", row[0])


def _wait_for_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    """Wait up to ``_START_LOCK_WAIT`` for the run lock (a session lock: kept after commit)."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{_START_LOCK_WAIT}'")
            conn.execute("SELECT pg_advisory_lock(%s)", (job_lock_key(name),))
    except pg_errors.LockNotAvailable:
        return False
    return True


def schedule_retry(conn: psycopg.Connection[Any], job_id: str) -> tuple[str, datetime] | None:
    """After failed job ``job_id``, the next attempt of its occurrence when its schedule has
    retries left: recorded waiting (no worker) until its backoff is over. Its id and when it
    may start; ``None`` when no retry is due (a manual run, retries used up, the schedule
    disabled or deleted meanwhile)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT j.attempt, s.retries, s.retry_backoff_seconds FROM cpi_jobs j "
            "JOIN cpi_schedules s ON s.id = j.schedule_id "
            "WHERE j.id = %s AND j.status = 'failed' AND j.trigger = 'schedule' "
            "AND coalesce(s.enabled, true) AND j.attempt <= s.retries",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        attempt, _, backoff = row
        retry = conn.execute(
            "INSERT INTO cpi_jobs (schedule_id, schedule_name, project_id, project_name, trigger, "
            "status, scheduled_for, attempt, retry_of, retry_at) "
            "SELECT schedule_id, schedule_name, project_id, project_name, 'schedule', 'running', "
            "scheduled_for, %s, id, now() + %s * interval '1 second' FROM cpi_jobs WHERE id = %s "
            "ON CONFLICT DO NOTHING RETURNING id::text, retry_at",
            (attempt + 1, retry_delay(attempt + 1, backoff), job_id),
        ).fetchone()
    return None if retry is None else (retry[0], retry[1])


def hand_back(conn: psycopg.Connection[Any], worker: str) -> int:
    """Make ``worker``'s unstarted claims free for another replica to take over at once."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE cpi_jobs SET heartbeat_at = now() - %s - interval '1 second' "
            "WHERE worker = %s AND status = 'running' AND started_at IS NULL",
            (HANDOFF, worker),
        )
    return cur.rowcount
