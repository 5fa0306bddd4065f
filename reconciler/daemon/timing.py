"""The timer every replica keeps: one wake-up at the earliest ``next_run_at``, PostgreSQL deciding.

``serving`` starts one ``Timer``. ``cpi_schedules.next_run_at`` is the only copy of what is
due; the timer keeps no list of schedules. Two threads:

- ``timer-claim`` waits for the wake-up, then claims what is due in one transaction
  (``store.claiming.claim_due``, at most as many occurrences as the ``Runner`` has free slots),
  hands the recorded jobs to the runner, and arms the next wake-up: APScheduler (the timer
  DESIGN.md names) keeps a single date job at the earliest stored next run, or at the moment
  another replica's unstarted claim may be taken over. When the claim took every free slot,
  the runner's ``on_free`` wakes it again as soon as a slot frees up.
- ``timer-sync`` holds a session that ``LISTEN``s for the notice an apply sends; on a notice,
  on a period (``resync_seconds``) and on ``resync()`` (SIGHUP) it reads the daemon state for
  readiness, marks jobs of dead runners ``abandoned``, and wakes the claimer (new schedules get
  their first next run there, and a next run moved earlier is seen at once).

The clock is injectable (``clock``): the claim's decisions use it, so tests run minutes of
occurrences without waiting for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.backoff import Backoff
from reconciler.errors import ReconcileError
from reconciler.logs import get_logger, one_line
from reconciler.store.connecting import process_name

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.daemon.working import Runner
    from reconciler.store.claiming import Claimed

__all__ = ["Timer"]

_log = get_logger("reconciler.daemon")
_WAKE_JOB = "wake"
_CLAIM_IDLE = "5s"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Timer:
    """Claims due occurrences for ``runner`` whenever the earliest next run comes."""

    def __init__(
        self,
        metrics: Metrics,
        runner: Runner,
        *,
        url: str,
        owner: str,
        resync_seconds: float,
        stop: threading.Event,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._metrics, self._runner, self._url, self._owner = metrics, runner, url, owner
        self._resync_seconds, self._stop, self._clock = resync_seconds, stop, clock
        metrics.watch_schedules(url=url, owner=owner)  # /metrics reads the rows it schedules
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(1)}
        )
        self._due = threading.Event()  # claim now
        self._wake = threading.Event()  # sync now
        self._full = False  # the last claim took every free slot: claim again when one frees
        runner.on_free = self._freed
        runner.on_retry = self._due.set  # a claim pass arms the wake-up for the retry
        self._claimer = threading.Thread(target=self._claim_loop, name="timer-claim", daemon=True)
        self._syncer = threading.Thread(target=self._sync_loop, name="timer-sync", daemon=True)
        self._reaped_at = 0.0

    def start(self) -> None:
        self._scheduler.start()
        self._claimer.start()
        self._syncer.start()

    def resync(self) -> None:
        """Read the schedules again now (SIGHUP, or a local apply)."""
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more; hand back the claims the runner will not start."""
        self._wake.set()
        self._due.set()
        self._scheduler.shutdown(wait=False)
        self._claimer.join(timeout=5)
        self._syncer.join(timeout=5)
        self._metrics.readiness.set(scheduler=False)
        self._hand_back()

    def _freed(self) -> None:
        if self._full:
            self._due.set()

    # --- claiming ---------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        from reconciler.store.connecting import connect

        backoff = Backoff()
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            self._due.wait(timeout=self._resync_seconds)
            self._due.clear()
            if self._stop.is_set():
                break
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self._url, autocommit=True)
                    # A claim holds its rows' locks for milliseconds; a replica frozen in the
                    # middle of one (SIGSTOP, a paused VM) must not hold them longer: the server
                    # ends such a session, and the other replicas claim those schedules.
                    conn.execute(f"SET idle_in_transaction_session_timeout = '{_CLAIM_IDLE}'")
                claimed = self._claim(conn)
                backoff.reset()
            except Exception as exc:  # psycopg, StoreError, or a bug: log, back off, go on
                message = exc.message if isinstance(exc, ReconcileError) else one_line(exc)
                delay = backoff.next()
                _log.error("claiming due runs failed; retrying", error=message, retry_in=delay)
                self._arm_in(delay)
                continue
            self._arm(claimed)
        if conn is not None:
            conn.close()

    def _claim(self, conn: psycopg.Connection[Any]) -> Claimed:
        from reconciler.store.claiming import claim_due

        began = time.monotonic()
        claimed = claim_due(
            conn, owner=self._owner, worker=process_name(), now=self._clock(),
            limit=self._runner.free_slots,
        )  # fmt: skip
        self._full = claimed.full
        for run in claimed.runs:
            self._runner.start(run)
        if claimed.full and self._runner.free_slots:  # a slot freed before ``_full`` was set
            self._due.set()
        if claimed.missed:
            self._metrics.runs.labels("schedule", "missed").inc(claimed.missed)
        if claimed.runs or claimed.missed:
            _log.debug("claimed", runs=len(claimed.runs), missed=claimed.missed,
                       seconds=round(time.monotonic() - began, 3))  # fmt: skip
        return claimed

    def _arm(self, claimed: Claimed) -> None:
        """Wake up at the earliest next run, retry, or moment another replica's claim may be
        taken over."""
        waits = [self._resync_seconds]
        if claimed.next_due is not None and not claimed.full:  # full: a freed slot wakes it
            waits.append((claimed.next_due - self._clock()).total_seconds())
        if claimed.handoff_in is not None:
            waits.append(claimed.handoff_in + 0.05)
        if claimed.retry_in is not None:
            waits.append(claimed.retry_in + 0.01)
        self._arm_in(min(waits))

    def _arm_in(self, seconds: float) -> None:
        if seconds <= 0:
            self._due.set()
            return
        at = datetime.now(UTC) + timedelta(seconds=seconds)
        try:
            self._scheduler.add_job(
                self._due.set, "date", run_date=at, id=_WAKE_JOB, replace_existing=True,
                misfire_grace_time=None, coalesce=True,
            )  # fmt: skip
        except Exception:  # the scheduler is shutting down: the stop event ends the loop
            self._due.set()

    def _hand_back(self) -> None:
        from reconciler.store.claimed import hand_back
        from reconciler.store.connecting import connect
        from reconciler.store.scheduling import notify_changed

        try:
            with connect(self._url, autocommit=True) as conn:
                if hand_back(conn, process_name()):
                    notify_changed(conn, self._owner)  # the other replicas take them over now
        except Exception as exc:  # they are taken over once the hand-off time has passed
            message = exc.message if isinstance(exc, ReconcileError) else one_line(exc)
            _log.warning("cannot hand back unstarted claims", error=message)

    # --- syncing ----------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        from reconciler.store.connecting import connect

        backoff = Backoff()
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True) as conn:
                    self._listen(conn)
                    backoff.reset()
                    self._serve(conn)
            except Exception as exc:  # psycopg, StoreError, or a bug: log, back off, go on
                message = exc.message if isinstance(exc, ReconcileError) else one_line(exc)
                delay = backoff.next()
                _log.error("schedule sync failed; retrying", error=message, retry_in=delay)
                self._metrics.readiness.set(database=False)
                self._metrics.database_up.set(0)
                self._stop.wait(delay)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        from reconciler.store.scheduling import CHANNEL

        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        self._sync(conn)
        synced = time.monotonic()
        while not self._stop.is_set():
            for notice in conn.notifies(timeout=0.5, stop_after=1):
                if notice.payload == self._owner:
                    self._wake.set()
            if self._wake.is_set() or time.monotonic() - synced >= self._resync_seconds:
                self._wake.clear()
                if self._stop.is_set():
                    return
                self._sync(conn)
                synced = time.monotonic()

    def _sync(self, conn: psycopg.Connection[Any]) -> None:
        from reconciler.store.daemon_state import read_state

        state = read_state(conn, self._owner)
        loaded = bool(state and state.loaded_at)
        self._due.set()  # new schedules get their first run, moved ones are seen
        self._metrics.readiness.set(database=True, scheduler=loaded, config_known=loaded)
        if state is not None and state.loaded_at is not None and not self._metrics.leading:
            self._metrics.config_ok.set(0 if state.config_error else 1)  # the leader's last load
        self._metrics.database_up.set(1)
        self._reap(conn)

    def _reap(self, conn: psycopg.Connection[Any]) -> None:
        """Mark jobs whose runner died ``abandoned``, at most once per resync period."""
        from reconciler.store.jobs import reap_abandoned

        if time.monotonic() - self._reaped_at < self._resync_seconds:
            return
        self._reaped_at = time.monotonic()
        reap_abandoned(conn)
