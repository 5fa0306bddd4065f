"""One replica at a time watches the folder and applies it: leader election on an advisory lock.

``serving`` starts one ``Leader`` per replica. Each holds a session and tries the owner's
session advisory lock (``Named.LEADER``); the one that gets it leads until that session ends.
When a leader's process dies, PostgreSQL closes its session and frees the lock, and another
replica takes over within ``ELECT_SECONDS``; when its whole host vanishes, once the server's TCP
keepalives (``tcp_keepalives_*``, two hours by default: lower them) give its session up. Only
the leader applies, so during a rolling ConfigMap update a replica that still sees the old files
never undoes the leader's apply; every replica keeps scheduling from the rows
(``daemon.timing``).

A leader whose process is frozen (SIGSTOP, a paused VM) keeps its session, and so the lock. So it
beats: a thread of its own, on a session of its own, writes ``leader_seen_at`` every ``beat``
seconds (a sixth of ``leader_fence_seconds``, at most ``_SEEN_SECONDS``), steady while the
leader applies or waits on a lock. A follower that finds the beat older than
``leader_fence_seconds`` fences the leader: it terminates the leader's session
(``store.daemon_state.fence_leader``), which frees the lock, and takes it. Leadership is the lock
session's, so a leader that wakes to find its session ended (or another leader on record) says it
lost leadership and campaigns again as a follower; and every apply runs on that session, in a
transaction that first checks the session still holds the lock: a fenced leader cannot commit.

The leader reads the folder at once, then on every change the watcher reports, on SIGHUP and
on the periodic resync (which also sets back rows changed behind its back). It never acts on a
half-written folder (``model.settling``): it applies what has read the same for
``SETTLE_SECONDS`` after the last change, and a plan that deletes (or a folder that is missing or
empty) only once the folder has read the same for ``delete_settle_seconds``, read and planned
again then. Until that time the whole plan waits, its creates and updates too: the folder as it
is may be the middle of a save. A folder that fails to load or a plan a guard refuses applies
nothing: the last good state keeps running, the error (with ``file:line:col``) goes to the log,
``cpi_daemon_state`` (``reconcile status``) and ``/metrics``, and fixing the file recovers on
the next event. The guards' overrides are settings (``max_deletes``, ``allow_empty``: the
``RECONCILER_*`` variables or ``serve``'s flags), and a refusal's message names them.

Each load is recorded (``cpi_daemon_state.loaded_at``) in the transaction of its apply, and the
notice every replica resyncs on (``store.scheduling.notify_changed``) is sent at that commit: a
follower that resyncs on it finds the load on record, so it is ready within moments.

Once every resync the leader also prunes the job history past its retention
(``store.pruning``), within a budget of ``_PRUNE_SECONDS``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from reconciler.backoff import Backoff
from reconciler.daemon.watching import Watcher
from reconciler.errors import GuardRefused, ReconcileError, StoreError, UsageError
from reconciler.logs import get_logger
from reconciler.model.plans import Op
from reconciler.model.settling import SETTLE_SECONDS, Read, digest, observe, settle
from reconciler.store.connecting import process_name

if TYPE_CHECKING:
    import psycopg

    from reconciler.daemon.metrics import Metrics
    from reconciler.model.plans import Desired
    from reconciler.settings import Settings
    from reconciler.store.daemon_state import LeaderHeartbeat

__all__ = ["ELECT_SECONDS", "Leader"]

ELECT_SECONDS = 2.0  # how often a follower tries the lock: the longest a dead leader is missed
_SEEN_SECONDS = 5.0  # the longest between two beats of the leader in cpi_daemon_state
_BEATS_PER_FENCE = 6  # beats within the fence bound: a late beat or two is not a frozen leader
_PRUNE_SECONDS = 2.0  # the job history pruning's budget per pass (store.pruning)
_log = get_logger("reconciler.daemon")


class _Deposed(Exception):
    """This replica no longer leads; raised and caught in this module only."""


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
        self._read: Read | None = None  # the folder as last read, and since when
        self._holding: str | None = None  # the content a delete last waited on
        self._unfenceable: str | None = None  # why the last fence failed, said once
        self._beat = min(_SEEN_SECONDS, settings.leader_fence_seconds / _BEATS_PER_FENCE)
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._rescan.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from reconciler.store.connecting import connect

        backoff = Backoff()
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True, role="leader") as conn:
                    backoff.reset()
                    self._campaign(conn)
            except Exception as exc:  # a lost session ends the leadership with it
                message = exc.message if isinstance(exc, ReconcileError) else str(exc)
                delay = backoff.next()
                _log.error("leader election failed; retrying", error=" ".join(message.split()),
                           retry_in=delay)  # fmt: skip
                self._metrics.leader.set(0)
                self._stop.wait(delay)

    def _campaign(self, conn: psycopg.Connection[Any]) -> None:
        from reconciler.store.daemon_state import release_leadership, take_leadership

        owner = self._settings.owner
        while not self._stop.is_set():
            if take_leadership(conn, owner):
                try:
                    self._lead(conn)
                finally:
                    if not conn.broken:
                        release_leadership(conn, owner)
                return
            if not self._fence(conn):  # a fenced leader's lock is free: try it at once
                self._stop.wait(ELECT_SECONDS)

    def _fence(self, conn: psycopg.Connection[Any]) -> bool:
        """End the leader's session if its heartbeat stopped; true when it was ended."""
        from reconciler.store.daemon_state import fence_leader

        bound = self._settings.leader_fence_seconds
        try:
            fenced = fence_leader(conn, self._settings.owner, after=timedelta(seconds=bound))
        except StoreError as exc:
            if conn.broken:
                raise
            if exc.message != self._unfenceable:
                _log.error("cannot fence the leader; no replica applies until it is back or "
                           "its session ends", error=exc.message)  # fmt: skip
            self._unfenceable = exc.message
            return False
        if fenced is None:
            return False
        self._unfenceable = None
        _log.warning(
            "fenced the leader: its heartbeat stopped, so its session was ended; taking over",
            leader=fenced.leader, backend=fenced.backend, last_seen=fenced.seen_at.isoformat(),
            leader_fence_seconds=bound,
        )  # fmt: skip
        return True

    def _lead(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        from reconciler.store.daemon_state import LeaderHeartbeat, claim_leadership

        me = process_name()
        owner = self._settings.owner
        claim_leadership(conn, owner, me)
        self._metrics.leader.set(1)
        self._metrics.leading = True
        _log.info("leading: this replica watches and applies the folder", owner=owner)
        watcher = Watcher(self._settings.schedules_dir, self._rescan, retry_seconds=self._resync)
        watcher.start()
        heartbeat = LeaderHeartbeat(self._url, owner, me, period=self._beat, wake=self._rescan)
        heartbeat.start()
        try:
            self._watch(conn, watcher, heartbeat)
        except _Deposed as exc:
            _log.error("lost leadership; following again", reason=str(exc))
        except (psycopg.Error, StoreError) as exc:
            if not conn.broken:
                raise
            message = exc.message if isinstance(exc, StoreError) else str(exc)
            _log.error("lost leadership: the session holding the leader lock ended; following "
                       "again", error=" ".join(message.split()))  # fmt: skip
        finally:
            heartbeat.stop()
            watcher.stop()
            self._metrics.leader.set(0)
            self._metrics.leading = False

    def _watch(
        self, conn: psycopg.Connection[Any], watcher: Watcher, heartbeat: LeaderHeartbeat
    ) -> None:
        """Look at the folder on each change, each resync and when settled; prune each resync."""
        looked = pruned = float("-inf")
        again: float | None = None  # when to look again at a folder that is settling
        self._read = None
        self._rescan.set()
        while not self._stop.is_set():
            timeout = min(self._beat, self._resync)
            if again is not None:
                timeout = max(0.0, min(timeout, again - time.monotonic()))
            self._rescan.wait(timeout=timeout)
            if self._stop.is_set():
                break
            if heartbeat.lost:
                raise _Deposed("another replica is the leader on record: this one was fenced")
            self._verify(conn)  # each wake: a leader that was frozen learns it at once
            now = time.monotonic()
            due = again is not None and now >= again
            if self._rescan.is_set() or due or now - looked >= self._resync:
                self._rescan.clear()
                again = self._look(conn, changed_at=watcher.changed_at)
                looked = time.monotonic()
            if time.monotonic() - pruned >= self._resync:
                self._prune(conn)
                pruned = time.monotonic()

    def _verify(self, conn: psycopg.Connection[Any]) -> None:
        """``_Deposed`` unless this session still holds the leader lock."""
        from reconciler.store.daemon_state import holds_leadership

        if not holds_leadership(conn, self._settings.owner):
            raise _Deposed("this session no longer holds the leader lock")

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        """Delete the job history past the retention, for at most ``_PRUNE_SECONDS`` a pass."""
        from reconciler.store.pruning import Retention, prune_jobs

        settings = self._settings
        retention = Retention(settings.job_retention_days, settings.job_retention_min)
        try:
            prune_jobs(
                conn, retention, owner=settings.owner, within=_PRUNE_SECONDS, stop=self._stop
            )
        except StoreError as exc:
            if conn.broken:
                raise
            _log.warning("job history not pruned; the next pass tries again", error=exc.message)

    def _look(self, conn: psycopg.Connection[Any], *, changed_at: float) -> float | None:
        """Read the folder and act on it once it has settled; else the time to look again."""
        from reconciler.reading import read_folder

        now = time.monotonic()
        try:
            content: list[tuple[str, bytes]] | str = read_folder(self._settings.schedules_dir)
        except UsageError as exc:  # missing or unreadable: refused, once that has settled
            content = f"{exc.message}; nothing was applied"
        self._read = read = observe(self._read, digest(content), now=now, changed_at=changed_at)
        wait = functools.partial(
            settle, read, now=now, settle_seconds=SETTLE_SECONDS,
            delete_seconds=self._settings.delete_settle_seconds,
        )  # fmt: skip
        again = wait(deletes=False)
        if again is not None:
            _log.debug(
                "the folder changed; waiting for it to settle", seconds=round(again - now, 3)
            )
            return again
        again = wait(deletes=True)
        held = self._act(conn, content, settled=again is None)
        if held is None or again is None:
            self._holding = None
            return None
        if read.digest != self._holding:  # said once each time the folder reads like this
            _log.info(
                "not applied yet: the folder must read the same for the delete settle, then it "
                "is read and planned again", reason=held,
                delete_settle_seconds=self._settings.delete_settle_seconds,
                again_in=round(again - now, 3),
            )  # fmt: skip
            self._holding = read.digest
        return again

    def _act(
        self, conn: psycopg.Connection[Any], content: list[tuple[str, bytes]] | str, *,
        settled: bool,
    ) -> str | None:  # fmt: skip
        """Apply what the folder holds, or refuse it; what a delete waits on, if it must wait.

        ``settled``: the folder has read the same for the delete settle, so a plan that deletes
        may be applied. Before then, the whole plan waits for it.
        """
        from reconciler.reading import desired_from
        from reconciler.store.applying import plan_against

        settings, owner = self._settings, self._settings.owner
        if isinstance(content, str):
            if settled:
                self._refused(conn, GuardRefused(content))
            return None if settled else "the schedules folder is missing or unreadable"
        try:
            desired = desired_from(content, settings.schedules_dir, owner=owner)
        except GuardRefused as exc:  # a file that does not parse or validate
            self._refused(conn, exc)
            return None
        if not settled:
            deletes = plan_against(conn, desired, owner=owner).count(Op.DELETE)
            if deletes or not desired.rows:
                return f"the plan deletes {deletes} row(s)" if deletes else "the folder is empty"
        # Unsettled, a delete that appears between that plan and this apply (another reconcile
        # of the same owner) is refused rather than applied; a later look applies it.
        self._apply(conn, desired, max_deletes=settings.max_deletes if settled else 0)
        return None

    def _apply(self, conn: psycopg.Connection[Any], desired: Desired, *, max_deletes: int) -> None:
        from reconciler.store.applying import apply_plan
        from reconciler.store.daemon_state import record_load
        from reconciler.store.scheduling import notify_changed

        owner = self._settings.owner
        began = time.monotonic()
        refused: ReconcileError | None = None
        # One transaction, on the lock's session: a fenced leader cannot commit, and the notice
        # (one, however many are sent in it) goes out with the load on record.
        with conn.transaction():
            self._verify(conn)
            try:
                plan = apply_plan(
                    conn, desired, owner=owner, max_deletes=max_deletes,
                    allow_empty=self._settings.allow_empty,
                )  # fmt: skip
            except StoreError:
                raise
            except ReconcileError as exc:  # a guard, a conflict: nothing applied
                refused = exc
            else:
                record_load(conn, owner, error=None)
                notify_changed(conn, owner)
        if refused is not None:
            self._refused(conn, refused)
            return
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

    def _refused(self, conn: psycopg.Connection[Any], exc: ReconcileError) -> None:
        """An invalid folder, a guard, a conflict: nothing applied; the last good state runs.

        A guard's message names the daemon's override (``RECONCILER_MAX_DELETES``), not apply's.
        """
        from reconciler.store.daemon_state import record_load
        from reconciler.store.scheduling import notify_changed

        owner = self._settings.owner
        message = exc.daemon_message if isinstance(exc, GuardRefused) else exc.message
        with conn.transaction():
            self._verify(conn)
            record_load(conn, owner, error=message)
            notify_changed(conn, owner)  # every replica's readiness and metrics follow
        self._metrics.passes.labels("failed").inc()
        self._metrics.config_ok.set(0)
        self._metrics.readiness.set(config_known=True)
        if message != self._last_error:
            _log.error("configuration not applied; the last applied state keeps running",
                       error=message)  # fmt: skip
        self._last_error = message
