"""The bounded pool that runs what the scheduler claimed: the timer claims and returns.

``daemon.timing`` claims due occurrences in ``cpi_schedules`` (``store.claiming``: never more
than ``free_slots``) and calls ``Runner.start`` for each job it recorded; a slow import holds one
worker, never the timer. Each worker keeps a session of its own from run to run: it starts the
claimed job there (``imports.runs.starting``: the run lock, the start stamp) and runs it. A
claim taken over by another replica meanwhile is dropped. When a worker frees up while
occurrences wait unclaimed, ``on_free`` tells the timer to claim again. A scheduled run that
failed, of a schedule with ``retries`` left, is followed by its next attempt
(``store.claimed.schedule_retry``), which the timer claims once its backoff is over.

The HTTP API's manual runs arrive claimed (the job id is already answered): ``run_claimed``
runs the rest of them in the same pool, counted in the same metrics.

On shutdown ``refuse`` takes no new work and drops what is queued (a queued claim is handed
back by the timer, so another replica starts it within its grace; a queued manual run, whose
job is recorded already, is recorded failed); ``stop`` then waits for running imports up to the
grace period, and ``end_unfinished`` records how the ones still running ended.

A run's callback is sent by the pool's ``Courier`` (one thread, a small bounded queue), never in
the run's worker: a receiver that answers slowly, or never, holds no run slot. ``stop`` gives it
what is left of the grace period and records the callbacks still waiting as not sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from reconciler.errors import NotFound, ReconcileError
from reconciler.logs import get_logger, one_line
from reconciler.store.connecting import process_name

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.imports.runs.callbacks import Courier
    from reconciler.imports.runs.running import Claim
    from reconciler.model.results import JobResult
    from reconciler.settings import Settings
    from reconciler.store.claiming import ClaimedRun

__all__ = ["Runner"]

_log = get_logger("reconciler.daemon")


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
        self.on_free: Callable[[], None] = lambda: None  # a worker freed up (the timer's poke)
        self.on_retry: Callable[[], None] = lambda: None  # a retry was recorded: re-arm

    def start(self, run: ClaimedRun) -> None:
        """Queue claimed job ``run``; ignored once stopping (the timer hands it back)."""
        with self._lock:
            if self._stopping.is_set():
                return
            future = self._pool.submit(self._start, run)
            self._futures.add(future)
        future.add_done_callback(self._done)

    @property
    def free_slots(self) -> int:
        """Workers with nothing to do or queued: how many occurrences the timer may claim."""
        with self._lock:
            return 0 if self._stopping.is_set() else max(self._workers - len(self._futures), 0)

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
        if not self._stopping.is_set():
            self.on_free()

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

    def _start(self, run: ClaimedRun) -> None:
        import psycopg

        if self._stopping.is_set():
            return
        name = run.schedule.name
        self._slot(1)
        try:
            claim = self._started(run)
            if claim is None:
                _log.info("claim taken over by another replica", schedule=name, job_id=run.job_id)
                return
            result = claim.run(courier=self._courier)
            self._count(result, first=run.attempt == 1)
            if result.status == "failed" and result.job_id is not None:
                self._retry(result.job_id, name)
        except NotFound:
            _log.info("schedule deleted before its run", schedule=name)
        except ReconcileError as exc:
            _log.error("cannot run the occurrence", schedule=name, error=exc.message)
        except psycopg.Error as exc:  # the claim stays unstarted: another replica takes it over
            _log.error("cannot start the occurrence", schedule=name, error=one_line(exc))
        except Exception as exc:  # a bug must not take the worker (or the daemon) down
            _log.exception("cannot run the occurrence", schedule=name, error=str(exc))
        finally:
            self._slot(-1)

    def _started(self, run: ClaimedRun) -> Claim | None:
        """``run`` started on this worker's session; once more on a new session when the kept
        one turns out dead (the database restarted since the last run): the claim is still
        ours, and leaving it to a takeover would start it late or miss it."""
        import psycopg

        from reconciler.imports.runs.starting import start

        for attempt in (1, 2):
            conn = self._connection()
            try:
                return start(
                    conn, run, settings=self._settings, management_url=self._url,
                    worker=process_name(),
                )  # fmt: skip
            except psycopg.OperationalError:
                if attempt == 2 or not (conn.broken or conn.closed):
                    raise
                conn.close()
        return None

    def _retry(self, job_id: str, name: str) -> None:
        """Record the next attempt of a failed run when its schedule has retries left."""
        from reconciler.store.claimed import schedule_retry

        retry = schedule_retry(self._connection(), job_id)
        if retry is not None:
            self.on_retry()
            _log.warning("run failed; retry scheduled", schedule=name, job_id=job_id,
                         retry_job_id=retry[0], retry_at=retry[1].isoformat())  # fmt: skip

    def _count(self, result: JobResult, *, first: bool = True) -> None:
        if not result.claimed:  # another replica runs this occurrence and counts it
            return
        m = self._metrics
        m.runs.labels(result.trigger, result.status).inc()
        if first and result.started_at and result.scheduled_for:  # a retry waited on purpose
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
            ended = end_worker_jobs(conn, process_name(), error)
        for job_id in ended:
            _log.error("import interrupted by shutdown", job_id=job_id, error=error)
        return ended
