"""Claiming what is due: the one transaction in which a replica takes occurrences to run.

``cpi_schedules.next_run_at`` is the only copy of what is due. ``daemon.timing`` wakes at the
earliest one and calls ``claim_due`` with the number of run slots it has free; in one transaction
it:

1. takes over claims another replica made but never started (``handoff`` old: that replica died
   or stopped between its claim and the start): within grace they run here, past it they are
   recorded ``missed`` with the reason; then the retries whose backoff is over (a failed run
   of a schedule with ``retries`` left is followed by a job of the same occurrence with the
   next ``attempt``, waiting unclaimed until its ``retry_at``: ``schedule_retry``);
2. gives every schedule with no next run yet (new, or its timing changed) its first one, and
   tells the other replicas (``NOTIFY``), which may have looked while these rows were locked;
3. locks the due schedules, earliest first, at most as many as it has free slots
   (``FOR UPDATE SKIP LOCKED``: replicas claiming at the same instant take disjoint batches),
   lets ``model.occurrences.decide`` sort each one's occurrences, records the one to run as a
   job (``running``, not yet started, or ``skipped`` when a run of the schedule is still going)
   and the others ``missed`` with their true reason, and moves ``next_run_at`` on;

then commits and returns the jobs to start. A replica with no free slot claims nothing, so work
spreads over the replicas by capacity.

A claimed job is ``running`` with no ``started_at`` and its claimer as ``worker`` until its run
slot starts it (``store.claimed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.logs import get_logger
from reconciler.model.occurrences import Decision, decide
from reconciler.store.jobs import ScheduleRef
from reconciler.store.liveness import abandon, release_job_lock, take_job_lock
from reconciler.store.locks import Named, named_key
from reconciler.store.schedules import ScheduleRecord, records
from reconciler.store.scheduling import notify_changed

if TYPE_CHECKING:
    import psycopg

__all__ = ["HANDOFF", "Claimed", "ClaimedRun", "claim_due"]

# How long a claim may stay unstarted before another replica takes it over. A replica claims only
# for free run slots, so its claims start within milliseconds; one that waits this long belongs
# to a replica that stopped, froze or lost its database session.
HANDOFF = timedelta(seconds=15)
_DEFAULT_GRACE = 300  # seconds: the seed's misfire grace
_log = get_logger("reconciler.scheduler")


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A job recorded by a claim: ``running`` (to start) or ``skipped`` (its callback to send)."""

    job_id: str
    schedule: ScheduleRef
    scheduled_for: datetime
    status: str
    error: str | None = None
    recorded_at: datetime | None = None  # when a skip was recorded (a running job: at its start)
    attempt: int = 1  # 2 and more: a retry of the occurrence


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took: the jobs to start, what it recorded, when to look again.

    ``full`` is true when the claim took as many schedules as it had slots (more may be due);
    ``next_due`` is the earliest stored next run left (in the caller's clock), ``handoff_in``
    the seconds until an unstarted claim of another replica may be taken over, ``retry_in``
    until the next retry may start (both by the database's clock).
    """

    runs: tuple[ClaimedRun, ...]
    missed: int
    full: bool
    next_due: datetime | None
    handoff_in: float | None
    retry_in: float | None = None


# The schedules this replica's owner manages and runs: enabled, their project present (the rest
# of the statement after the FROM clause of ``store.schedules.records``).
_MANAGED = "WHERE s.owner = %(owner)s AND coalesce(s.enabled, true) AND p.id IS NOT NULL "
_UNSET = _MANAGED + "AND s.next_run_at IS NULL FOR UPDATE OF s SKIP LOCKED"
_DUE = (
    _MANAGED + "AND s.next_run_at <= %(now)s "
    "ORDER BY s.next_run_at, s.name LIMIT %(limit)s FOR UPDATE OF s SKIP LOCKED"
)
# Rows written by another program (no anchor) get one now, once: the cadence counts from here.
_ANCHOR = """
UPDATE cpi_schedules SET interval_anchor = now()
WHERE owner = %(owner)s AND interval_seconds IS NOT NULL AND interval_anchor IS NULL
"""
_STALE = """
SELECT j.id::text, j.scheduled_for, coalesce(j.retry_at, j.scheduled_for), j.attempt, j.worker,
       s.misfire_grace_seconds, s.id::text, s.name, p.id::text, p.name
FROM cpi_jobs j JOIN cpi_schedules s ON s.name = j.schedule_name
     JOIN cpi_projects p ON p.id = s.project_id
WHERE j.status = 'running' AND j.started_at IS NULL AND j.worker IS NOT NULL
  AND j.heartbeat_at < now() - %(handoff)s AND s.owner = %(owner)s
ORDER BY j.scheduled_for LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED
"""
# Retries still waiting whose schedule was disabled, deleted or lost its project meanwhile: they
# are not run, and say why (a schedule put back later starts afresh, without them).
_ORPHANED = """
UPDATE cpi_jobs j SET status = 'skipped', started_at = now(), finished_at = now(),
       error = 'not run: its schedule was disabled or deleted before this retry was due'
WHERE j.status = 'running' AND j.started_at IS NULL AND j.worker IS NULL
  AND NOT EXISTS (SELECT 1 FROM cpi_schedules s
                  WHERE s.name = j.schedule_name AND coalesce(s.enabled, true)
                    AND s.project_id IS NOT NULL)
"""
_RETRIES = """
UPDATE cpi_jobs j SET worker = %(worker)s, heartbeat_at = now()
FROM cpi_schedules s, cpi_projects p
WHERE j.id IN (SELECT r.id FROM cpi_jobs r JOIN cpi_schedules rs ON rs.name = r.schedule_name
               WHERE r.status = 'running' AND r.started_at IS NULL AND r.worker IS NULL
                 AND r.retry_at <= now() AND rs.owner = %(owner)s
               ORDER BY r.retry_at LIMIT %(limit)s FOR UPDATE OF r SKIP LOCKED)
  AND s.name = j.schedule_name AND p.id = s.project_id
RETURNING j.id::text, s.id::text, s.name, p.id::text, p.name, j.scheduled_for, j.attempt
"""
_INSERT = """
INSERT INTO cpi_jobs (schedule_id, schedule_name, project_id, project_name, trigger, status,
                      scheduled_for, started_at, heartbeat_at, finished_at, worker, error)
SELECT x.schedule_id, x.name, x.project_id, x.project, 'schedule', x.status, x.at,
       CASE WHEN x.status = 'running' THEN NULL ELSE now() END, now(),
       CASE WHEN x.status = 'running' THEN NULL ELSE now() END, %(worker)s, x.error
FROM jsonb_to_recordset(%(jobs)s::jsonb) AS x(schedule_id uuid, name text, project_id uuid,
     project text, status text, at timestamptz, error text)
ON CONFLICT DO NOTHING
RETURNING id::text, schedule_name, scheduled_for, status, started_at
"""
_ADVANCE = """
UPDATE cpi_schedules s SET next_run_at = x.next
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(name text, next timestamptz)
WHERE s.name = x.name
"""
_WAKE = (
    "SELECT (SELECT min(s.next_run_at) FROM cpi_schedules s "
    "LEFT JOIN cpi_projects p ON p.id = s.project_id "
    + _MANAGED
    + """),
       (SELECT extract(epoch FROM min(j.heartbeat_at) + %(handoff)s - now())::float8
        FROM cpi_jobs j JOIN cpi_schedules s ON s.name = j.schedule_name
        WHERE j.status = 'running' AND j.started_at IS NULL AND s.owner = %(owner)s
          AND j.worker IS NOT NULL),
       (SELECT extract(epoch FROM min(j.retry_at) - now())::float8
        FROM cpi_jobs j JOIN cpi_schedules s ON s.name = j.schedule_name
        WHERE j.status = 'running' AND j.started_at IS NULL AND j.worker IS NULL
          AND s.owner = %(owner)s)
"""
)


def claim_due(
    conn: psycopg.Connection[Any],
    *,
    owner: str,
    worker: str,
    now: datetime,
    limit: int,
    handoff: timedelta = HANDOFF,
) -> Claimed:
    """Claim up to ``limit`` due occurrences of ``owner``'s schedules for ``worker`` (one
    transaction); ``now`` is the scheduler's clock. ``conn`` must be in autocommit mode."""
    params: dict[str, Any] = {
        "owner": owner, "worker": worker, "now": now, "limit": max(limit, 0), "handoff": handoff,
    }  # fmt: skip
    with conn.transaction():
        taken, missed = _take_over(conn, params, now)
        params["limit"] = max(limit - len(taken), 0)
        conn.execute(_ORPHANED)
        taken += _take_retries(conn, params)
        conn.execute(_ANCHOR, params)
        unset = records(conn, _UNSET, params)
        params["limit"] = max(limit - len(taken), 0)
        due = records(conn, _DUE, params) if params["limit"] else []
        decisions = [
            (row, decide(row.timing, next_run_at=row.next_run_at, grace=_grace(row), now=now))
            for row in [*unset, *due]
        ]
        runs, recorded = _record(conn, worker, decisions)
        _advance(conn, decisions)
        if unset:
            # Another replica that looked while these rows were locked here saw neither a next
            # run nor a row to set: it looks again on the notice, and wakes at the right time.
            notify_changed(conn, owner)
        wake = conn.execute(_WAKE, params).fetchone()
    assert wake is not None
    return Claimed(
        runs=(*taken, *runs),
        missed=missed + recorded,
        full=len(taken) + len(due) >= limit,  # at the limit, more may be due
        next_due=wake[0],
        handoff_in=None if wake[1] is None else max(float(wake[1]), 0.0),
        retry_in=None if wake[2] is None else max(float(wake[2]), 0.0),
    )


def _grace(row: ScheduleRecord) -> timedelta:
    """The schedule's misfire grace (the seed's default where another program left none)."""
    grace = row.misfire_grace_seconds
    return timedelta(seconds=_DEFAULT_GRACE if grace is None else grace)


def _take_over(
    conn: psycopg.Connection[Any], params: dict[str, Any], now: datetime
) -> tuple[list[ClaimedRun], int]:
    """Claims left unstarted by another replica: ours within grace, else ``missed``."""
    if not params["limit"]:
        return [], 0
    stale = conn.execute(_STALE, params).fetchall()
    taken: list[ClaimedRun] = []
    missed = 0
    for job_id, at, due, attempt, old_worker, stored_grace, *ref in stale:
        schedule = ScheduleRef(*ref)
        grace_seconds = _DEFAULT_GRACE if stored_grace is None else stored_grace
        if now - due <= timedelta(seconds=grace_seconds):  # a retry: from when it was due
            conn.execute(
                "UPDATE cpi_jobs SET worker = %s, heartbeat_at = now() WHERE id = %s",
                (params["worker"], job_id),
            )
            taken.append(ClaimedRun(job_id, schedule, at, "running", attempt=attempt))
            _log.warning("claim taken over", schedule=schedule.name, job_id=job_id,
                         scheduled_for=at.isoformat(), claimed_by=old_worker)  # fmt: skip
            continue
        reason = (
            f"not run: claimed by {old_worker}, which stopped before starting it; by "
            f"{int((now - due).total_seconds())} s after its time it was past the schedule's "
            f"misfire_grace of {grace_seconds} s"
        )
        conn.execute(
            "UPDATE cpi_jobs SET status = 'missed', started_at = now(), finished_at = now(), "
            "error = %s WHERE id = %s",
            (reason, job_id),
        )
        missed += 1
        _log.warning("occurrence missed", schedule=schedule.name, job_id=job_id,
                     scheduled_for=at.isoformat(), reason=reason)  # fmt: skip
    return taken, missed


def _take_retries(conn: psycopg.Connection[Any], params: dict[str, Any]) -> list[ClaimedRun]:
    """The retries whose backoff is over, claimed for this worker."""
    if not params["limit"]:
        return []
    return [
        ClaimedRun(job_id, ScheduleRef(sid, name, pid, project), at, "running", attempt=attempt)
        for job_id, sid, name, pid, project, at, attempt in conn.execute(_RETRIES, params)
    ]


def _busy(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, str]:
    """Of ``names``, those with a run still going, and why each is busy.

    A run whose lock nobody holds died: it is abandoned here (as the reaper would), so its
    schedule runs. A claim not yet started is a run about to start.
    """
    if not names:
        return {}
    busy: dict[str, str] = {}
    rows = conn.execute(
        "SELECT schedule_name, id::text, started_at, worker, retry_at FROM cpi_jobs "
        "WHERE status = 'running' AND schedule_name = ANY(%s)",
        (names,),
    ).fetchall()
    for name, job_id, started_at, worker, retry_at in rows:
        if started_at is None and worker is None:
            busy[name] = (
                f"job {job_id}, a retry of this schedule, waits until {retry_at:%H:%M:%S %Z}"
            )
        elif started_at is None:
            busy[name] = f"job {job_id} of this schedule is about to start"
        elif take_job_lock(conn, name):  # nobody alive holds it: that run is gone
            try:
                abandon(conn, name, "the process running this job stopped")
            finally:
                release_job_lock(conn, name)
        else:
            busy[name] = (
                f"job {job_id} of this schedule is still running "
                f"(since {started_at:%Y-%m-%d %H:%M %Z})"
            )
    return busy


def _record(
    conn: psycopg.Connection[Any], worker: str, decisions: list[tuple[ScheduleRecord, Decision]]
) -> tuple[list[ClaimedRun], int]:
    """Insert the decided jobs in one statement; the runs to start and the number missed."""
    running = [row.name for row, d in decisions if d.run is not None]
    if running:  # a manual run deciding run-or-skip for one of these waits for this commit
        keys = sorted({named_key(Named.CLAIM, name) for name in running})
        conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (keys,))
    busy = _busy(conn, running)
    jobs: list[dict[str, Any]] = []
    for row, decision in decisions:
        base = {"schedule_id": row.id, "name": row.name, "project_id": row.project_id,
                "project": row.project}  # fmt: skip
        ran = decision.run is not None and row.name not in busy
        for gone in decision.missed:
            jobs.append(base | {"status": "missed", "at": gone.at.isoformat(),
                                "error": gone.reason(ran=ran)})  # fmt: skip
        if decision.run is not None:
            status = "skipped" if row.name in busy else "running"
            jobs.append(base | {"status": status, "at": decision.run.isoformat(),
                                "error": busy.get(row.name)})  # fmt: skip
        if decision.older:
            _log.warning("occurrences not recorded: only the most recent missed ones are",
                         schedule=row.name, recorded=len(decision.missed))  # fmt: skip
    if not jobs:
        return [], 0
    inserted = conn.execute(_INSERT, {"worker": worker, "jobs": json.dumps(jobs)}).fetchall()
    refs = {row.name: row.ref for row, _ in decisions}
    errors = {(j["name"], j["at"]): j["error"] for j in jobs}
    runs: list[ClaimedRun] = []
    missed = 0
    for job_id, name, at, status, recorded_at in inserted:
        error = errors.get((name, at.isoformat()))
        if status == "missed":
            missed += 1
            _log.warning("occurrence missed", schedule=name, job_id=job_id,
                         scheduled_for=at.isoformat(), reason=error)  # fmt: skip
        else:
            runs.append(ClaimedRun(job_id, refs[name], at, status, error, recorded_at))
            if status == "skipped":
                _log.warning("run skipped", schedule=name, job_id=job_id, reason=error)
    return runs, missed


def _advance(
    conn: psycopg.Connection[Any], decisions: list[tuple[ScheduleRecord, Decision]]
) -> None:
    moved = [
        {"name": row.name, "next": None if d.next is None else d.next.isoformat()}
        for row, d in decisions
        if d.next != row.next_run_at
    ]
    if moved:
        conn.execute(_ADVANCE, {"rows": json.dumps(moved)})
