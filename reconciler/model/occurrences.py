"""Which occurrences of a schedule are due, missed or next: the daemon's decisions, without I/O.

``daemon.timing`` calls ``catch_up`` for every schedule whose stored ``next_run_at`` has passed
(after a restart, an outage, or a queue that waited too long) and ``next_after`` to arm the timer.
Pure: the caller passes ``now`` and the stored state, and gets data back.

The rules (DESIGN.md §5). The stored ``next_run_at`` is the first occurrence not yet handled. Of
the occurrences from there up to ``now``, the latest one still within the schedule's
``misfire_grace`` runs; every other one is recorded as ``missed``. Catch-up is bounded: only the
last ``LOOKBACK`` (one day) is examined, and of that the most recent ``MISSED_RECORDED``
occurrences are recorded one by one. What lies further back, after a month of downtime say, is
counted in ``Due.older`` and reported in one log line, not written as thousands of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.model.timing import fire_times_between, next_fire_times

__all__ = ["LOOKBACK", "MISSED_RECORDED", "Due", "Timing", "catch_up", "next_after"]

LOOKBACK = timedelta(days=1)
MISSED_RECORDED = 100
_EXAMINED = 100_000  # an every-minute cron over LOOKBACK is 1,440; this only stops runaway loops
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Timing:
    """A schedule's timing as stored: exactly one of ``cron`` and ``interval_seconds``."""

    cron: str | None
    interval_seconds: int | None
    timezone: str
    anchor: datetime | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """What to do about the occurrences from the stored next run up to now.

    ``run`` is the occurrence to run now (or none); ``missed`` are recorded as missed, oldest
    first; ``older`` is true when earlier occurrences may exist that are not in ``missed``
    (before ``LOOKBACK``, or beyond ``MISSED_RECORDED``); ``next``
    is the first occurrence after ``now``, the one to arm the timer for.
    """

    run: datetime | None
    missed: tuple[datetime, ...]
    older: bool
    next: datetime | None


def next_after(timing: Timing, moment: datetime) -> datetime | None:
    """The first occurrence strictly after ``moment``; none when the schedule never fires again."""
    times = next_fire_times(
        cron=timing.cron,
        interval_seconds=timing.interval_seconds,
        timezone=timing.timezone,
        after=moment,
        count=1,
        anchor=timing.anchor,
    )
    return times[0] if times else None


def catch_up(timing: Timing, *, since: datetime, now: datetime, grace: timedelta) -> Due:
    """Sort the occurrences in ``[since, now]`` into the one to run and the missed ones.

    ``since`` is the stored next run, itself an occurrence (or the moment the schedule was
    first seen). An occurrence ``t`` may still run while ``now - t <= grace``.
    """
    start = max(since, now - LOOKBACK)
    times = fire_times_between(
        cron=timing.cron,
        interval_seconds=timing.interval_seconds,
        timezone=timing.timezone,
        start=start - _TICK,
        end=now,
        anchor=timing.anchor,
        limit=_EXAMINED,
    )
    run = times.pop() if times and now - times[-1] <= grace else None
    return Due(
        run=run,
        missed=tuple(times[-MISSED_RECORDED:]),
        older=start > since or len(times) > MISSED_RECORDED,
        next=next_after(timing, now),
    )
