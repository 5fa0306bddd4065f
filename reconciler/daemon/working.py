"""The bounded pool that claims and runs occurrences: the timer hands them over and returns.

``daemon.timing`` calls ``Runner.submit`` for every occurrence it fires or catches up on; a slow
import holds one worker, never the timer. Each worker claims the occurrence in ``cpi_jobs``
(``imports.runs.running.claim_run``: exactly once across replicas, a ``skipped`` run on overlap),
then records it as handled (``next_run_at`` moves on) and runs it. An occurrence that cannot be
claimed (no database session) is handed back to the timer, so a resync runs it within its grace. An
occurrence that waited longer than its schedule's grace (downtime, or a queue behind slow imports)
is recorded ``missed`` instead.

The HTTP API's manual runs arrive claimed (the job id is already answered): ``run_claimed``
runs the rest of them in the same pool, counted in the same metrics.

On shutdown ``refuse`` takes no new claims and drops what is queued (a queued occurrence stays
due in the database, so another replica or the next start handles it; a queued manual run, whose
job is recorded already, is recorded failed); ``stop`` then waits for running imports up to the
grace period, and ``end_unfinished`` records how the ones still running ended.

A run's callback is sent by the pool's ``Courier`` (one thread, a small bounded queue), never in
the run's worker: a receiver that answers slowly, or never, holds no run slot. ``stop`` gives it
what is left of the grace period and records the callbacks still waiting as not sent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.errors import NotFound, ReconcileError, StoreError
from reconciler.logs import get_logger

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.imports.runs.callbacks import Courier
    from reconciler.imports.runs.running import Claim
    from reconciler.model.results import JobResult
    from reconciler.settings import Settings

__all__ = ["Occurrence", "Runner", "worker_name"]

_log = get_logger("reconciler.daemon")


def worker_name() -> str:
    """This process as ``cpi_jobs.worker`` and ``cpi_daemon_state.leader`` name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One scheduled time of one schedule; ``following`` is the next one, stored when handled.

    ``missed`` is set for occurrences the catch-up already knows are past their grace.
    """

    schedule: str
    at: datetime
    grace: timedelta
    following: datetime | None
    missed: bool = False


class Runner:
    """A pool of ``workers`` threads running occurrences in this process."""

    def __init__(self, settings: Settings, metrics: Metrics, *, url: str, workers: int) -> None:
        from reconciler.imports.runs.callbacks import Courier

        self._settings, self._metrics, self._url = settings, metrics, url
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="run")
        self._courier: Courier = Courier(settings, url=url)
        self._stopping = threading.Event()
        self._local = threading.local()
        self._futures: set[Future[None]] = set()
        self._claims: dict[Future[None], Claim] = {}  # queued manual runs, already recorded
        self._sessions: list[psycopg.Connection[Any]] = []  # the workers' bookkeeping sessions
        self._lock = threading.Lock()
        self._running = 0  # workers in a run now; the rest of ``_futures`` wait for one
        metrics.run_pool(workers, busy=lambda: self._running, queued=self._queued)
        # Told of an occurrence whose claim could not be recorded (the timer's ``forget``).
        self.unclaimed: Callable[[str, datetime], None] = lambda name, at: None

    def submit(self, occurrence: Occurrence) -> None:
        """Queue ``occurrence``; ignored once stopping (it stays due in the database)."""
        with self._lock:
            if self._stopping.is_set():
                return
            future = self._pool.submit(self._handle, occurrence)
            self._futures.add(future)
        future.add_done_callback(self._done)

    @property
    def busy(self) -> bool:
        """Whether every worker has a run (or a queued one): a new run would wait."""
        with self._lock:
            return len(self._futures) >= self._workers

    def _queued(self) -> int:
        with self._lock:
            return max(len(self._futures) - self._running, 0)

    def _slot(self, delta: int) -> None:
        with self._lock:
            self._running += delta

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run_claimed(self, claim: Claim) -> bool:
        """Run a job already claimed (the HTTP API's manual run) in the pool; false once
        stopping, when the caller must ``cancel`` it."""
        with self._lock:
            if self._stopping.is_set():
                return False
            future = self._pool.submit(self._continue, claim)
            self._futures.add(future)
            self._claims[future] = claim
        future.add_done_callback(self._done)
        return True

    def _continue(self, claim: Claim) -> None:
        name = claim.job.schedule
        self._slot(1)
        try:
            self._count(claim.run(courier=self._courier))
        except ReconcileError as exc:
            _log.error("cannot finish the run", schedule=name, error=exc.message)
        except Exception as exc:  # a bug must not take the worker (or the daemon) down
            _log.exception("cannot finish the run", schedule=name, error=str(exc))
        finally:
            self._slot(-1)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
            claim = self._claims.pop(future, None)
        if claim is not None and future.cancelled():  # recorded running, never started
            try:
                claim.cancel("not run: reconcile serve stopped before the run could start")
            except ReconcileError as exc:  # the next run marks it abandoned instead
                _log.error("cannot record a cancelled run", job_id=claim.job.job_id,
                           error=exc.message)  # fmt: skip

    def _connection(self) -> psycopg.Connection[Any]:
        """This worker's bookkeeping session, opened again if it broke."""
        from reconciler.store.connecting import connect

        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = connect(self._url, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._sessions.append(conn)
        return conn

    def _handle(self, occurrence: Occurrence) -> None:
        if self._stopping.is_set():
            return
        name = occurrence.schedule
        self._slot(1)
        try:
            self._run(occurrence)
        except NotFound:
            _log.info("schedule deleted before its run", schedule=name)
        except ReconcileError as exc:
            _log.error("cannot run the occurrence", schedule=name, error=exc.message)
        except Exception as exc:  # a bug must not take the worker (or the daemon) down
            _log.exception("cannot run the occurrence", schedule=name, error=str(exc))
        finally:
            self._slot(-1)

    def _run(self, occurrence: Occurrence) -> None:
        from reconciler.imports.runs.running import claim_run

        name, at = occurrence.schedule, occurrence.at
        late = datetime.now(UTC) - at
        if occurrence.missed or late > occurrence.grace:
            try:  # recorded first, then handled: an outage leaves it due for the next resync
                self._record_missed(self._session(), occurrence, late)
                self._bookkeeping(occurrence)
            except StoreError:
                self.unclaimed(name, at)
                raise
            return
        if self._claimed_elsewhere(occurrence):  # cheap: no new session, no spec to read
            return
        if self._disabled(occurrence):  # by an apply since the timer was armed
            _log.info("schedule disabled since it was armed; not run", schedule=name)
            return
        try:
            claim = claim_run(name, settings=self._settings, trigger="schedule", scheduled_for=at)
        except StoreError:  # not claimed: it stays due, and a resync runs it within its grace
            self.unclaimed(name, at)
            raise
        try:
            self._bookkeeping(occurrence)
        except ReconcileError as exc:  # the claim stands; a resync moves the next run along
            _log.warning("cannot store the next run", schedule=name, error=exc.message)
        self._count(claim.run(courier=self._courier))

    def _claimed_elsewhere(self, occurrence: Occurrence) -> bool:
        """Whether another replica has claimed ``occurrence`` already (its timer fired first)."""
        import psycopg

        from reconciler.store.jobs import occurrence_claimed

        try:
            return occurrence_claimed(self._connection(), occurrence.schedule, occurrence.at)
        except (psycopg.Error, ReconcileError):  # the claim itself decides, and says why
            return False

    def _disabled(self, occurrence: Occurrence) -> bool:
        """Whether the schedule was disabled after the timer was armed (its resync pending)."""
        import psycopg

        from reconciler.store.scheduling import is_enabled

        try:
            return is_enabled(self._connection(), occurrence.schedule) is False
        except (psycopg.Error, ReconcileError):  # the claim decides, and says why
            return False

    def _session(self) -> psycopg.Connection[Any]:
        """The bookkeeping session; ``StoreError`` when the database does not answer."""
        import psycopg

        try:
            return self._connection()
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {' '.join(str(exc).split())}") from exc

    def _bookkeeping(self, occurrence: Occurrence) -> None:
        """Store that ``occurrence`` is handled (its schedule's next run moves on)."""
        import psycopg

        from reconciler.store.scheduling import advance_next_run

        conn = self._session()
        try:
            advance_next_run(conn, occurrence.schedule, occurrence.at, occurrence.following)
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {' '.join(str(exc).split())}") from exc

    def _record_missed(
        self, conn: psycopg.Connection[Any], occurrence: Occurrence, late: timedelta
    ) -> None:
        from reconciler.store.jobs import record_missed
        from reconciler.store.schedules import schedule_ref

        reason = (
            f"not run: {int(late.total_seconds())} s after its time, past the schedule's "
            f"misfire_grace of {int(occurrence.grace.total_seconds())} s (the daemon was down "
            "or busy)"
        )
        ref = schedule_ref(conn, occurrence.schedule)
        started = record_missed(conn, ref, occurrence.at, reason)
        if started.claimed:
            self._metrics.runs.labels("schedule", "missed").inc()
            _log.warning(
                "occurrence missed", schedule=occurrence.schedule,
                scheduled_for=occurrence.at.isoformat(), reason=reason,
            )  # fmt: skip

    def _count(self, result: JobResult) -> None:
        if not result.claimed:  # another replica runs this occurrence and counts it
            return
        m = self._metrics
        m.runs.labels(result.trigger, result.status).inc()
        if result.started_at and result.scheduled_for:
            m.lateness.observe((result.started_at - result.scheduled_for).total_seconds())
        if result.status in ("succeeded", "failed"):
            m.rows.inc(result.rows_imported)
            m.bytes.inc(result.bytes_read)
            if result.started_at and result.finished_at:
                m.duration.observe((result.finished_at - result.started_at).total_seconds())

    def refuse(self) -> None:
        """Take no new work and drop the queue (at once, on SIGTERM): a queued occurrence stays
        due in the database; a queued manual run is recorded failed (``_done``)."""
        with self._lock:
            self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stop(self, grace: float) -> bool:
        """``refuse``, then wait up to ``grace`` s for running work, then for the callback
        being sent; true if all runs finished. The workers' bookkeeping sessions are closed."""
        began = time.monotonic()
        self.refuse()
        with self._lock:
            running = set(self._futures)
        if running:
            _log.info("waiting for running imports", count=len(running), grace_seconds=grace)
        _, not_done = wait(running, timeout=max(grace, 0.0))
        self._courier.stop(grace - (time.monotonic() - began))
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for conn in sessions:
            conn.close()
        return not not_done

    def end_unfinished(self, grace: float) -> list[str]:
        """Record this process's still-running jobs as failed; their sessions end with it."""
        from reconciler.store.connecting import connect
        from reconciler.store.jobs import end_worker_jobs

        error = (
            f"interrupted: reconcile serve was stopped and the import did not finish within "
            f"the {grace:g} s shutdown grace; its file transactions were rolled back"
        )
        with connect(self._url, autocommit=True) as conn:
            ended = end_worker_jobs(conn, worker_name(), error)
        for job_id in ended:
            _log.error("import interrupted by shutdown", job_id=job_id, error=error)
        return ended
