"""Cron and interval arithmetic: spelling, rejection, day semantics and the DST contract."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconciler.model.timing import (
    describe,
    fire_times_between,
    next_fire_times,
    normalize_cron,
)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _cron_times(cron: str, timezone: str, after: str, count: int) -> list[str]:
    times = next_fire_times(
        cron=cron, interval_seconds=None, timezone=timezone, after=_utc(after), count=count
    )
    return [t.strftime("%Y-%m-%dT%H:%M") for t in times]


@pytest.mark.parametrize(
    "spellings",
    [
        ("0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun", "@weekly", "0 0 * * 7-7"),
        ("0 0 * * *", "@daily", "@midnight", "  0\t0  *  * * ", "0 0 1-31 * *", "0 0 * * 0-7"),
        ("0 0 1 1 *", "@yearly", "@annually", "0 0 1 JAN *", "0 0 1 jan *"),
        ("0 0 1 * *", "@monthly", "0 0 1 1-12 *"),
        ("0 * * * *", "@hourly", "0 0-23 * * *", "0 */1 * * *"),
        ("0 9 * * 1-5", "0 9 * * mon-fri", "0 9 * * MON,TUE,WED,THU,FRI", "0 9 * * 1,2,3-5"),
        ("0 0 * * 0,5,6", "0 0 * * fri-sun", "0 0 * * 5-7", "0 0 * * 5,6,7", "0 0 * * 0,5-6"),
        ("*/15 * * * *", "0,15,30,45 * * * *", "0-59/15 * * * *", "*/15 * * * *"),
        ("5-59/15 * * * *", "5/15 * * * *", "5,20,35,50 * * * *", "5-50/15 * * * *"),
        ("5 * * * *", "5-5 * * * *", "5,5 * * * *"),
        # Either day matching fires, and one side matches every day: every day fires.
        ("0 0 * * *", "0 0 1-31 * 1", "0 0 */2 * 0-6", "0 0 1 * mon-sun"),
        ("0 0 13 * 5", "0 0 13 * fri", "0 0 13 * FRI"),
        ("0 0 * * */2", "0 0 * * 0,2,4,6", "0 0 * * 7/2"),
    ],
)
def test_spellings_of_one_schedule_normalise_identically(spellings: tuple[str, ...]) -> None:
    """Names, 7 for Sunday, macros, ranges, steps and whitespace all normalise to one spelling."""
    assert {normalize_cron(s) for s in spellings} == {spellings[0]}


@pytest.mark.parametrize(
    ("expression", "canonical"),
    [
        ("*/30 * * * *", "*/30 * * * *"),
        ("1-59/2 * * * *", "1-59/2 * * * *"),
        ("0,10,20,30 * * * *", "0-30/10 * * * *"),
        ("10,30,50 * * * *", "10,30,50 * * * *"),
        ("0 8-18 * * 1-5", "0 8-18 * * 1-5"),
        ("0 1,2 * * *", "0 1,2 * * *"),
        ("0 0,1,2,5,7,8,9 * * *", "0 0-2,5,7-9 * * *"),
        ("0 */6 * * *", "0 */6 * * *"),
        ("0 0 */2 * *", "0 0 */2 * *"),
        ("0 0 1 */3 *", "0 0 1 */3 *"),
        ("0 0 29 feb *", "0 0 29 2 *"),
        ("0 0 1 jan-mar,dec *", "0 0 1 1-3,12 *"),
    ],
)
def test_canonical_spelling_is_compact_and_readable(expression: str, canonical: str) -> None:
    """The canonical spelling uses '*', steps and ranges where they say exactly the same."""
    assert normalize_cron(expression) == canonical


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 1 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0 * * fry", "'fry' is not a valid day-of-week; use 0-7 or sun-sat"),
        ("0 0 1 foo *", "'foo' is not a valid month; use 1-12 or jan-dec"),
        ("0 0 0 * * *", "has 6 fields; standard cron has 5"),
        ("0 0 0 * * * 2026", "has 7 fields"),
        ("0 0 * *", "has 4 fields"),
        ("", "the cron expression is empty"),
        ("   ", "the cron expression is empty"),
        ("@reboot", "'@reboot' runs at start-up, not on a schedule"),
        ("@fortnightly", "is not a cron macro; use one of @yearly"),
        ("@daily 0", "stands alone"),
        ("0 0 30 2 *", "'0 0 30 2 *' never fires (February has no 30th)"),
        ("0 0 31 2 *", "never fires (February has no 31st)"),
        ("0 0 30,31 feb *", "never fires (February has no 30th or 31st)"),
        ("0 0 31 4,6,9,11 *", "(April, June, September and November have no 31st)"),
        ("0 0 L * *", "extensions, not standard cron"),
        ("0 0 15W * *", "extensions, not standard cron"),
        ("0 0 * * 5#3", "extensions, not standard cron"),
        ("0 0 ? * *", "extensions, not standard cron"),
        ("H * * * *", "extensions, not standard cron"),
        ("*/0 * * * *", "step '0' in the minute field must be a whole number"),
        ("*/x * * * *", "step 'x' in the minute field"),
        ("0 5-1 * * *", "the hour range 5-1 runs backwards; write it as two ranges, e.g. 5-23,0-1"),
        ("1,,2 * * * *", "the minute field '1,,2' has an empty item"),
        ("0 0 * * -1", "'' is not a valid day-of-week"),
    ],
)
def test_bad_expressions_are_rejected_with_a_helpful_message(
    expression: str, fragment: str
) -> None:
    """Every rejection names what is wrong in words a user can act on."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        normalize_cron(expression)


@pytest.mark.parametrize(
    "expression",
    ["0 0 29 2 *", "0 0 30,31 2 1", "0 0 31 4 fri", "0 0 31 */2 *", "0 0 31 2,3 *"],
)
def test_expressions_that_fire_somewhere_are_accepted(expression: str) -> None:
    """A day that exists in some listed month, or any restricted weekday, fires."""
    assert normalize_cron(expression)


def test_either_day_of_month_or_day_of_week_matching_fires() -> None:
    """'0 0 13 * 5' fires on the 13th and on every Friday (Vixie OR semantics)."""
    times = _cron_times("0 0 13 * 5", "UTC", "2026-03-01T00:00", 7)
    assert times == [
        "2026-03-06T00:00",  # Friday
        "2026-03-13T00:00",  # Friday the 13th: once
        "2026-03-20T00:00",
        "2026-03-27T00:00",
        "2026-04-03T00:00",
        "2026-04-10T00:00",
        "2026-04-13T00:00",  # Monday the 13th
    ]


def test_restricted_day_of_month_alone_does_not_use_day_of_week() -> None:
    """With day-of-week '*', only the listed days of the month fire."""
    assert _cron_times("0 12 1,15 * *", "UTC", "2026-01-01T12:00", 3) == [
        "2026-01-15T12:00",
        "2026-02-01T12:00",
        "2026-02-15T12:00",
    ]


def test_february_29th_fires_in_leap_years() -> None:
    """'0 0 29 2 *' fires on the next 29 February, years away."""
    assert _cron_times("0 0 29 2 *", "UTC", "2026-01-01T00:00", 2) == [
        "2028-02-29T00:00",
        "2032-02-29T00:00",
    ]


# (zone, cron, after, expected fire times), all in UTC in 2026 as "MM-DD HH:MM"; each line was
# worked out by hand from the zone's transition: a skipped local time runs once at the end of the
# gap, a repeated local time runs once, at its first occurrence.
_DST = [
    # New York springs forward at 02:00 EST = 07:00Z on 8 March: 02:00-02:59 does not exist.
    ("America/New_York", "30 2 * * *", "03-07 12:00", "03-08 07:00, 03-09 06:30"),
    ("America/New_York", "0 * * * *", "03-08 05:30", "03-08 06:00, 03-08 07:00, 03-08 08:00"),
    ("America/New_York", "*/15 * * * *", "03-08 06:40", "03-08 06:45, 03-08 07:00, 03-08 07:15"),
    # New York falls back at 02:00 EDT = 06:00Z on 1 November: 01:00-01:59 happens twice.
    ("America/New_York", "30 1 * * *", "10-31 12:00", "11-01 05:30, 11-02 06:30"),
    ("America/New_York", "0 * * * *", "11-01 04:30", "11-01 05:00, 11-01 07:00, 11-01 08:00"),
    ("America/New_York", "*/15 * * * *", "11-01 05:50", "11-01 07:00, 11-01 07:15"),
    # `after` inside the second pass of the hour: its times already ran in the first pass.
    ("America/New_York", "30 1 * * *", "11-01 06:20", "11-02 06:30"),
    ("America/New_York", "*/15 * * * *", "11-01 06:10", "11-01 07:00"),
    # Berlin: 02:00-02:59 skipped on 29 March (at 01:00Z), repeated on 25 October (00:00Z-01:59Z).
    ("Europe/Berlin", "30 2 * * *", "03-28 12:00", "03-29 01:00, 03-30 00:30"),
    ("Europe/Berlin", "0 * * * *", "03-28 23:30", "03-29 00:00, 03-29 01:00, 03-29 02:00"),
    ("Europe/Berlin", "30 2 * * *", "10-24 12:00", "10-25 00:30, 10-26 01:30"),
    ("Europe/Berlin", "0 * * * *", "10-24 23:30", "10-25 00:00, 10-25 02:00, 10-25 03:00"),
    # Lord Howe shifts by 30 minutes: 02:00-02:29 skipped on 4 October (15:30Z the day before),
    # 01:30-01:59 repeated on 5 April (+11:00 until 15:00Z, then +10:30).
    ("Australia/Lord_Howe", "15 2 * * *", "10-03 00:00", "10-03 15:30, 10-04 15:15"),
    ("Australia/Lord_Howe", "*/15 * * * *", "10-03 15:00", "10-03 15:15, 10-03 15:30, 10-03 15:45"),
    ("Australia/Lord_Howe", "45 1 * * *", "04-04 00:00", "04-04 14:45, 04-05 15:15"),
    ("Australia/Lord_Howe", "0 * * * *", "04-04 13:00", "04-04 14:00, 04-04 15:30, 04-04 16:30"),
    ("Australia/Lord_Howe", "*/15 * * * *", "04-04 14:20", "04-04 14:30, 04-04 14:45, 04-04 15:30"),
    # Sydney (southern hemisphere): 02:00-02:59 repeated on 5 April, skipped on 4 October.
    ("Australia/Sydney", "30 2 * * *", "04-04 00:00", "04-04 15:30, 04-05 16:30"),
    ("Australia/Sydney", "0 * * * *", "04-04 14:30", "04-04 15:00, 04-04 17:00, 04-04 18:00"),
    ("Australia/Sydney", "30 2 * * *", "10-03 00:00", "10-03 16:00, 10-04 15:30"),
    ("Australia/Sydney", "0 * * * *", "10-03 14:30", "10-03 15:00, 10-03 16:00, 10-03 17:00"),
    # Chatham (+12:45/+13:45): 02:45-03:44 skipped on 27 September, repeated on 5 April.
    ("Pacific/Chatham", "0 3 * * *", "09-26 00:00", "09-26 14:00, 09-27 13:15"),
    ("Pacific/Chatham", "0 * * * *", "09-26 12:30", "09-26 13:15, 09-26 14:00, 09-26 14:15"),
    ("Pacific/Chatham", "0 3 * * *", "04-04 00:00", "04-04 13:15, 04-05 14:15"),
    # Santiago springs forward at midnight on 6 September: a daily midnight job runs at 01:00.
    ("America/Santiago", "0 0 * * *", "09-05 12:00", "09-06 04:00, 09-07 03:00"),
    # Tehran has kept +03:30 all year since 2022: nothing moves around its old DST date.
    ("Asia/Tehran", "30 2 * * *", "03-20 00:00", "03-20 23:00, 03-21 23:00"),
]


@pytest.mark.parametrize(("zone", "cron", "after", "expected"), _DST)
def test_daylight_saving_transitions_follow_the_contract(
    zone: str, cron: str, after: str, expected: str
) -> None:
    """Skipped local times run once at the end of the gap; repeated ones run once, first."""
    wanted = expected.split(", ")
    times = next_fire_times(
        cron=cron,
        interval_seconds=None,
        timezone=zone,
        after=_utc(f"2026-{after}"),
        count=len(wanted),
    )
    assert [t.strftime("%m-%d %H:%M") for t in times] == wanted


@pytest.mark.parametrize(
    ("anchor", "after", "expected"),
    [
        (None, "2026-01-01T05:00", ["2026-01-01T07:00", "2026-01-01T09:00"]),
        ("2026-01-01T00:00", "2026-01-01T05:00", ["2026-01-01T06:00", "2026-01-01T08:00"]),
        ("2026-01-01T00:00", "2026-01-01T06:00", ["2026-01-01T08:00", "2026-01-01T10:00"]),
        ("2026-01-01T00:00", "2026-01-01T05:59", ["2026-01-01T06:00", "2026-01-01T08:00"]),
        ("2026-01-02T00:00", "2026-01-01T05:00", ["2026-01-01T06:00", "2026-01-01T08:00"]),
    ],
)
def test_interval_fires_on_the_anchored_grid(
    anchor: str | None, after: str, expected: list[str]
) -> None:
    """An interval fires at anchor + k * interval strictly after `after`; anchor defaults to it."""
    times = next_fire_times(
        cron=None,
        interval_seconds=7200,
        timezone="Europe/Berlin",
        after=_utc(after),
        count=2,
        anchor=None if anchor is None else _utc(anchor),
    )
    assert [t.strftime("%Y-%m-%dT%H:%M") for t in times] == expected


@given(restart=st.integers(min_value=0, max_value=30 * 86400 * 10**6))
def test_a_restart_does_not_move_the_interval_cadence(restart: int) -> None:
    """Restarting at any moment with the stored anchor continues the same grid."""
    anchor = _utc("2026-03-01T00:17:05")
    interval = 5400
    now = anchor + timedelta(microseconds=restart)
    times = next_fire_times(
        cron=None, interval_seconds=interval, timezone="UTC", after=now, count=3, anchor=anchor
    )
    assert all((t - anchor).total_seconds() % interval == 0 for t in times)
    assert now < times[0] <= now + timedelta(seconds=interval)
    assert times[1] - times[0] == timedelta(seconds=interval)


def test_intervals_ignore_daylight_saving() -> None:
    """An hourly interval stays 3600 s apart in real time across a spring-forward."""
    times = next_fire_times(
        cron=None,
        interval_seconds=3600,
        timezone="America/New_York",
        after=_utc("2026-03-08T05:30"),
        count=4,
    )
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(hours=1)] * 3


@pytest.mark.parametrize(
    ("timing", "window", "limit", "expected"),
    [
        ("0 * * * *", "00:00 03:00", 1000, "01:00 02:00 03:00"),
        ("0 * * * *", "00:30 02:59", 1000, "01:00 02:00"),
        ("0 * * * *", "00:00 00:59", 1000, ""),
        ("* * * * *", "00:00 23:00", 2, "00:01 00:02"),
        (3600, "00:00 02:00", 1000, "01:00 02:00"),
    ],
)
def test_fire_times_between_excludes_start_and_includes_end(
    timing: str | int, window: str, limit: int, expected: str
) -> None:
    """Occurrences in (start, end], earliest first, at most `limit`."""
    start, end = (_utc(f"2026-01-01T{hhmm}") for hhmm in window.split())
    times = fire_times_between(
        cron=timing if isinstance(timing, str) else None,
        interval_seconds=timing if isinstance(timing, int) else None,
        timezone="UTC",
        start=start,
        end=end,
        limit=limit,
    )
    assert [t.strftime("%H:%M") for t in times] == expected.split()


@pytest.mark.parametrize(
    ("cron", "interval", "words"),
    [
        ("0 0 * * *", None, "At 00:00"),
        ("@weekly", None, "At 00:00, only on Sunday"),
        ("0 0 * * 7", None, "At 00:00, only on Sunday"),
        ("30 14 * * mon-fri", None, "At 14:30, Monday through Friday"),
        ("*/15 * * * *", None, "Every 15 minutes"),
        ("0 0 13 * 5", None, "At 00:00, on day 13 of the month, or on Friday"),
        (None, 7200, "every 2 hours"),
        (None, 3600, "every hour"),
        (None, 5400, "every 90 minutes"),
        (None, 86400, "every day"),
        (None, 90061, "every 90061 seconds"),
    ],
)
def test_describe_says_the_timing_in_words(
    cron: str | None, interval: int | None, words: str
) -> None:
    """Cron in words with a 24-hour clock; intervals in the largest whole unit."""
    assert describe(cron, interval) == words


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"cron": "0 * * * *", "interval_seconds": 3600}, "exactly one of cron and interval"),
        ({"cron": None, "interval_seconds": None}, "exactly one of cron and interval"),
        ({"cron": None, "interval_seconds": 0}, "must be positive"),
        ({"cron": "0 * * * *", "interval_seconds": None, "timezone": "Mars/Olympus"}, "Mars"),
        ({"cron": "0 * * * *", "interval_seconds": None, "after": datetime(2026, 1, 1)}, "aware"),
        ({"cron": "0 0 31 2 *", "interval_seconds": None}, "never fires"),
    ],
)
def test_fire_times_reject_bad_arguments(arguments: dict[str, object], fragment: str) -> None:
    """Both or neither timing, naive datetimes, unknown zones and bad crons are errors."""
    call: dict[str, object] = {"timezone": "UTC", "after": _utc("2026-01-01T00:00"), "count": 1}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        next_fire_times(**{**call, **arguments})  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

_ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Europe/Dublin",  # negative DST in the tz database
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Pacific/Chatham",
    "Asia/Tehran",
    "America/Santiago",
]


def _field(
    low: int, high: int, star_high: int, names: tuple[str, ...] = ()
) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    value = number.map(str) | st.sampled_from(names) if names else number.map(str)
    pair = st.tuples(number, number).filter(lambda p: p[0] < p[1])  # croniter: 'a-a' = all
    step = st.integers(1, star_high - low)
    item = st.one_of(
        value,
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.tuples(pair, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(number, step).map(lambda t: f"{t[0]}/{t[1]}"),
    )
    return st.just("*") | st.lists(item, min_size=1, max_size=3).map(",".join)


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS = st.tuples(
    _field(0, 59, 59),
    _field(0, 23, 23),
    _field(1, 31, 31),
    _field(1, 12, 12, _MONTH_NAMES),
    _field(0, 7, 6, _DAY_NAMES),
)


def _valid(fields: tuple[str, ...]) -> str:
    expression = " ".join(fields)
    try:
        normalize_cron(expression)
    except ValueError:
        assume(False)  # e.g. a day that no listed month has
    return expression


@settings(max_examples=150, deadline=None)
@given(fields=_CRON_FIELDS)
def test_normalising_is_idempotent(fields: tuple[str, ...]) -> None:
    """normalize(normalize(x)) == normalize(x) for any valid expression."""
    expression = _valid(fields)
    assert normalize_cron(normalize_cron(expression)) == normalize_cron(expression)


def _croniter_reads_days_as_we_do(fields: tuple[str, ...]) -> bool:
    # croniter turns a day field covering every value into '*' when the *other* field's text
    # contains '*' (e.g. '1-31' with '*/2'); cron (and we) treat a written range as restricted.
    expanded, _ = croniter.expand(" ".join(fields))
    written = fields[2] != "*" and fields[4] != "*"
    return not (written and ["*"] in (expanded[2], expanded[4]))


@settings(max_examples=100, deadline=None)
@given(
    fields=_CRON_FIELDS,
    start=st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)),
)
def test_normalising_preserves_the_fire_times(fields: tuple[str, ...], start: datetime) -> None:
    """The canonical spelling fires exactly when croniter fires the original spelling."""
    expression = _valid(fields)
    assume(_croniter_reads_days_as_we_do(fields))
    after = start.replace(tzinfo=UTC)
    walker = croniter(expression, after, ret_type=datetime)
    expected = [walker.get_next() for _ in range(12)]
    times = next_fire_times(
        cron=expression, interval_seconds=None, timezone="UTC", after=after, count=12
    )
    assert times == expected


@settings(max_examples=100, deadline=None)
@given(
    fields=_CRON_FIELDS,
    zone=st.sampled_from(_ZONES),
    after=st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_fire_times_strictly_increase_after_the_start(
    fields: tuple[str, ...], zone: str, after: datetime
) -> None:
    """For any valid expression and zone, fire times are strictly increasing and after `after`."""
    expression = _valid(fields)
    times = next_fire_times(
        cron=expression, interval_seconds=None, timezone=zone, after=after, count=20
    )
    assert times
    assert all(t.tzinfo is UTC for t in times)
    assert times[0] > after
    assert all(a < b for a, b in itertools.pairwise(times))


def _transitions(zone: ZoneInfo) -> list[datetime]:
    found = []
    day = datetime(2026, 1, 1, tzinfo=UTC)
    while day.year == 2026:
        if (
            day.astimezone(zone).utcoffset()
            != (day + timedelta(days=1)).astimezone(zone).utcoffset()
        ):
            moment = day
            while moment.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                moment += timedelta(minutes=15)
            found.append(moment)
        day += timedelta(days=1)
    return found


_TRANSITIONS = [(name, moment) for name in _ZONES for moment in _transitions(ZoneInfo(name))]


def _matches(expression: str, wall: datetime) -> bool:
    (minutes, hours, days, months, weekdays), _ = croniter.expand(expression)

    def has(values: list[object], value: int) -> bool:
        return values == ["*"] or value in values

    day_of_month, day_of_week = has(days, wall.day), has(weekdays, wall.isoweekday() % 7)
    restricted = days != ["*"] and weekdays != ["*"]
    day = (day_of_month or day_of_week) if restricted else (day_of_month and day_of_week)
    return has(minutes, wall.minute) and has(hours, wall.hour) and has(months, wall.month) and day


def _minute_by_minute(
    expression: str, zone: ZoneInfo, start: datetime, end: datetime
) -> list[datetime]:
    # The contract restated over real minutes: a wall time fires at its first occurrence, and
    # the first minute after a gap fires if any skipped wall time matches.
    fired = []
    moment = start + timedelta(minutes=1)
    while moment <= end:
        wall = moment.astimezone(zone)
        previous = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
        skipped = previous + timedelta(minutes=1)
        in_gap = False
        while skipped < wall.replace(tzinfo=None):
            in_gap = in_gap or _matches(expression, skipped)
            skipped += timedelta(minutes=1)
        if in_gap or (wall.fold == 0 and _matches(expression, wall.replace(tzinfo=None))):
            fired.append(moment)
        moment += timedelta(minutes=1)
    return fired


_AROUND_TRANSITIONS = [
    "* * * * *",
    "0 0 * * *",
    "*/15 * * * *",
    "*/20 */2 * * *",
    "*/7 1-3 * * *",
    "0 * * * *",
    "30 * * * *",
    "0,30 2 * * *",
    "15 1 * * *",
    "50 1 * * *",
    "0 3 * * *",
    "44 2 * * *",
    "45 2 * * *",
]


@settings(max_examples=30, deadline=None)
@given(
    expression=st.sampled_from(_AROUND_TRANSITIONS),
    transition=st.sampled_from(_TRANSITIONS),
    before=st.integers(0, 240),
)
def test_fire_times_match_the_contract_minute_by_minute(
    expression: str, transition: tuple[str, datetime], before: int
) -> None:
    """Around every 2026 transition of every zone, fire times equal a minute-by-minute walk."""
    name, moment = transition
    start = moment - timedelta(minutes=before)
    end = moment + timedelta(hours=4)
    expected = _minute_by_minute(expression, ZoneInfo(name), start, end)
    actual = fire_times_between(
        cron=expression, interval_seconds=None, timezone=name, start=start, end=end
    )
    assert actual == expected


# --- the end of time and values too long to quote ---------------------------------------------

_DIGITS = "9" * 5000


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            f"{_DIGITS} * * * *",
            f"'{'9' * 37}...': minute {'9' * 37}... is out of range 0-59",
        ),
        (f"0 0{_DIGITS} * * *", f"'0 0{'9' * 34}...': hour 0{'9' * 36}... is out of range 0-23"),
        (f"*/x{_DIGITS} * * * *", f"'*/x{'9' * 34}...': step 'x{'9' * 36}...' in the minute"),
        (f"@x{_DIGITS}", f"'@x{'9' * 35}...' is not a cron macro"),
        (f"0 0 * * {'a' * 200}", f"'0 0 * * {'a' * 29}...': '{'a' * 37}...' is not a valid day"),
    ],
    ids=["5000 digits", "leading zero and digits", "long step", "long macro", "long name"],
)
def test_long_expressions_are_quoted_short(expression: str, message: str) -> None:
    """A rejected expression and its token are quoted to 40 characters; digits never overflow."""
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        normalize_cron(expression)
    assert len(str(raised.value)) < 250


@pytest.mark.parametrize(
    ("spellings", "canonical"),
    [
        ((f"*/{_DIGITS} * * * *", "*/60 * * * *", "*/0060 * * * *"), "0 * * * *"),
        (("0000000000000000005 * * * *", "05 * * * *"), "5 * * * *"),
    ],
    ids=["a step past the field", "leading zeros"],
)
def test_long_numbers_in_a_cron_mean_what_they_say(
    spellings: tuple[str, ...], canonical: str
) -> None:
    """Steps past the field keep its first value; leading zeros change nothing."""
    assert {normalize_cron(s) for s in spellings} == {canonical}


END = [
    # (cron or interval, zone, after, what is left before datetime's last instant)
    ("0 0 * * *", "UTC", "9999-12-29T12:00", ["9999-12-30T00:00", "9999-12-31T00:00"]),
    ("0 0 * * *", "America/New_York", "9999-12-30T06:00", ["9999-12-31T05:00"]),
    ("59 23 31 12 *", "America/New_York", "9999-12-30T00:00", []),  # 10000-01-01 04:59 UTC
    ("0 0 29 2 *", "UTC", "9996-03-01T00:00", []),  # 10000 would be the next leap year
    (7200, "UTC", "9999-12-31T19:00", ["9999-12-31T21:00", "9999-12-31T23:00"]),
]


@pytest.mark.parametrize(("timing", "zone", "after", "expected"), END)
def test_fire_times_end_with_year_9999(
    timing: str | int, zone: str, after: str, expected: list[str]
) -> None:
    """Past datetime's last instant there are no more fire times: fewer, never an overflow."""
    cron, interval = (timing, None) if isinstance(timing, str) else (None, timing)
    times = next_fire_times(
        cron=cron, interval_seconds=interval, timezone=zone, after=_utc(after), count=5
    )
    assert [t.strftime("%Y-%m-%dT%H:%M") for t in times] == expected


def test_the_longest_interval_a_thousand_times_ends_quietly() -> None:
    """A 68-year interval asked for 1000 times gives the runs before year 10000."""
    times = next_fire_times(
        cron=None,
        interval_seconds=2_147_483_647,
        timezone="UTC",
        after=_utc("2026-01-01T00:00"),
        count=1000,
    )
    assert 100 < len(times) < 1000
    assert times[-1].year <= 9999


@pytest.mark.parametrize("zone", ["America", "US", "A" * 300, "../etc/passwd", ""])
def test_fire_times_refuse_what_is_not_a_zone(zone: str) -> None:
    """A folder of the tz database, a key too long for a file name, or a path: ValueError."""
    with pytest.raises(ValueError, match="unknown time zone"):
        next_fire_times(
            cron="0 * * * *",
            interval_seconds=None,
            timezone=zone,
            after=_utc("2026-01-01T00:00"),
            count=1,
        )
