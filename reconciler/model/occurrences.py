"""Which occurrences of a schedule are due, missed or next: the scheduler's decisions, without I/O.

``store.claiming`` calls ``decide`` for every schedule row it claims (its stored ``next_run_at``
has passed, or is not set yet): the occurrence to run now, the ones to record ``missed`` with
their true reason, and the next run to store. Pure: the caller passes ``now`` and the stored
state, and gets data back, so every rule is tested with an injected clock.

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

__all__ = [
    "LOOKBACK",
    "MISSED_RECORDED",
    "Decision",
    "Due",
    "Missed",
    "Timing",
    "catch_up",
    "decide",
    "next_after",
]

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


@dataclass(frozen=True, slots=True)
class Missed:
    """An occurrence that is not run: ``superseded_by`` the later one that runs instead, or
    (when that is none) left ``late`` past its grace."""

    at: datetime
    late: timedelta
    grace: timedelta
    superseded_by: datetime | None
    timezone: str

    def reason(self, *, ran: bool = True) -> str:
        """The job's ``error``: why this occurrence did not run. ``ran`` is false when the
        occurrence that superseded it was itself not run (skipped for an overlap)."""
        if self.superseded_by is not None:
            when = _local(self.superseded_by, self.timezone)
            outcome = "which ran instead" if ran else "which was itself skipped"
            return (
                f"not run: superseded by {when}, {outcome} (of the occurrences due at once, "
                "only the latest within the misfire_grace runs)"
            )
        return (
            f"not run: {int(self.late.total_seconds())} s after its time, past the schedule's "
            f"misfire_grace of {int(self.grace.total_seconds())} s (the daemon was down or busy)"
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one schedule now: run ``run`` (or nothing), record ``missed`` (oldest
    first), store ``next`` as its next run. ``older`` as for ``Due``."""

    run: datetime | None
    missed: tuple[Missed, ...]
    older: bool
    next: datetime | None


def decide(
    timing: Timing, *, next_run_at: datetime | None, grace: timedelta, now: datetime
) -> Decision:
    """The scheduler's whole decision for one schedule whose stored next run is ``next_run_at``.

    No stored next run (a new schedule, or its timing changed): nothing runs, the next run is
    the first occurrence after ``now``. A next run still ahead: nothing changes. Otherwise the
    occurrences from the stored one up to ``now`` are sorted by ``catch_up``: the latest within
    ``grace`` runs, the earlier ones are superseded by it, and with none within grace each is
    missed for being past it.
    """
    if next_run_at is None:
        return Decision(None, (), False, next_after(timing, now))
    if next_run_at > now:
        return Decision(None, (), False, next_run_at)
    due = catch_up(timing, since=next_run_at, now=now, grace=grace)
    missed = tuple(Missed(at, now - at, grace, due.run, timing.timezone) for at in due.missed)
    return Decision(due.run, missed, due.older, due.next)


def _local(moment: datetime, timezone: str) -> str:
    """``moment`` as the schedule's wall clock reads it: ``14:05 CET``, ``09:30 UTC``."""
    from zoneinfo import ZoneInfo

    try:
        local = moment.astimezone(ZoneInfo(timezone))
    except (ValueError, KeyError):  # a zone stored by hand that this machine does not know
        local = moment
    return f"{local:%H:%M} {local.tzname() or 'UTC'}"
