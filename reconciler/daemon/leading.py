"""One replica at a time watches the folder and applies it: leader election on an advisory lock.

``serving`` starts one ``Leader`` per replica. Each holds a session and tries the owner's
session advisory lock (``Named.LEADER``); the one that gets it leads until that session ends.
When a leader's process dies, PostgreSQL closes its session and frees the lock, and another
replica takes over within ``ELECT_SECONDS``; when its whole host vanishes, once the server's TCP
keepalives (``tcp_keepalives_*``, two hours by default: lower them) give its session up. Only
the leader applies, so during a rolling ConfigMap update a replica that still sees the old files
never undoes the leader's apply; every replica keeps scheduling from the rows
(``daemon.timing``).

The leader applies at once, then on every change the watcher reports, on SIGHUP and on the
periodic resync (which also sets back rows changed behind its back). A folder that fails to load
or a plan a guard refuses applies nothing: the last good state keeps running, the error (with
``file:line:col``) goes to the log, ``cpi_daemon_state`` (``reconcile status``) and
``/metrics``, and fixing the file recovers on the next event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reconciler.daemon.watching import Watcher
from reconciler.daemon.working import worker_name
from reconciler.errors import ReconcileError, StoreError
from reconciler.logs import get_logger

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.settings import Settings

__all__ = ["ELECT_SECONDS", "Leader"]

ELECT_SECONDS = 2.0  # how often a follower tries the lock: the longest a dead leader is missed
_SEEN_SECONDS = 5.0  # how often the leader says it is alive in cpi_daemon_state
_RETRY_FIRST, _RETRY_LAST = 0.5, 10.0
_log = get_logger("reconciler.daemon")


class Leader:
    """The election loop, and while elected, the watch-and-apply loop."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        url: str,
        rescan: threading.Event,
        stop: threading.Event,
        resync_seconds: float,
        applied: Callable[[], None],
    ) -> None:
        self._settings, self._metrics, self._url = settings, metrics, url
        self._rescan, self._stop, self._resync = rescan, stop, resync_seconds
        self._applied = applied
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._rescan.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from reconciler.store.connecting import connect

        delay = _RETRY_FIRST
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True) as conn:
                    delay = _RETRY_FIRST
                    self._campaign(conn)
            except Exception as exc:  # a lost session ends the leadership with it
                message = exc.message if isinstance(exc, ReconcileError) else str(exc)
                _log.error("leader election failed; retrying", error=" ".join(message.split()),
                           retry_in=delay)  # fmt: skip
                self._metrics.leader.set(0)
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_LAST)

    def _campaign(self, conn: psycopg.Connection[Any]) -> None:
        from reconciler.store.locks import Named, named_key

        key = named_key(Named.LEADER, self._settings.owner)
        while not self._stop.is_set():
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row and row[0]:
                try:
                    self._lead(conn)
                finally:
                    if not conn.broken:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                return
            self._stop.wait(ELECT_SECONDS)

    def _lead(self, conn: psycopg.Connection[Any]) -> None:
        from reconciler.store.daemon_state import claim_leadership, leader_seen

        me = worker_name()
        owner = self._settings.owner
        claim_leadership(conn, owner, me)
        self._metrics.leader.set(1)
        self._metrics.leading = True
        _log.info("leading: this replica watches and applies the folder", owner=owner)
        watcher = Watcher(self._settings.schedules_dir, self._rescan, retry_seconds=self._resync)
        watcher.start()
        try:
            applied = seen = float("-inf")
            self._rescan.set()
            while not self._stop.is_set():
                self._rescan.wait(timeout=min(_SEEN_SECONDS, self._resync))
                if self._stop.is_set():
                    break
                if self._rescan.is_set() or time.monotonic() - applied >= self._resync:
                    self._rescan.clear()
                    self._apply(conn)
                    applied = time.monotonic()
                if time.monotonic() - seen >= _SEEN_SECONDS:
                    leader_seen(conn, owner, me)
                    seen = time.monotonic()
        finally:
            watcher.stop()
            self._metrics.leader.set(0)
            self._metrics.leading = False

    def _apply(self, conn: psycopg.Connection[Any]) -> None:
        from reconciler.reading import load_desired
        from reconciler.store.applying import apply_plan
        from reconciler.store.daemon_state import record_load
        from reconciler.store.scheduling import notify_changed

        settings, owner = self._settings, self._settings.owner
        began = time.monotonic()
        try:
            desired = load_desired(settings.schedules_dir, owner=owner)
            plan = apply_plan(conn, desired, owner=owner, max_deletes=settings.max_deletes)
        except StoreError:
            raise
        except ReconcileError as exc:  # invalid folder, a guard, a conflict: nothing applied
            record_load(conn, owner, error=exc.message)
            notify_changed(conn, owner)  # every replica's readiness and metrics follow
            self._metrics.passes.labels("failed").inc()
            self._metrics.config_ok.set(0)
            self._metrics.readiness.set(config_known=True)
            if exc.message != self._last_error:
                _log.error("configuration not applied; the last applied state keeps running",
                           error=exc.message)  # fmt: skip
            self._last_error = exc.message
            return
        record_load(conn, owner, error=None)
        if plan.empty:  # an apply with changes has notified the replicas at its commit
            notify_changed(conn, owner)
        self._metrics.passes.labels("succeeded").inc()
        self._metrics.config_ok.set(1)
        self._metrics.readiness.set(config_known=True)
        if self._last_error is not None:
            _log.info("configuration valid again; applied")
        self._last_error = None
        if not plan.empty:
            _log.info(
                "applied", changes=len(plan.changes), owner=owner,
                seconds=round(time.monotonic() - began, 3),
            )  # fmt: skip
            self._applied()
