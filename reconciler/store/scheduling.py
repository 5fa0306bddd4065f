"""What the daemon's timer reads and writes in ``cpi_schedules``: timing rows, next runs, notices.

``daemon.timing`` calls ``fetch_timer_rows`` on every resync (one query, whatever the number of
schedules), ``store_first_runs`` for schedules no replica has scheduled yet, and
``advance_next_run`` when an occurrence is handled. Every write is conditional on what the
writer read, so replicas computing the same value at once agree, and a reconcile that reset the
timing in between is never overwritten. ``notify_changed`` is the ``NOTIFY`` an apply sends so
that every replica resyncs within moments; ``CHANNEL`` is what they ``LISTEN`` on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CHANNEL",
    "TimerRow",
    "advance_next_run",
    "fetch_timer_rows",
    "is_enabled",
    "notify_changed",
    "store_first_runs",
]

CHANNEL = "reconcile_schedules"


@dataclass(frozen=True, slots=True)
class TimerRow:
    """One enabled schedule as the timer needs it."""

    name: str
    cron_expression: str | None
    interval_seconds: int | None
    timezone: str
    interval_anchor: datetime | None
    next_run_at: datetime | None
    misfire_grace_seconds: int


# Rows written by another program (no anchor) get one now, once: the cadence counts from here.
_ANCHOR = """
UPDATE cpi_schedules SET interval_anchor = now()
WHERE owner = %s AND interval_seconds IS NOT NULL AND interval_anchor IS NULL
"""
_ROWS = """
SELECT s.name,
       CASE WHEN s.schedule_type = 'cron' THEN s.cron_expression END AS cron_expression,
       CASE WHEN s.schedule_type = 'interval' THEN s.interval_seconds END AS interval_seconds,
       coalesce(s.timezone, 'UTC') AS timezone, s.interval_anchor, s.next_run_at,
       s.misfire_grace_seconds
FROM cpi_schedules s
WHERE s.owner = %s AND coalesce(s.enabled, true) AND s.project_id IS NOT NULL
ORDER BY s.name
"""


def fetch_timer_rows(conn: psycopg.Connection[Any], owner: str) -> list[TimerRow]:
    """The enabled schedules ``owner`` manages, in one transaction."""
    with conn.transaction():
        conn.execute(_ANCHOR, (owner,))
        with conn.cursor(row_factory=class_row(TimerRow)) as cur:
            return cur.execute(_ROWS, (owner,)).fetchall()


def store_first_runs(conn: psycopg.Connection[Any], first: dict[str, datetime]) -> None:
    """Set ``next_run_at`` of schedules that have none yet (new, or their timing changed)."""
    if not first:
        return
    records = [{"name": n, "next": t.isoformat()} for n, t in first.items()]
    with conn.transaction():
        conn.execute(
            "UPDATE cpi_schedules s SET next_run_at = x.next "
            "FROM jsonb_to_recordset(%s::jsonb) AS x(name text, next timestamptz) "
            "WHERE s.name = x.name AND s.next_run_at IS NULL",
            (json.dumps(records),),
        )


def advance_next_run(
    conn: psycopg.Connection[Any], name: str, occurrence: datetime, following: datetime | None
) -> None:
    """Record that ``occurrence`` is handled: the next run is ``following``.

    Only a stored next run at or before ``occurrence`` moves; ``NULL`` (the timing was changed
    by a reconcile since) stays for the next resync to compute from the new timing.
    """
    with conn.transaction():
        conn.execute(
            "UPDATE cpi_schedules SET next_run_at = %s WHERE name = %s AND next_run_at <= %s",
            (following, name, occurrence),
        )


def is_enabled(conn: psycopg.Connection[Any], name: str) -> bool | None:
    """Whether schedule ``name`` is enabled now; ``None`` when it no longer exists."""
    row = conn.execute(
        "SELECT coalesce(enabled, true) FROM cpi_schedules WHERE name = %s", (name,)
    ).fetchone()
    return None if row is None else bool(row[0])


def notify_changed(conn: psycopg.Connection[Any], owner: str) -> None:
    """Tell every listening replica that ``owner``'s schedules changed (sent at commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, owner))
