"""Job rows in ``cpi_jobs`` (always the management database): start, skip, miss, finish.

``imports.runs.running`` calls ``start_job`` before a run, keeps a ``Heartbeat`` going during it and
calls ``finish_job`` at the end, or ``fail_lost_job`` over a new session when PostgreSQL went away
mid-run and came back; the daemon's scheduler records its claims in ``store.claiming`` and may
call ``reap_abandoned`` on its own. Whether a runner is alive (the run's advisory lock, the
heartbeat, reaping) is ``store.liveness``; its names are part of this module's surface, as a run
needs both. A run is counted in the schedule's statistics exactly once, in the transaction that
writes its end, whichever session writes it first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from reconciler.logs import get_logger
from reconciler.model.results import FileResult, JobStatus, fold
from reconciler.store.connecting import process_name
from reconciler.store.liveness import (
    HEARTBEAT_SECONDS,
    STALE_AFTER,
    Heartbeat,
    abandon,
    job_lock_key,
    reap_abandoned,
    release_job_lock,
    take_job_lock,
)
from reconciler.store.locks import Named, named_key
from reconciler.store.statistics import LANDED_ROWS, count_run, end_running

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_AFTER",
    "Ended",
    "Heartbeat",
    "ScheduleRef",
    "Started",
    "end_worker_jobs",
    "fail_lost_job",
    "finish_job",
    "job_lock_key",
    "occurrence_claimed",
    "reap_abandoned",
    "record_callback",
    "start_job",
]

_log = get_logger("reconciler.jobs")

# What PostgreSQL's text and jsonb cannot hold: NUL, and the lone surrogates that stand for bytes
# that were not UTF-8 (``surrogateescape``, as file names and raw bytes are decoded) or for
# nothing at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(char: re.Match[str]) -> str:
    code = ord(char.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the byte it stands for
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _storable(text: str | None) -> str | None:
    r"""``text`` as a job row can hold it: NUL as ``\x00``, bytes that were not UTF-8 as ``\xNN``.

    Every text written to ``cpi_jobs`` (the error, and each string of the files and callback
    JSON) passes here: a file name, a header or a library's message may carry either, and
    PostgreSQL refusing them must never leave a job ``running``. Nothing is dropped; a
    backslash already in the text stays as it is, as the text is read, never decoded back.
    """
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return _UNSTORABLE.sub(_escape, text)


def _storable_json(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with every string, keys too, made storable."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return {_storable(k): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_json(v) for v in value]
    return value


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
             scheduled_for, status, process_name(), _storable(error)),
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

    ``conn`` must be an autocommit connection kept open for the whole run. The decision (run,
    skip, or claimed by another replica) is taken under a short transaction lock per schedule:
    replicas whose timers fire the same occurrence at the same instant queue here, so none can
    record a skip for an occurrence another one is about to run.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (named_key(Named.CLAIM, schedule.name),))
        return _decide(conn, schedule, trigger=trigger, scheduled_for=scheduled_for)


def _decide(
    conn: psycopg.Connection[Any],
    schedule: ScheduleRef,
    *,
    trigger: str,
    scheduled_for: datetime | None,
) -> Started:
    if (
        scheduled_for is not None
        and trigger == "schedule"
        and occurrence_claimed(conn, schedule.name, scheduled_for)
    ):
        return _claimed_elsewhere(conn, schedule.name, scheduled_for)
    if take_job_lock(conn, schedule.name):
        # Nobody alive holds the lock, so every running row of this schedule is a dead run's.
        abandon(conn, schedule.name, "the process running this job stopped")
        try:
            job_id, started_at = _insert(
                conn, schedule, "running", trigger=trigger, scheduled_for=scheduled_for
            )
            return Started(job_id, "running", started_at)
        except pg_errors.UniqueViolation as exc:
            release_job_lock(conn, schedule.name)
            if exc.diag.constraint_name == "idx_cpi_jobs_occurrence_attempt":
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
        "SELECT id::text, started_at, worker, retry_at FROM cpi_jobs "
        "WHERE schedule_name = %s AND status = 'running'",
        (schedule.name,),
    ).fetchone()
    if running is None:
        reason = "another run of this schedule is starting"
    elif running[1] is None and running[2] is None:  # a retry waiting for its backoff
        reason = f"job {running[0]}, a retry of this schedule, waits until {running[3]:%H:%M:%S %Z}"
    elif running[1] is None:  # claimed by the scheduler, about to start
        reason = f"job {running[0]} of this schedule is about to start"
    else:
        reason = (
            f"job {running[0]} of this schedule is still running "
            f"(since {running[1]:%Y-%m-%d %H:%M %Z})"
        )
    try:
        job_id, started_at = _insert(
            conn, schedule, "skipped", trigger=trigger, scheduled_for=scheduled_for, error=reason
        )
    except pg_errors.UniqueViolation:
        return _claimed_elsewhere(conn, schedule.name, scheduled_for)
    _log.warning("run skipped", schedule=schedule.name, job_id=job_id, reason=reason)
    return Started(job_id, "skipped", started_at, error=reason)


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
    "bytes_read = %(bytes)s, files = %(files)s, skipped_files = %(skipped)s, error = %(error)s"
)


def _end(
    started: Started, status: JobStatus, files: tuple[FileResult, ...], error: str | None
) -> dict[str, Any]:
    acted, skipped = fold(files)  # the files acted on are listed; those skipped unread counted
    return {
        "id": started.id, "status": status, "error": _storable(error),
        "rows": sum(f.rows for f in files if f.status == "imported"),
        "bytes": sum(f.bytes for f in files),
        "files": Jsonb(_storable_json([f.to_json() for f in acted])), "skipped": skipped,
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
    """Store the final status and the schedule's statistics in one transaction; unlock.

    The row takes this run's outcome even if it ended already (reaped as abandoned while the run
    was alive, or failed over another session); the statistics then replace the count it got.
    """
    with conn.transaction():
        row = conn.execute(
            "WITH old AS (SELECT status FROM cpi_jobs WHERE id = %(id)s FOR UPDATE) "
            "UPDATE cpi_jobs j SET " + _END + " FROM old WHERE j.id = %(id)s "
            "RETURNING old.status, j.finished_at",
            _end(started, status, files, error),
        ).fetchone()
        assert row is not None
        old: JobStatus = row[0]
        # A row that is no longer running was counted by whoever ended it: as failed by a reap
        # that wrongly took this live run for dead (abandoned), or by a shutdown path that
        # recorded the end over another session (failed). The run counts once, as it ended.
        counted = old != "running"
        count_run(
            conn,
            schedule.id,
            started.id,
            started.started_at,
            new_run=0 if counted else 1,
            succeeded=int(status == "succeeded") - int(old == "succeeded"),
            failed=int(status == "failed") - int(old in ("failed", "abandoned")),
        )
        # Released before the commit, not after: a claimer that gets the lock in between
        # waits on this row's lock in ``abandon`` and then sees the run ended, instead of
        # failing the try-lock and recording a skip for an overlap that is already over.
        release_job_lock(conn, schedule.name)
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
        ended = end_running(
            conn, set_=_END, where="j.id = %(id)s", params=_end(started, "failed", files, error)
        )
        if ended:
            ((_, finished_at, stored),) = ended
            return Ended("failed", stored, finished_at, ours=True)
        row = conn.execute(
            "SELECT status, error, finished_at FROM cpi_jobs WHERE id = %s", (started.id,)
        ).fetchone()
    assert row is not None  # a running job is never pruned (store.pruning)
    return Ended(row[0], row[1], row[2], ours=False)


def occurrence_claimed(conn: psycopg.Connection[Any], name: str, scheduled_for: datetime) -> bool:
    """Whether a job of schedule ``name`` exists for the occurrence at ``scheduled_for``."""
    row = conn.execute(
        "SELECT 1 FROM cpi_jobs WHERE schedule_name = %s AND trigger = 'schedule' "
        "AND scheduled_for = %s",
        (name, scheduled_for),
    ).fetchone()
    return row is not None


def end_worker_jobs(conn: psycopg.Connection[Any], worker: str, error: str) -> list[str]:
    """Record ``failed`` for the jobs ``worker`` (``host:pid``) still runs: it is about to exit.

    Called over a session of its own by ``reconcile serve`` when the shutdown grace ran out;
    each run's own session ends with the process, so its file transaction rolls back, and its
    rows are those that landed (``LANDED_ROWS``). A run
    that ends meanwhile keeps its own record: ``finish_job`` counts it once.
    """
    with conn.transaction():
        ended = end_running(
            conn,
            set_="status = 'failed', finished_at = now(), heartbeat_at = now(), "
            "rows_imported = " + LANDED_ROWS + ", error = %(error)s",
            where="j.worker = %(worker)s AND j.started_at IS NOT NULL",
            params={"error": _storable(error), "worker": worker},
        )
    return [job_id for job_id, _, _ in ended]


def record_callback(conn: psycopg.Connection[Any], job_id: str, outcome: dict[str, Any]) -> None:
    """Store the callback's delivery outcome on the job; it never changes the job's status."""
    with conn.transaction():
        conn.execute(
            "UPDATE cpi_jobs SET callback = %s WHERE id = %s",
            (Jsonb(_storable_json(outcome)), job_id),
        )
