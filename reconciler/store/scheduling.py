"""The notice an apply sends so that every replica looks at ``cpi_schedules`` again at once.

``notify_changed`` is the ``NOTIFY`` an apply sends (at commit) so that every replica's timer
resyncs within moments; ``CHANNEL`` is what they ``LISTEN`` on. What is due, and when, is read
and written by ``store.claiming`` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "notify_changed"]

CHANNEL = "reconcile_schedules"


def notify_changed(conn: psycopg.Connection[Any], owner: str) -> None:
    """Tell every listening replica that ``owner``'s schedules changed (sent at commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, owner))
