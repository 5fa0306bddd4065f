"""Job history retention: old ``cpi_jobs`` rows deleted in small batches by the daemon's leader.

``daemon.leading`` calls ``prune_jobs`` on its periodic pass, with a time budget. A job is
deleted once it started more than ``Retention.days`` ago, unless it is one of the newest
``Retention.keep`` jobs of its schedule (by name), still ``running``, or a schedule's
``last_job_id``. Only the history of this owner's schedules is pruned, and that of schedules no
longer in ``cpi_schedules`` (their history outlives them, by name); the jobs of the original
API's or another owner's schedules are theirs to keep, and a row without a schedule name or a
start (another program's) is never deleted.

Each ``DELETE`` takes at most ``batch`` rows, the oldest of each schedule first, under a
statement and lock timeout, with a short pause between; a pass stops when nothing is left or its
budget is spent, and the next pass goes on. The range of each schedule (older than the cutoff and
than its ``keep``-th newest job) is read once per pass: new jobs only move that job forward, so a
range read earlier deletes less, never more. Deleting is safe for the foreign keys
(``cpi_schedules.last_job_id`` and ``cpi_imported_files.job_id`` are ``ON DELETE SET NULL``, each
backed by an index so that the SET NULL is a lookup, not a scan).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from reconciler.errors import StoreError
from reconciler.logs import get_logger, one_line

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["BATCH", "Pruned", "Retention", "prune_jobs"]

BATCH = 1000  # rows per DELETE: short row locks, a short WAL burst, no long transaction
_PAUSE = 0.1  # seconds between batches, so the deletes never saturate the server
_STATEMENT_TIMEOUT = "10s"
_LOCK_TIMEOUT = "1s"  # a row another session holds is left for the next pass
_log = get_logger("reconciler.jobs")

# Each schedule name in cpi_jobs (a skip scan of idx_cpi_jobs_schedule_name: one probe per
# name, not a read of the table), kept when the schedule is this owner's or gone, with the start
# before which its jobs go: the cutoff, or its keep-th newest job's start if that is earlier.
# A schedule with fewer than keep jobs has no range.
_RANGES = """
WITH RECURSIVE names(name) AS (
    (SELECT schedule_name FROM cpi_jobs WHERE schedule_name IS NOT NULL
     ORDER BY schedule_name LIMIT 1)
  UNION ALL
    SELECT (SELECT j.schedule_name FROM cpi_jobs j WHERE j.schedule_name > n.name
            ORDER BY j.schedule_name LIMIT 1)
    FROM names n WHERE n.name IS NOT NULL
), floors AS (
  SELECT n.name, now() - make_interval(days => %(days)s) AS cutoff,
         (SELECT k.started_at FROM cpi_jobs k
          WHERE k.schedule_name = n.name AND k.started_at IS NOT NULL
          ORDER BY k.started_at DESC OFFSET greatest(%(keep)s - 1, 0) LIMIT 1) AS floor
  FROM names n LEFT JOIN cpi_schedules s ON s.name = n.name
  WHERE n.name IS NOT NULL AND (s.id IS NULL OR s.owner = %(owner)s)
), ranges AS (
  SELECT name, CASE WHEN %(keep)s = 0 THEN cutoff
                    WHEN floor IS NULL THEN NULL
                    ELSE least(cutoff, floor) END AS before
  FROM floors
)
SELECT r.name, r.before FROM ranges r
WHERE EXISTS (SELECT 1 FROM cpi_jobs o WHERE o.schedule_name = r.name AND o.started_at < r.before)
ORDER BY r.name
"""

_DELETE = """
DELETE FROM cpi_jobs WHERE id IN (
  SELECT c.id FROM unnest(%(names)s::text[], %(befores)s::timestamptz[]) AS r(name, before)
  CROSS JOIN LATERAL (
    SELECT j.id FROM cpi_jobs j
    WHERE j.schedule_name = r.name AND j.started_at < r.before AND j.status <> 'running'
      AND NOT EXISTS (SELECT 1 FROM cpi_schedules s WHERE s.last_job_id = j.id)
    ORDER BY j.started_at LIMIT %(batch)s
  ) c
  LIMIT %(batch)s
)
"""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long job history is kept: ``days`` (0: forever), and always the newest ``keep``
    jobs of each schedule, however old."""

    days: int
    keep: int

    @property
    def forever(self) -> bool:
        return self.days <= 0


@dataclass(frozen=True, slots=True)
class Pruned:
    """One pass: the rows each ``DELETE`` removed, and whether it left nothing to prune."""

    batches: tuple[int, ...]
    complete: bool

    @property
    def deleted(self) -> int:
        return sum(self.batches)


def prune_jobs(
    conn: psycopg.Connection[Any],
    retention: Retention,
    *,
    owner: str,
    within: float,
    batch: int = BATCH,
    pause: float = _PAUSE,
    stop: threading.Event | None = None,
) -> Pruned:
    """Delete the jobs past ``retention``, ``batch`` rows per statement, for up to ``within``
    seconds (a batch started in time runs to its end); ``stop`` ends the pass between batches.

    ``conn`` is an autocommit session: each batch is its own short transaction. ``StoreError``
    when PostgreSQL fails; what was deleted until then stays deleted.
    """
    if retention.forever:
        return Pruned((), complete=True)
    began = time.monotonic()
    deadline = began + within
    try:
        names, befores = _ranges(conn, retention, owner)
        batches: list[int] = []
        while names:
            deleted = _delete(conn, names, befores, batch)
            batches.append(deleted)
            if deleted < batch:
                break
            if time.monotonic() + pause >= deadline or _stopped(stop, pause):
                break
    except psycopg.Error as exc:
        raise StoreError(f"cannot prune the job history: PostgreSQL: {one_line(exc)}") from exc
    pruned = Pruned(tuple(batches), complete=not names or batches[-1] < batch)
    if pruned.deleted:
        _log.info(
            "job history pruned", jobs=pruned.deleted, statements=len(batches),
            complete=pruned.complete, seconds=round(time.monotonic() - began, 3),
            retention_days=retention.days, keep_per_schedule=retention.keep,
        )  # fmt: skip
    return pruned


def _ranges(
    conn: psycopg.Connection[Any], retention: Retention, owner: str
) -> tuple[list[str], list[datetime]]:
    with conn.transaction():
        _timeouts(conn)
        rows: Sequence[tuple[str, datetime]] = conn.execute(
            _RANGES, {"days": retention.days, "keep": retention.keep, "owner": owner}
        ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def _delete(
    conn: psycopg.Connection[Any], names: list[str], befores: list[datetime], batch: int
) -> int:
    with conn.transaction():
        _timeouts(conn)
        cur = conn.execute(_DELETE, {"names": names, "befores": befores, "batch": batch})
        return max(cur.rowcount, 0)


def _timeouts(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET LOCAL statement_timeout = '{_STATEMENT_TIMEOUT}'")
    conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")


def _stopped(stop: threading.Event | None, pause: float) -> bool:
    if stop is None:
        time.sleep(pause)
        return False
    return stop.wait(pause)
