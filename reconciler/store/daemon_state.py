"""The daemon's state in ``cpi_daemon_state``, so ``reconcile status`` shows it without a daemon,
and the leader's lock that decides who writes it.

``daemon.leading`` writes it: ``claim_leadership`` when a replica becomes the one that applies,
``leader_seen`` (a ``LeaderHeartbeat`` beating) while it stays so, ``record_load`` after each
reading of the folder. ``commands`` reads it with ``read_state``. One row per owner: several
folders may share the database, each with its own leader.

The leader is the session holding the owner's advisory lock (``Named.LEADER``):
``take_leadership`` tries it, ``holds_leadership`` checks it (an apply does, in its transaction),
``release_leadership`` lets it go. A leader whose process is frozen (SIGSTOP, a paused VM) keeps
its session and so its lock; ``fence_leader`` terminates that session once the heartbeat is
older than the bound, and only that one: the holder must still be the session named after the
recorded leader (``store.connecting.session_name``), so a replica that has just taken the lock
is never the one ended.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from psycopg import errors as pg_errors
from psycopg.rows import class_row

from reconciler.errors import ReconcileError, StoreError
from reconciler.logs import get_logger
from reconciler.store.connecting import connect, session_name
from reconciler.store.locks import Named, lock_holder, named_key

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DaemonState",
    "Fenced",
    "LeaderHeartbeat",
    "claim_leadership",
    "fence_leader",
    "holds_leadership",
    "leader_seen",
    "read_state",
    "record_load",
    "release_leadership",
    "take_leadership",
]

_FENCE_WAIT_MS = 5000  # how long a fence waits for the terminated backend to exit
_log = get_logger("reconciler.daemon")


@dataclass(frozen=True, slots=True)
class DaemonState:
    """The row of one owner; times are ``None`` until the event first happens."""

    owner: str
    leader: str | None
    leader_since: datetime | None
    leader_seen_at: datetime | None
    loaded_at: datetime | None
    applied_at: datetime | None
    config_error: str | None
    config_error_at: datetime | None


class Fenced(NamedTuple):
    """A leader whose session ``fence_leader`` terminated: who, its backend, when last seen."""

    leader: str
    backend: int
    seen_at: datetime


def _key(owner: str) -> int:
    return named_key(Named.LEADER, owner)


def take_leadership(conn: psycopg.Connection[Any], owner: str) -> bool:
    """Take ``owner``'s leader lock on ``conn`` (autocommit) if it is free; true once it is ours.

    The lock is the session's: it is held until ``release_leadership`` or the session ends.
    """
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_key(owner),)).fetchone()
    return bool(row and row[0])


def release_leadership(conn: psycopg.Connection[Any], owner: str) -> None:
    """Let ``owner``'s leader lock held on ``conn`` go."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (_key(owner),))


def holds_leadership(conn: psycopg.Connection[Any], owner: str) -> bool:
    """Whether ``conn``'s session holds ``owner``'s leader lock now."""
    return lock_holder(conn, _key(owner)) == conn.info.backend_pid


def fence_leader(conn: psycopg.Connection[Any], owner: str, *, after: timedelta) -> Fenced | None:
    """Terminate the session of ``owner``'s leader if its heartbeat is older than ``after``.

    Returns what was fenced, once its backend has exited (its lock is free then), or ``None``
    when the leader is alive, the lock free, or the holder not the recorded leader's session.
    ``StoreError`` when this database role may not terminate it.
    """
    row = conn.execute(
        "SELECT leader FROM cpi_daemon_state "
        "WHERE owner = %s AND leader IS NOT NULL AND leader_seen_at < now() - %s",
        (owner, after),
    ).fetchone()
    holder = lock_holder(conn, _key(owner)) if row else None
    if row is None or holder is None:
        return None
    # Checked again as it is ended: still stale, still the recorded leader's own session.
    try:
        ended = conn.execute(
            "SELECT s.leader_seen_at, pg_terminate_backend(a.pid, %(wait)s) "
            "FROM cpi_daemon_state s, pg_stat_activity a "
            "WHERE s.owner = %(owner)s AND s.leader = %(leader)s "
            "AND s.leader_seen_at < now() - %(after)s "
            "AND a.pid = %(holder)s AND a.application_name = %(name)s",
            {
                "owner": owner, "leader": row[0], "after": after, "holder": holder,
                "name": session_name("leader", process=row[0]), "wait": _FENCE_WAIT_MS,
            },
        ).fetchone()  # fmt: skip
    except pg_errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"cannot end the session of leader {row[0]} (backend {holder}), whose heartbeat "
            "stopped: the replicas must connect as the same role, or one granted "
            "pg_signal_backend"
        ) from exc
    return Fenced(row[0], holder, ended[0]) if ended and ended[1] else None


def claim_leadership(conn: psycopg.Connection[Any], owner: str, leader: str) -> None:
    """Record ``leader`` (``host:pid``) as the replica that now watches and applies."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cpi_daemon_state (owner, leader, leader_since, leader_seen_at) "
            "VALUES (%s, %s, now(), now()) ON CONFLICT (owner) DO UPDATE SET "
            "leader = excluded.leader, leader_since = now(), leader_seen_at = now()",
            (owner, leader),
        )


def leader_seen(conn: psycopg.Connection[Any], owner: str, leader: str) -> bool:
    """The leader is alive: ``status`` shows how long ago it was last seen, and followers fence
    it once that is too long. False when the row names another leader: this one was fenced."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE cpi_daemon_state SET leader_seen_at = now() WHERE owner = %s AND leader = %s",
            (owner, leader),
        )
    return cur.rowcount == 1


def record_load(conn: psycopg.Connection[Any], owner: str, *, error: str | None) -> None:
    """After reading the folder: applied (``error`` is ``None``) or refused with ``error``.

    A refused load keeps ``applied_at``: the last good state is what still runs; and
    ``config_error_at`` while loads keep failing: it says since when (``status``, ``/metrics``).
    """
    with conn.transaction():
        conn.execute(
            "INSERT INTO cpi_daemon_state (owner) VALUES (%(owner)s) ON CONFLICT DO NOTHING",
            {"owner": owner},
        )
        conn.execute(
            "UPDATE cpi_daemon_state SET loaded_at = now(), "
            "applied_at = CASE WHEN %(error)s::text IS NULL THEN now() ELSE applied_at END, "
            "config_error = %(error)s, "
            "config_error_at = CASE WHEN %(error)s::text IS NULL THEN NULL "
            "  ELSE coalesce(config_error_at, now()) END "
            "WHERE owner = %(owner)s",
            {"owner": owner, "error": error},
        )


def read_state(conn: psycopg.Connection[Any], owner: str) -> DaemonState | None:
    """The state of ``owner``'s daemon; ``None`` if no daemon has run for it."""
    with conn.cursor(row_factory=class_row(DaemonState)) as cur:
        return cur.execute(
            "SELECT owner, leader, leader_since, leader_seen_at, loaded_at, applied_at, "
            "config_error, config_error_at FROM cpi_daemon_state WHERE owner = %s",
            (owner,),
        ).fetchone()


class LeaderHeartbeat:
    """While this replica leads: ``leader_seen`` every ``period`` seconds, on a session of its own.

    A thread and a session of its own keep the beat steady while the leader applies, prunes or
    waits on a lock: only a process that stopped (or lost the database) goes stale and is
    fenced. A beat that finds another leader on record sets ``lost`` and wakes the leader.
    """

    def __init__(
        self, url: str, owner: str, leader: str, *, period: float, wake: threading.Event
    ) -> None:
        self._url, self._owner, self._leader, self._period = url, owner, leader, period
        self._wake = wake
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2 * self._period)  # a beat waiting on PostgreSQL is let be

    def _run(self) -> None:
        import psycopg

        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._done.wait(self._period):
                try:
                    if conn is None or conn.broken:
                        conn = connect(self._url, autocommit=True, role="leader")
                    if not leader_seen(conn, self._owner, self._leader):
                        self.lost = True
                        self._wake.set()
                        return
                except (psycopg.Error, ReconcileError) as exc:  # the next beat tries again
                    message = exc.message if isinstance(exc, ReconcileError) else str(exc)
                    _log.warning("leader heartbeat failed", error=" ".join(message.split()))
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
