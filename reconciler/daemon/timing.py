"""The timer every replica keeps: APScheduler armed from ``cpi_schedules``, PostgreSQL deciding.

``serving`` starts one ``Timer``. A thread of its own holds a session that ``LISTEN``s for the
notice an apply sends and resyncs on it, on a period (``resync_seconds``), and on ``resync()``
(SIGHUP). A resync reads the enabled rows of this owner and, for each schedule:

- with no ``next_run_at`` (new, or its timing changed): computes the first occurrence after now,
  stores it (unless another replica did first) and arms it;
- with ``next_run_at`` in the past (downtime): hands the occurrences to ``model.occurrences``,
  which picks the one still within grace to run and the ones to record ``missed``;
- otherwise arms the timer at ``next_run_at``.

APScheduler only keeps time: a fired job hands the occurrence to ``working.Runner`` and arms the
next one, without touching the database, so a slow import or a slow database never delays
another schedule's timer. The claim in ``cpi_jobs`` decides which replica runs it. Each armed
job has an id of its own (schedule and time), so re-arming never races APScheduler's removal of
the job that just fired.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.daemon.working import Occurrence
from reconciler.errors import ReconcileError
from reconciler.logs import get_logger
from reconciler.model.occurrences import Timing, catch_up, next_after

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.daemon.working import Runner
    from reconciler.store.scheduling import TimerRow

__all__ = ["Timer"]

_log = get_logger("reconciler.daemon")
_RETRY_FIRST, _RETRY_LAST = 0.5, 10.0  # seconds between reconnection attempts


@dataclass(frozen=True, slots=True)
class _Armed:
    at: datetime
    timing: Timing
    grace: timedelta
    job_id: str


class Timer:
    """Keeps one APScheduler date job per enabled schedule at its next occurrence."""

    def __init__(
        self,
        metrics: Metrics,
        runner: Runner,
        *,
        url: str,
        owner: str,
        resync_seconds: float,
        stop: threading.Event,
    ) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._metrics, self._runner, self._url, self._owner = metrics, runner, url, owner
        self._resync_seconds, self._stop = resync_seconds, stop
        metrics.watch_schedules(url=url, owner=owner)  # /metrics reads the rows it schedules
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(4)}
        )
        self._armed: dict[str, _Armed] = {}
        self._handled: dict[str, datetime] = {}  # the latest occurrence handed to the runner
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timer-sync", daemon=True)
        self._reaped_at = 0.0

    def start(self) -> None:
        self._scheduler.start()
        self._thread.start()

    def resync(self) -> None:
        """Read the schedules again now (SIGHUP, or a local apply)."""
        self._wake.set()

    def forget(self, name: str, at: datetime) -> None:
        """``at`` was handed over but never claimed (no database session): a resync soon
        finds it still due, and runs it within its grace or records it missed."""
        with self._lock:
            if self._handled.get(name) == at:
                del self._handled[name]
        retry = threading.Timer(_RETRY_FIRST * 4, self._wake.set)
        retry.daemon = True
        retry.start()

    def stop(self) -> None:
        """Fire nothing more; what is armed stays due in the database."""
        self._wake.set()
        self._scheduler.shutdown(wait=False)
        self._thread.join(timeout=5)
        self._metrics.readiness.set(scheduler=False)

    def _loop(self) -> None:
        from reconciler.store.connecting import connect

        delay = _RETRY_FIRST
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True) as conn:
                    self._listen(conn)
                    delay = _RETRY_FIRST
                    self._serve(conn)
            except Exception as exc:  # psycopg, StoreError, or a bug: log, back off, go on
                message = exc.message if isinstance(exc, ReconcileError) else str(exc)
                _log.error("schedule sync failed; retrying", error=" ".join(message.split()),
                           retry_in=delay)  # fmt: skip
                self._metrics.readiness.set(database=False)
                self._metrics.database_up.set(0)
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_LAST)

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
        from reconciler.store.scheduling import fetch_timer_rows, store_first_runs

        began = time.monotonic()
        # Read first: rows fetched after a load on record reflect at least that load, so the
        # timer is ready only once it holds what the folder declares (not an empty first read).
        state = read_state(conn, self._owner)
        loaded = bool(state and state.loaded_at)
        now = datetime.now(UTC)
        rows = fetch_timer_rows(conn, self._owner)
        first: dict[str, datetime] = {}
        for row in rows:
            try:
                at = self._place(row, now)
            except ValueError as exc:  # a row edited by hand into timing we cannot read
                _log.error("cannot schedule", schedule=row.name, error=str(exc))
                continue
            if row.next_run_at is None and at is not None:
                first[row.name] = at
        store_first_runs(conn, first)
        names = {row.name for row in rows}
        with self._lock:
            gone = [name for name in self._armed if name not in names]
        for name in gone:
            self._disarm(name)
        self._metrics.readiness.set(database=True, scheduler=loaded, config_known=loaded)
        if state is not None and state.loaded_at is not None and not self._metrics.leading:
            self._metrics.config_ok.set(0 if state.config_error else 1)  # the leader's last load
        self._metrics.database_up.set(1)
        self._reap(conn)
        _log.debug("schedules synced", count=len(rows), seconds=round(time.monotonic() - began, 3))

    def _place(self, row: TimerRow, now: datetime) -> datetime | None:
        """Arm ``row``'s schedule, hand past-due occurrences to the runner; the time armed."""
        timing = Timing(
            row.cron_expression, row.interval_seconds, row.timezone, row.interval_anchor
        )
        grace = timedelta(seconds=row.misfire_grace_seconds)
        stored = row.next_run_at
        if stored is None:
            at = next_after(timing, now)
        elif stored > now:
            at = stored
        else:
            with self._lock:
                handled = self._handled.get(row.name)
                armed = self._armed.get(row.name)
            if handled is not None and stored <= handled and armed and armed.timing == timing:
                return armed.at  # handed over already; the runner stores its next run
            at = self._catch_up(row.name, timing, grace, stored, now)
        self._arm(row.name, at, timing, grace)
        return at

    def _catch_up(
        self, name: str, timing: Timing, grace: timedelta, since: datetime, now: datetime
    ) -> datetime | None:
        due = catch_up(timing, since=since, now=now, grace=grace)
        if due.older:
            _log.warning(
                "occurrences not recorded: only the most recent missed ones are",
                schedule=name, since=since.isoformat(), recorded=len(due.missed),
            )  # fmt: skip
        times = [*due.missed, *([due.run] if due.run else [])]
        for i, at in enumerate(times):
            following = times[i + 1] if i + 1 < len(times) else due.next
            missed = due.run is None or at != due.run
            self._runner.submit(Occurrence(name, at, grace, following, missed=missed))
        if times:
            with self._lock:
                self._handled[name] = times[-1]
        return due.next

    def _arm(self, name: str, at: datetime | None, timing: Timing, grace: timedelta) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with self._lock:
            old = self._armed.get(name)
            if old and old.at == at and old.timing == timing and old.grace == grace:
                return
            if at is None:
                self._armed.pop(name, None)
            else:
                job_id = f"{name}@{at.isoformat()}"
                self._armed[name] = _Armed(at, timing, grace, job_id)
                if old is None or old.job_id != job_id:
                    self._scheduler.add_job(
                        self._fire, "date", run_date=at, args=(name, at), id=job_id,
                        replace_existing=True, misfire_grace_time=None,
                    )  # fmt: skip
            if old is not None and (at is None or old.job_id != f"{name}@{at.isoformat()}"):
                with contextlib.suppress(JobLookupError):  # it has just fired
                    self._scheduler.remove_job(old.job_id)

    def _disarm(self, name: str) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with self._lock:
            old = self._armed.pop(name, None)
            self._handled.pop(name, None)
        if old is not None:
            with contextlib.suppress(JobLookupError):  # it has just fired
                self._scheduler.remove_job(old.job_id)

    def _fire(self, name: str, at: datetime) -> None:
        """APScheduler's callback: hand the occurrence over and arm the next; no I/O."""
        with self._lock:
            armed = self._armed.get(name)
            if armed is None or armed.at != at:  # re-armed or removed meanwhile
                return
            self._handled[name] = at
        try:
            following = next_after(armed.timing, at)
            self._runner.submit(Occurrence(name, at, armed.grace, following))
            self._arm(name, following, armed.timing, armed.grace)
        except Exception as exc:  # never leave a schedule handed over but not armed
            _log.exception("cannot hand over an occurrence", schedule=name, error=str(exc))
            self.forget(name, at)

    def _reap(self, conn: psycopg.Connection[Any]) -> None:
        """Mark jobs whose runner died ``abandoned``, at most once per resync period."""
        from reconciler.store.jobs import reap_abandoned

        if time.monotonic() - self._reaped_at < self._resync_seconds:
            return
        self._reaped_at = time.monotonic()
        reap_abandoned(conn)
