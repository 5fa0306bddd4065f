"""One run of a schedule, start to finish: ``run_schedule`` is the entry point for every trigger.

``reconcile run NAME`` calls it with ``trigger="manual"``; the daemon calls it with
``trigger="schedule"`` and the occurrence's ``scheduled_for``; the HTTP API calls its two halves
apart, ``claim_run`` (answering with the job id) and then ``Claim.run`` in a worker. The steps:
read the schedule and project rows, record the job (or a skip), open the source and the target,
load the files not yet imported, run each file's after-import action once its data is committed,
store the final status with the schedule's statistics, then send the callback (``reconcile serve``
hands it to its ``callbacks.Courier``, so the run ends at once). Everything that can
go wrong after the job row exists becomes a one-line ``error`` on the job and in the log, never a
traceback.

A schedule's ``timeout`` gives the run a ``Deadline`` (``resolving``): past it the source reads no
more, the statement the target database is running for it is cancelled, the file being loaded
rolls back, and the job ends ``failed`` saying it timed out.

PostgreSQL stopping mid-run ends the session that holds the run's lock. The run then waits a
short, bounded window (``RECONNECT_WITHIN``, with backoff) for the server to answer again: back in
time, it reads the import ledger for files whose COMMIT went unanswered, records the job
``failed`` with the cause (only if the row is still ``running``: without the lock another runner
may have claimed the schedule meanwhile) and sends the callback; not back in time, it raises
``StoreError`` with the cause and the next run marks the job abandoned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from reconciler.errors import ReconcileError, StoreError, Terminated
from reconciler.imports.engine.importing import Meter, Progress
from reconciler.imports.runs import callbacks
from reconciler.imports.runs.resolving import Deadline, ImportSpec, load_import
from reconciler.imports.runs.transferring import Outage, transfer
from reconciler.logs import get_logger, one_line
from reconciler.model.results import FileResult, JobResult, JobStatus
from reconciler.store.connecting import database_url, open_store
from reconciler.store.jobs import (
    Heartbeat,
    Started,
    fail_lost_job,
    finish_job,
    record_callback,
    start_job,
)

if TYPE_CHECKING:
    from reconciler.settings import Settings

__all__ = ["RECONNECT_WITHIN", "Claim", "Progress", "claim_run", "run_schedule"]

# Seconds a run waits for PostgreSQL to answer again: a restart or a switchover takes a few; the
# window stays well inside the 30 s a container gets between SIGTERM and SIGKILL.
RECONNECT_WITHIN = 20.0
_log = get_logger("reconciler.imports")


def run_schedule(
    name: str,
    *,
    settings: Settings,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    progress: Callable[[Progress], None] | None = None,
    reconnect_within: float | None = None,
) -> JobResult:
    """Run schedule ``name`` once in this process and return its recorded result.

    Raises ``NotFound`` when the schedule is not in the database and ``StoreError`` when the
    management database is unreachable, or went away mid-run and did not answer again within
    ``reconnect_within`` seconds (default ``RECONNECT_WITHIN``); every other failure is the
    returned job's ``error``.
    """
    claim = claim_run(
        name, settings=settings, trigger=trigger, scheduled_for=scheduled_for,
        reconnect_within=reconnect_within,
    )  # fmt: skip
    return claim.run(progress)


def claim_run(
    name: str,
    *,
    settings: Settings,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    reconnect_within: float | None = None,
) -> Claim:
    """Record the job of one run of ``name`` (or its skip) and return it, not yet run.

    The first half of ``run_schedule``, for callers that answer with the job id before the
    import runs (the daemon's HTTP API): the returned ``Claim`` holds the session that holds
    the run's lock, and its ``run`` (in any thread) does the rest. ``NotFound`` and
    ``StoreError`` as for ``run_schedule``; nothing stays open when they are raised.
    """
    management_url = database_url(settings)
    outage = Outage(RECONNECT_WITHIN if reconnect_within is None else reconnect_within)
    with ExitStack() as stack:
        conn = stack.enter_context(open_store(settings))
        conn.autocommit = True  # the job session holds the run's advisory lock between statements
        spec = load_import(conn, name)
        started = start_job(conn, spec.schedule, trigger=trigger, scheduled_for=scheduled_for)
        base = JobResult(
            job_id=started.id, schedule=spec.schedule.name, project=spec.schedule.project,
            status=started.status, trigger=trigger, error=started.error,
            scheduled_for=scheduled_for, started_at=started.started_at,
        )  # fmt: skip
        return Claim(
            conn, spec, started, base, stack.pop_all(),
            settings=settings, management_url=management_url, outage=outage,
        )  # fmt: skip


class Claim:
    """A recorded job not yet run: ``running`` (the lock is held), ``skipped``, or another
    replica's occurrence (``claimed`` false). Call ``run`` exactly once, or ``cancel``.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        spec: ImportSpec,
        started: Started,
        base: JobResult,
        session: ExitStack,
        *,
        settings: Settings,
        management_url: str,
        outage: Outage,
    ) -> None:
        self._conn, self._spec, self._started, self._base = conn, spec, started, base
        self._session = session
        self._settings, self._url, self._outage = settings, management_url, outage

    @property
    def job(self) -> JobResult:
        """The job as recorded so far: its id, ``running`` or ``skipped``, and the reason."""
        return self._base if self._started.claimed else replace(self._base, claimed=False)

    def run(
        self,
        progress: Callable[[Progress], None] | None = None,
        *,
        courier: callbacks.Courier | None = None,
    ) -> JobResult:
        """Run the import (or, for a skip, send its callback), record the end, close the session.

        The callback goes to ``courier`` when given (the run then never waits for it)."""
        with self._session:
            conn, spec, started, base = self._conn, self._spec, self._started, self._base
            if not started.claimed:  # another replica owns this occurrence and its callback
                return replace(base, claimed=False)
            if started.status == "skipped":
                skipped = replace(base, finished_at=started.started_at)
                return _call_back(conn, spec, skipped, self._settings, courier)
            if not spec.enabled:
                _log.info(
                    "running a disabled schedule", schedule=base.schedule, trigger=base.trigger
                )
            return _run(
                conn, spec, started, base, settings=self._settings,
                management_url=self._url, progress=progress, outage=self._outage,
                courier=courier,
            )  # fmt: skip

    def cancel(self, reason: str) -> None:
        """Never run: record a running job ``failed`` with ``reason``, close the session."""
        with self._session:
            if self._started.claimed and self._started.status == "running":
                finish_job(
                    self._conn, self._spec.schedule, self._started,
                    status="failed", files=(), error=reason,
                )  # fmt: skip


def _call_back(
    conn: psycopg.Connection[Any],
    spec: ImportSpec,
    result: JobResult,
    settings: Settings,
    courier: callbacks.Courier | None,
) -> JobResult:
    """Hand the schedule's callback, if any, to ``courier`` (``reconcile serve``: sent in its
    own thread, the outcome stored there), or send it now within ``callbacks.RUN_BUDGET`` s;
    an outcome known here (sent, dropped) is stored on the job."""
    if not spec.callback_url or result.job_id is None:
        return result
    callback = callbacks.Callback(spec.callback_url, result.payload(), result.job_id)
    if courier is not None:
        outcome = courier.send(callback)
        if outcome is None:  # queued: the courier stores its outcome
            return result
    else:
        outcome = callbacks.deliver(
            callback.url, callback.payload, message_id=callback.job_id,
            secret=settings.webhook_secret, destinations=settings.callback_allow,
            budget=callbacks.RUN_BUDGET,
        )  # fmt: skip
    record_callback(conn, result.job_id, outcome)
    return replace(result, callback=outcome)


def _run(
    conn: psycopg.Connection[Any],
    spec: ImportSpec,
    started: Started,
    base: JobResult,
    *,
    settings: Settings,
    management_url: str,
    progress: Callable[[Progress], None] | None,
    outage: Outage,
    courier: callbacks.Courier | None,
) -> JobResult:
    meter = Meter(progress)
    files: list[FileResult] = []
    error: str | None = None
    began = time.monotonic()
    deadline = None if spec.timeout_seconds is None else Deadline(spec.timeout_seconds)
    _log.info("import started", schedule=spec.schedule.name, job_id=started.id)
    try:
        with Heartbeat(conn, started.id, meter.totals):
            transfer(
                replace(spec, deadline=deadline), settings, job_id=started.id,
                management_url=management_url, meter=meter, results=files, outage=outage,
            )  # fmt: skip
    except ReconcileError as exc:
        error = exc.message
    except psycopg.Error as exc:
        error = f"PostgreSQL: {one_line(exc)}"
    except BaseException as exc:  # an interrupt or a bug: the row must not stay 'running'
        if isinstance(exc, Terminated):
            error = f"interrupted by {exc.signal}: the run's transaction was rolled back"
        else:
            kind = "interrupted" if not isinstance(exc, Exception) else "unexpected error"
            error = f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")
        try:
            finish_job(
                conn, spec.schedule, started, status="failed", files=tuple(files), error=error
            )
        except Exception as again:  # the next run marks it abandoned instead
            _log.error("cannot record the job's end", job_id=started.id, error=str(again))
        raise
    failed = [f for f in files if f.status == "failed"]
    if deadline is not None and deadline.cut:  # what the files then say follows from it
        cut = f"{deadline.reason}: its transaction was rolled back; the next run loads the rest"
        after = error is not None and not error.startswith(deadline.reason)
        error = f"{cut}; then: {error}" if after else cut
    if error is None and failed:
        first = failed[0]
        where = f"{first.path}" + (f" line {first.line}" if first.line else "")
        error = f"{len(failed)} of {len(files)} files failed; first: {where}: {first.error}"
    if error:
        error = " ".join(error.split())  # one line, whatever a library put in its message
    status: JobStatus = "failed" if error else "succeeded"
    result = replace(
        base, status=status, error=error, files=tuple(files),
        rows_imported=sum(f.rows for f in files if f.status == "imported"),
        bytes_read=sum(f.bytes for f in files),
    )  # fmt: skip
    try:
        finished_at = finish_job(
            conn, spec.schedule, started, status=status, files=tuple(files), error=error
        )
    except psycopg.OperationalError as exc:
        if not conn.broken:
            raise
        return _finish_lost(
            exc, spec, started, result,
            settings=settings, url=management_url, outage=outage, began=began, courier=courier,
        )  # fmt: skip
    result = replace(result, finished_at=finished_at)
    _log_end(result, began)
    return _call_back(conn, spec, result, settings, courier)


def _log_end(result: JobResult, began: float) -> None:
    log = _log.info if result.status == "succeeded" else _log.error
    log(
        "import finished", schedule=result.schedule, job_id=result.job_id, status=result.status,
        rows=result.rows_imported, bytes=result.bytes_read,
        seconds=round(time.monotonic() - began, 3), error=result.error,
    )  # fmt: skip


def _finish_lost(
    lost: psycopg.Error,
    spec: ImportSpec,
    started: Started,
    result: JobResult,
    *,
    settings: Settings,
    url: str,
    outage: Outage,
    began: float,
    courier: callbacks.Courier | None,
) -> JobResult:
    """The management session died mid-run, and the run's lock with it: end the job anew.

    ``StoreError`` when PostgreSQL does not answer again within the window; the job then
    stays ``running`` until the next run finds its lock free and marks it abandoned.
    """
    cause = f"lost the connection to the management database during the run ({one_line(lost)})"
    error = cause if result.error is None else f"{cause}; {result.error}"
    try:
        conn = outage.connect(url)
    except StoreError as exc:
        raise StoreError(
            f"{cause}, and PostgreSQL did not answer again within {outage.window:g} s; the next "
            f"run of {spec.schedule.name} marks job {started.id} abandoned"
        ) from exc
    with conn:
        conn.autocommit = True
        ended = fail_lost_job(conn, spec.schedule, started, files=result.files, error=error)
        shown = error if ended.ours else ended.error  # else: this run's own finish had committed
        if ended.status == "abandoned":  # another runner has claimed the schedule since
            shown = f"{cause}; another run has since marked this job abandoned"
        result = replace(result, status=ended.status, error=shown, finished_at=ended.finished_at)
        _log_end(result, began)
        if result.status == "abandoned":  # as for every abandoned job, no callback
            return result
        return _call_back(conn, spec, result, settings, courier)
