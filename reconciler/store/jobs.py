"""Job rows in ``cpi_jobs`` (always the management database): start, heartbeat, finish, abandon.

``imports.running`` calls ``start_job`` before a run, keeps a ``Heartbeat`` going during it and
calls ``finish_job`` at the end, or ``fail_lost_job`` over a new session when PostgreSQL went away
mid-run and came back; the daemon may call ``reap_abandoned`` on its own. Liveness has two
signals. The runner holds a session advisory lock keyed on the schedule name on the connection
that wrote the row: when its process dies, PostgreSQL closes that session and the lock is free, so
a ``running`` row whose lock is free is abandoned at once. When the lock is still held but the
heartbeat is older than ``STALE_AFTER`` (a host that vanished leaves a half-open socket for hours),
the holder's backend is terminated and its job abandoned. Detection runs before the overlap
decision, so a dead run never blocks its schedule; ``idx_cpi_jobs_one_running`` is the backstop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from reconciler.logs import get_logger
from reconciler.model.results import FileResult, JobStatus
from reconciler.store.locks import Named, named_key

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER",
    "Ended",
    "Heartbeat",
    "ScheduleRef",
    "Started",
    "fail_lost_job",
    "finish_job",
    "job_lock_key",
    "reap_abandoned",
    "record_callback",
    "record_missed",
    "start_job",
]

HEARTBEAT_SECONDS = 5.0
STALE_AFTER = timedelta(seconds=60)  # twelve missed heartbeats
_TERMINATE_WAIT = 5.0
_log = get_logger("reconciler.jobs")


@dataclass(frozen=True, slots=True)
class ScheduleRef:
    """The identity a job row keeps of its schedule and project."""

    id: str | None
    name: str
    project_id: str | None
    project: str | None


@dataclass(frozen=True, slots=True)
class Started:
    """The row ``start_job`` wrote: ``running`` (go ahead) or ``skipped`` (do not run).

    ``claimed`` is false when another replica already claimed this scheduled occurrence: then no
    row was written and ``id`` is the other replica's job.
    """

    id: str
    status: JobStatus
    started_at: datetime
    error: str | None = None
    claimed: bool = True


@dataclass(frozen=True, slots=True)
class Ended:
    """A job's end as ``fail_lost_job`` found it: ``ours`` is false if it had ended already."""

    status: JobStatus
    error: str | None
    finished_at: datetime | None
    ours: bool


def job_lock_key(schedule_name: str) -> int:
    """The advisory lock a runner holds for the whole run (signed 64-bit, stable across hosts)."""
    return named_key(Named.JOB, schedule_name)


def _lock_holder(conn: psycopg.Connection[Any], key: int) -> int | None:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchone()
    return int(row[0]) if row else None


def _try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def _abandon(conn: psycopg.Connection[Any], schedule_name: str, reason: str) -> list[str]:
    """Mark the schedule's running rows abandoned and count them as failed runs, atomically."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE cpi_jobs SET status = 'abandoned', finished_at = now(), error = %s "
            "WHERE schedule_name = %s AND status = 'running' "
            "RETURNING id::text, schedule_id, started_at",
            (reason, schedule_name),
        ).fetchall()
        for job_id, schedule_id, started_at in rows:
            _count(conn, schedule_id, job_id, started_at, new_run=1, succeeded=0, failed=1)
    for row in rows:
        _log.warning("job abandoned", job_id=row[0], schedule=schedule_name, reason=reason)
    return [row[0] for row in rows]


def _count(
    conn: psycopg.Connection[Any],
    schedule_id: Any,
    job_id: str,
    started_at: datetime,
    *,
    new_run: int,
    succeeded: int,
    failed: int,
) -> None:
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


def _reap_stale_holder(conn: psycopg.Connection[Any], schedule_name: str, key: int) -> bool:
    """Terminate a lock holder whose heartbeat stopped; true once the lock is ours."""
    row = conn.execute(
        "SELECT id::text, coalesce(heartbeat_at, started_at) FROM cpi_jobs "
        "WHERE schedule_name = %s AND status = 'running' "
        "AND coalesce(heartbeat_at, started_at) < now() - %s",
        (schedule_name, STALE_AFTER),
    ).fetchone()
    holder = _lock_holder(conn, key)
    if row is None or holder is None:
        return False
    _log.warning("terminating a stalled run", job_id=row[0], backend=holder, last_beat=row[1])
    try:
        conn.execute("SELECT pg_terminate_backend(%s)", (holder,))
    except pg_errors.InsufficientPrivilege:
        _log.warning("cannot terminate the stalled run's session", backend=holder)
        return False
    deadline = time.monotonic() + _TERMINATE_WAIT
    while time.monotonic() < deadline:
        if _try_lock(conn, key):
            return True
        time.sleep(0.05)
    return False


def reap_abandoned(conn: psycopg.Connection[Any]) -> list[str]:
    """Abandon every running job whose runner is gone; ``conn`` must be in autocommit mode."""
    names = [r[0] for r in conn.execute("SELECT DISTINCT schedule_name FROM cpi_jobs "
                                        "WHERE status = 'running'")]  # fmt: skip
    reaped: list[str] = []
    for name in names:
        key = job_lock_key(name)
        if _try_lock(conn, key) or _reap_stale_holder(conn, name, key):
            try:
                reaped += _abandon(conn, name, "the process running this job stopped")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return reaped


def _insert(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    status: JobStatus,
    *,
    trigger: str,
    scheduled_for: datetime | None,
    error: str | None = None,
) -> tuple[str, datetime]:
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO cpi_jobs (schedule_id, schedule_name, project_id, project_name, trigger, "
            "status, scheduled_for, started_at, heartbeat_at, finished_at, worker, error) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now(), "
            "CASE WHEN %s = 'running' THEN NULL ELSE now() END, %s, %s) "
            "RETURNING id::text, started_at",
            (schedule.id, schedule.name, schedule.project_id, schedule.project, trigger, status,
             scheduled_for, status, f"{socket.gethostname()}:{os.getpid()}", error),
        ).fetchone()  # fmt: skip
    assert row is not None
    return row[0], row[1]


def start_job(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    *,
    trigger: str,
    scheduled_for: datetime | None = None,
) -> Started:
    """Record a run as ``running`` (holding its lock on ``conn``), or as ``skipped`` on overlap.

    ``conn`` must be an autocommit connection kept open for the whole run.
    """
    key = job_lock_key(schedule.name)
    if _try_lock(conn, key) or _reap_stale_holder(conn, schedule.name, key):
        # Nobody alive holds the lock, so every running row of this schedule is a dead run's.
        _abandon(conn, schedule.name, "the process running this job stopped")
        try:
            job_id, started_at = _insert(
                conn, schedule, "running", trigger=trigger, scheduled_for=scheduled_for
            )
            return Started(job_id, "running", started_at)
        except pg_errors.UniqueViolation as exc:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            if exc.diag.constraint_name == "idx_cpi_jobs_occurrence":
                return _claimed_elsewhere(conn, schedule.name, scheduled_for)
            # else: a runner that does not take the lock (an older program) holds the row
    return _skip(conn, schedule, trigger=trigger, scheduled_for=scheduled_for)


def _skip(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    *,
    trigger: str,
    scheduled_for: datetime | None,
) -> Started:
    running = conn.execute(
        "SELECT id::text, started_at FROM cpi_jobs WHERE schedule_name = %s AND status = 'running'",
        (schedule.name,),
    ).fetchone()
    reason = (
        f"job {running[0]} of this schedule is still running (since {running[1]:%Y-%m-%d %H:%M %Z})"
        if running
        else "another run of this schedule is starting"
    )
    try:
        job_id, started_at = _insert(
            conn, schedule, "skipped", trigger=trigger, scheduled_for=scheduled_for, error=reason
        )
    except pg_errors.UniqueViolation:
        return _claimed_elsewhere(conn, schedule.name, scheduled_for)
    _log.warning("run skipped", schedule=schedule.name, job_id=job_id, reason=reason)
    return Started(job_id, "skipped", started_at, error=reason)


def record_missed(
    conn: psycopg.Connection[Any], schedule: ScheduleRef, scheduled_for: datetime, reason: str
) -> Started:
    """Record an occurrence that was not run (downtime beyond its grace) as ``missed``.

    The occurrence index makes this exactly once across replicas: if another replica already
    recorded or ran it, nothing is written and ``claimed`` is false.
    """
    try:
        job_id, started_at = _insert(
            conn, schedule, "missed", trigger="schedule", scheduled_for=scheduled_for, error=reason
        )
    except pg_errors.UniqueViolation:
        return _claimed_elsewhere(conn, schedule.name, scheduled_for)
    return Started(job_id, "missed", started_at, error=reason)


def _claimed_elsewhere(
    conn: psycopg.Connection[Any], name: str, scheduled_for: datetime | None
) -> Started:
    row = conn.execute(
        "SELECT id::text, status, started_at FROM cpi_jobs WHERE schedule_name = %s "
        "AND trigger = 'schedule' AND scheduled_for = %s",
        (name, scheduled_for),
    ).fetchone()
    assert row is not None
    return Started(row[0], row[1], row[2], error=f"claimed by job {row[0]}", claimed=False)


_END = (
    "status = %(status)s, finished_at = now(), heartbeat_at = now(), rows_imported = %(rows)s, "
    "bytes_read = %(bytes)s, files = %(files)s, error = %(error)s"
)


def _end(
    started: Started, status: JobStatus, files: tuple[FileResult, ...], error: str | None
) -> dict[str, Any]:
    return {
        "id": started.id, "status": status, "error": error,
        "rows": sum(f.rows for f in files if f.status == "imported"),
        "bytes": sum(f.bytes for f in files), "files": Jsonb([f.to_json() for f in files]),
    }  # fmt: skip


def finish_job(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    started: Started,
    *,
    status: JobStatus,
    files: tuple[FileResult, ...],
    error: str | None,
) -> datetime:
    """Store the final status and the schedule's statistics in one transaction; unlock."""
    with conn.transaction():
        row = conn.execute(
            "WITH old AS (SELECT status FROM cpi_jobs WHERE id = %(id)s FOR UPDATE) "
            "UPDATE cpi_jobs j SET " + _END + " FROM old WHERE j.id = %(id)s "
            "RETURNING old.status, j.finished_at",
            _end(started, status, files, error),
        ).fetchone()
        assert row is not None
        # A run wrongly reaped as abandoned while alive was already counted as a failed run.
        was_abandoned = row[0] == "abandoned"
        _count(
            conn,
            schedule.id,
            started.id,
            started.started_at,
            new_run=0 if was_abandoned else 1,
            succeeded=int(status == "succeeded"),
            failed=int(status == "failed") - int(was_abandoned),
        )
    conn.execute("SELECT pg_advisory_unlock(%s)", (job_lock_key(schedule.name),))
    finished_at: datetime = row[1]
    return finished_at


def fail_lost_job(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    started: Started,
    *,
    files: tuple[FileResult, ...],
    error: str,
) -> Ended:
    """Record ``failed`` over a new session for a run whose own session (and lock) was lost.

    Only a row still ``running`` is finished: once the lock was gone another runner may have
    claimed the schedule and marked this job abandoned, and that record stands. A row that
    has ended already is returned as it is, ``ours`` false (also when this run's own
    ``finish_job`` committed but the answer was lost with the connection).
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE cpi_jobs SET " + _END + " WHERE id = %(id)s AND status = 'running' "
            "RETURNING finished_at",
            _end(started, "failed", files, error),
        ).fetchone()
        if row is not None:
            _count(
                conn, schedule.id, started.id, started.started_at,
                new_run=1, succeeded=0, failed=1,
            )  # fmt: skip
            return Ended("failed", error, row[0], ours=True)
        row = conn.execute(
            "SELECT status, error, finished_at FROM cpi_jobs WHERE id = %s", (started.id,)
        ).fetchone()
    assert row is not None  # job rows are history: reconcile never deletes them
    return Ended(row[0], row[1], row[2], ours=False)


def record_callback(conn: psycopg.Connection[Any], job_id: str, outcome: dict[str, Any]) -> None:
    """Store the callback's delivery outcome on the job; it never changes the job's status."""
    with conn.transaction():
        conn.execute("UPDATE cpi_jobs SET callback = %s WHERE id = %s", (Jsonb(outcome), job_id))


class Heartbeat:
    """A thread refreshing ``heartbeat_at`` (and the running totals) every few seconds."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        totals: Callable[[], tuple[int, int]],
        *,
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._conn, self._job_id, self._totals, self._interval = conn, job_id, totals, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            rows, nbytes = self._totals()
            try:
                self._conn.execute(
                    "UPDATE cpi_jobs SET heartbeat_at = now(), rows_imported = %s, "
                    "bytes_read = %s WHERE id = %s AND status = 'running'",
                    (rows, nbytes, self._job_id),
                )
            except Exception as exc:  # a missed beat is survivable; the next one may succeed
                _log.warning("heartbeat failed", job_id=self._job_id, error=str(exc))
