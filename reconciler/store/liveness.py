"""Whether a job's runner is still alive: its advisory lock, its heartbeat, and reaping dead runs.

``store.jobs`` takes the run's lock in ``start_job`` (reaping first) and releases it when the
run ends; ``imports.runs.running`` keeps a ``Heartbeat`` going during the run; the daemon may call
``reap_abandoned`` on its own. Liveness has two signals. The runner holds a session advisory
lock keyed on the schedule name on the connection that wrote the row: when its process dies,
PostgreSQL closes that session and the lock is free, so a ``running`` row whose lock is free is
abandoned at once. When the lock is still held but the heartbeat is older than ``STALE_AFTER``
(a host that vanished leaves a half-open socket for hours), the holder's backend is terminated
and its job abandoned. Detection runs before the overlap decision, so a dead run never blocks
its schedule; ``idx_cpi_jobs_one_running`` is the backstop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors

from reconciler.logs import get_logger
from reconciler.store.locks import Named, lock_holder, named_key
from reconciler.store.statistics import LANDED_ROWS, end_running

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER",
    "Heartbeat",
    "abandon",
    "job_lock_key",
    "reap_abandoned",
    "release_job_lock",
    "take_job_lock",
]

HEARTBEAT_SECONDS = 5.0
STALE_AFTER = timedelta(seconds=60)  # twelve missed heartbeats
_TERMINATE_WAIT = 5.0
_log = get_logger("reconciler.jobs")


def job_lock_key(schedule_name: str) -> int:
    """The advisory lock a runner holds for the whole run (signed 64-bit, stable across hosts)."""
    return named_key(Named.JOB, schedule_name)


def _try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def abandon(conn: psycopg.Connection[Any], schedule_name: str, reason: str) -> list[str]:
    """Mark the schedule's running rows abandoned and count them as failed runs, atomically.

    The job ends at its last heartbeat (the last sign of life), with the rows that landed
    (``LANDED_ROWS``). A run the database itself cut off (the server started again after the
    run began: every session and lock ended with the old one) says so instead of ``reason``.
    """
    with conn.transaction():
        ended = end_running(
            conn,
            set_="status = 'abandoned', error = CASE "
            "WHEN pg_postmaster_start_time() > j.started_at THEN 'cut off by a restart of the "
            "database at ' || to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD HH24:MI:SS') || ' UTC: its session ended, its open transaction rolled "
            "back, and its runner did not record the end in time' ELSE %(reason)s END, "
            "finished_at = coalesce(j.heartbeat_at, j.started_at, now()), "
            "rows_imported = " + LANDED_ROWS,
            where="j.schedule_name = %(name)s AND j.started_at IS NOT NULL",
            params={"reason": reason, "name": schedule_name},
        )
    for job_id, _, error in ended:
        _log.warning("job abandoned", job_id=job_id, schedule=schedule_name, reason=error)
    return [job_id for job_id, _, _ in ended]


def _reap_stale_holder(conn: psycopg.Connection[Any], schedule_name: str, key: int) -> bool:
    """Terminate a lock holder whose heartbeat stopped; true once the lock is ours."""
    row = conn.execute(
        "SELECT id::text, coalesce(heartbeat_at, started_at) FROM cpi_jobs "
        "WHERE schedule_name = %s AND status = 'running' AND started_at IS NOT NULL "
        "AND coalesce(heartbeat_at, started_at) < now() - %s",
        (schedule_name, STALE_AFTER),
    ).fetchone()
    holder = lock_holder(conn, key)
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


def take_job_lock(conn: psycopg.Connection[Any], schedule_name: str) -> bool:
    """Take the schedule's run lock on ``conn`` if nobody alive holds it (a stalled holder is
    terminated first); true once it is ours. ``conn`` must be in autocommit mode."""
    key = job_lock_key(schedule_name)
    return _try_lock(conn, key) or _reap_stale_holder(conn, schedule_name, key)


def release_job_lock(conn: psycopg.Connection[Any], schedule_name: str) -> None:
    """Release the schedule's run lock held on ``conn``."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (job_lock_key(schedule_name),))


def reap_abandoned(conn: psycopg.Connection[Any]) -> list[str]:
    """Abandon every running job whose runner is gone; ``conn`` must be in autocommit mode."""
    started = "SELECT DISTINCT schedule_name FROM cpi_jobs WHERE status = 'running' " + (
        "AND started_at IS NOT NULL"
    )
    names = [r[0] for r in conn.execute(started)]
    reaped: list[str] = []
    for name in names:
        # Under the claim lock, as a claim decides: a claimer must not find the run lock
        # taken by this check and record a skip for nothing.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (named_key(Named.CLAIM, name),))
            if take_job_lock(conn, name):
                try:
                    reaped += abandon(conn, name, "the process running this job stopped")
                finally:
                    release_job_lock(conn, name)
    return reaped


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
