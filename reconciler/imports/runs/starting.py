"""Starting a run the scheduler claimed: the daemon's path into ``running.Claim``.

``store.claiming.claim_due`` records each occurrence to run as a job before any run slot is
taken; ``daemon.working`` then calls ``start`` in a run slot, on that slot's own session (kept
open from run to run, so a trivial run costs no new connection). ``start`` takes the run lock
and stamps the job started (``store.claimed.start_claimed``), reads the schedule and its
project, and returns the ``Claim`` whose ``run`` does the rest, exactly as a manual run's.
When the claim was taken over by another replica meanwhile, nothing is done.

The session outlives the run: when the run ends, whatever advisory lock it still holds is
released (a run that failed half-way may not have released its own), so the next run on the
session starts clean; a session that broke is closed, and the slot opens a new one.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from reconciler.errors import NotFound, ReconcileError
from reconciler.imports.runs.resolving import load_import
from reconciler.imports.runs.running import RECONNECT_WITHIN, Claim
from reconciler.imports.runs.transferring import Outage
from reconciler.model.results import JobResult
from reconciler.store.claimed import start_claimed
from reconciler.store.claiming import ClaimedRun
from reconciler.store.jobs import Started, finish_job

if TYPE_CHECKING:
    import psycopg

    from reconciler.settings import Settings

__all__ = ["start"]


def start(
    conn: psycopg.Connection[Any],
    run: ClaimedRun,
    *,
    settings: Settings,
    management_url: str,
    worker: str,
) -> Claim | None:
    """The started ``Claim`` of claimed job ``run``, or ``None`` if it is no longer ours."""
    if run.status == "skipped":  # recorded by the claim: only its callback is left to send
        assert run.recorded_at is not None
        started: Started | None = Started(run.job_id, "skipped", run.recorded_at, error=run.error)
    else:
        started = start_claimed(conn, run, worker)
    if started is None:
        return None
    session = ExitStack()
    session.callback(_reset, conn)
    base = JobResult(
        job_id=started.id, schedule=run.schedule.name, project=run.schedule.project,
        status=started.status, trigger="schedule", error=started.error,
        scheduled_for=run.scheduled_for, started_at=started.started_at,
    )  # fmt: skip
    try:
        spec = load_import(conn, run.schedule.name)
    except ReconcileError as exc:
        deleted = isinstance(exc, NotFound)
        with session:
            if started.status == "running":
                finish_job(
                    conn, run.schedule, started, status="failed", files=(),
                    error="the schedule was deleted before its run could start"
                    if deleted else exc.message,
                )  # fmt: skip
        raise
    except BaseException:  # the session failed: the job's lock goes, and a reaper ends it
        session.close()
        raise
    return Claim(
        conn, spec, started, base, session, settings=settings,
        management_url=management_url, outage=Outage(RECONNECT_WITHIN),
    )  # fmt: skip


def _reset(conn: psycopg.Connection[Any]) -> None:
    """Leave the session as a new one: no advisory lock held; closed if it broke."""
    if conn.closed:
        return
    if conn.broken:
        conn.close()
        return
    try:
        conn.execute("SELECT pg_advisory_unlock_all()")
    except Exception:  # a session that cannot even do this is not worth keeping
        conn.close()
