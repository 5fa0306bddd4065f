"""The daemon's catch-up decisions (``model.occurrences``): pure, time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.model.occurrences import (
    LOOKBACK,
    MISSED_RECORDED,
    Timing,
    catch_up,
    decide,
    next_after,
)

EVERY_MINUTE = Timing("* * * * *", None, "UTC")
HOURLY_INTERVAL = Timing(None, 3600, "UTC", anchor=datetime(2026, 12, 1, 0, 17, tzinfo=UTC))
NOW = datetime(2026, 12, 1, 12, 30, 20, tzinfo=UTC)


def _at(hour: int, minute: int) -> datetime:
    return datetime(2026, 12, 1, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timing", "since", "grace", "expected"),
    [
        pytest.param(
            EVERY_MINUTE, _at(12, 30), 300, (_at(12, 30), [], _at(12, 31)), id="just-due"
        ),
        pytest.param(
            EVERY_MINUTE, _at(12, 27), 300,
            (_at(12, 30), [_at(12, 27), _at(12, 28), _at(12, 29)], _at(12, 31)),
            id="latest-runs-rest-missed",
        ),
        pytest.param(
            EVERY_MINUTE, _at(12, 27), 10,
            (None, [_at(12, 27), _at(12, 28), _at(12, 29), _at(12, 30)], _at(12, 31)),
            id="all-past-grace",
        ),
        pytest.param(
            HOURLY_INTERVAL, _at(10, 17), 300,
            (None, [_at(10, 17), _at(11, 17), _at(12, 17)], _at(13, 17)),
            id="interval-keeps-its-anchor",
        ),
        pytest.param(
            HOURLY_INTERVAL, _at(12, 17), 3600, (_at(12, 17), [], _at(13, 17)), id="long-grace"
        ),
    ],
)  # fmt: skip
def test_the_latest_occurrence_within_grace_runs_and_the_others_are_missed(
    timing: Timing,
    since: datetime,
    grace: int,
    expected: tuple[datetime | None, list[datetime], datetime],
) -> None:
    """Of the occurrences since the stored next run, the latest within grace runs; the rest miss."""
    due = catch_up(timing, since=since, now=NOW, grace=timedelta(seconds=grace))
    assert (due.run, list(due.missed), due.next) == expected
    assert not due.older


def test_a_month_of_downtime_records_a_bounded_number_of_missed_runs() -> None:
    """After a month down, only the last day is examined and the latest 100 are recorded."""
    due = catch_up(
        EVERY_MINUTE, since=NOW - timedelta(days=30), now=NOW, grace=timedelta(seconds=300)
    )
    assert due.older
    assert due.run == _at(12, 30)
    assert len(due.missed) == MISSED_RECORDED
    assert due.missed[-1] == _at(12, 29)
    assert due.missed[0] > NOW - LOOKBACK


def test_a_spring_forward_gap_runs_once_at_the_end_of_the_gap() -> None:
    """02:30 Berlin on the spring-forward night is handled once, at 03:00 local (01:00 UTC)."""
    timing = Timing("30 2 * * *", None, "Europe/Berlin")
    gap = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)
    assert next_after(timing, gap) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    due = catch_up(timing, since=gap, now=gap + timedelta(hours=1), grace=timedelta(hours=2))
    assert (due.run, due.missed) == (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), ())


def test_a_schedule_that_never_fires_again_has_no_next_run() -> None:
    """A cron whose last fire time is past (Feb 29 after year 9996) arms nothing."""
    end = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    assert next_after(Timing("0 0 29 2 *", None, "UTC"), end) is None


def test_a_schedule_with_no_next_run_gets_the_first_after_now() -> None:
    decision = decide(EVERY_MINUTE, next_run_at=None, grace=timedelta(seconds=300), now=NOW)
    assert (decision.run, decision.missed, decision.next) == (None, (), _at(12, 31))


def test_a_next_run_still_ahead_changes_nothing() -> None:
    decision = decide(EVERY_MINUTE, next_run_at=_at(12, 31), grace=timedelta(seconds=300), now=NOW)
    assert (decision.run, decision.missed, decision.next) == (None, (), _at(12, 31))


def test_coalesced_occurrences_are_superseded_in_the_schedule_s_own_time() -> None:
    """91 s late within a 300 s grace is not "past the grace": it was superseded, and the time
    that superseded it reads as the schedule's wall clock does."""
    berlin = Timing("* * * * *", None, "Europe/Berlin")
    decision = decide(berlin, next_run_at=_at(12, 29), grace=timedelta(seconds=300), now=NOW)
    assert decision.run == _at(12, 30)
    (missed,) = decision.missed
    assert (missed.at, missed.late) == (_at(12, 29), timedelta(seconds=80))
    assert missed.reason() == (
        "not run: superseded by 13:30 CET, which ran instead (of the occurrences due at once, "
        "only the latest within the misfire_grace runs)"
    )
    assert "which was itself skipped" in missed.reason(ran=False)


def test_occurrences_past_the_grace_each_say_how_late_they_were() -> None:
    decision = decide(EVERY_MINUTE, next_run_at=_at(12, 29), grace=timedelta(seconds=10), now=NOW)
    assert decision.run is None
    assert [m.reason() for m in decision.missed] == [
        "not run: 80 s after its time, past the schedule's misfire_grace of 10 s "
        "(the daemon was down or busy)",
        "not run: 20 s after its time, past the schedule's misfire_grace of 10 s "
        "(the daemon was down or busy)",
    ]
