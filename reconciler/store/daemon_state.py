"""The daemon's state in ``cpi_daemon_state``, so ``reconcile status`` shows it without a daemon.

``daemon.leading`` writes it: ``claim_leadership`` when a replica becomes the one that applies,
``leader_seen`` while it stays so, ``record_load`` after each reading of the folder.
``commands`` reads it with ``read_state``. One row per owner: several folders may share the
database, each with its own leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

if TYPE_CHECKING:
    import psycopg

__all__ = ["DaemonState", "claim_leadership", "leader_seen", "read_state", "record_load"]


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


def claim_leadership(conn: psycopg.Connection[Any], owner: str, leader: str) -> None:
    """Record ``leader`` (``host:pid``) as the replica that now watches and applies."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cpi_daemon_state (owner, leader, leader_since, leader_seen_at) "
            "VALUES (%s, %s, now(), now()) ON CONFLICT (owner) DO UPDATE SET "
            "leader = excluded.leader, leader_since = now(), leader_seen_at = now()",
            (owner, leader),
        )


def leader_seen(conn: psycopg.Connection[Any], owner: str, leader: str) -> None:
    """The leader is alive: ``status`` shows how long ago it was last seen."""
    with conn.transaction():
        conn.execute(
            "UPDATE cpi_daemon_state SET leader_seen_at = now() WHERE owner = %s AND leader = %s",
            (owner, leader),
        )


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
