"""Cron and interval arithmetic: parsing, normalising, describing and fire times.

Pure: no clock, no I/O; callers pass ``after``/``start``/``end``. Used by ``model.specs``
(validation and the canonical cron spelling), ``reconcile next`` and the scheduler.

Cron is standard 5-field cron: 0 and 7 are Sunday, ``jan``/``mon`` names and ``@daily``-style
macros work, and when both day-of-month and day-of-week are restricted (written as anything but
``*``) a day matching either fires. Extensions (seconds, years, ``L``, ``W``, ``#``, ``?``, ``H``)
are rejected. Fire times come from iterating local wall-clock times and mapping each to an instant:
a time skipped by a spring-forward runs once at the first instant after the gap, a repeated time
runs once, at its first occurrence. The field parsing is our own so that a mistake gets a precise
message; ``croniter`` iterates the canonical spelling, which it reads exactly as we do.
Messages quote the expression short (``scalars.excerpt``), and fire times end quietly where
``datetime`` does, at the end of year 9999.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.model.scalars import excerpt

__all__ = ["describe", "fire_times_between", "next_fire_times", "normalize_cron"]

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_MONTH_LENGTHS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February 29: leap years fire
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EXTENSIONS = re.compile(r"[#?]|^(?:l|lw|h|\d+[lw]|w\d+|l\d+)$|^h[(/]", re.IGNORECASE)
_FIELD_SPLIT = re.compile(r"[^ \t\r\n\f\v]+")  # ASCII whitespace only, as cron itself


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int  # the largest value ``*`` stands for
    top: int  # the largest value one may write (7: Sunday again in day-of-week)
    names: tuple[str, ...] = ()
    first_name: int = 0  # the number of ``names[0]``

    @property
    def hint(self) -> str:
        named = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        return f"{self.low}-{self.top}{named}"


_FIELDS = (
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 6, 7, _DAYS, 0),
)
_DOM, _MONTH, _DOW = 2, 3, 4


def _value(token: str, field: _Field, expression: str, *, range_end: bool = False) -> int:
    if token.isascii() and token.isdigit():
        digits = token.lstrip("0") or "0"
        # Converted only when short: thousands of digits are slow, and Python refuses past 4300.
        number = int(digits) if len(digits) <= 2 else field.top + 1
        if not field.low <= number <= field.top:
            raise ValueError(
                f"{excerpt(expression)}: {field.name} {excerpt(token)[1:-1]} is out of range "
                f"{field.low}-{field.top}"
            )
        return number
    name = token.lower()
    if name in field.names:
        number = field.names.index(name) + field.first_name
        # 'fri-sun' means Friday to Sunday, so Sunday closing a range is 7, not 0.
        return 7 if range_end and field is _FIELDS[_DOW] and number == 0 else number
    extension = " (L, W, #, ? and H are extensions, not standard cron)"
    raise ValueError(
        f"{excerpt(expression)}: {excerpt(token)} is not a valid {field.name}; use {field.hint}"
        + (extension if _EXTENSIONS.search(token) else "")
    )


def _parse_field(text: str, field: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            digits = step_text.lstrip("0")
            if not (step_text.isascii() and step_text.isdigit()) or not digits:
                raise ValueError(
                    f"{excerpt(expression)}: step {excerpt(step_text)} in the {field.name} field "
                    "must be a whole number of at least 1"
                )
            # Any step past the field's span keeps only the first value: no need to convert.
            step = int(digits) if len(digits) <= 2 else field.top + 1
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low = _value(first, field, expression)
            high = _value(last, field, expression, range_end=True)
            if low > high:
                raise ValueError(
                    f"{excerpt(expression)}: the {field.name} range "
                    f"{base if len(base) <= 20 else excerpt(base)} runs backwards; "
                    f"write it as two ranges, e.g. {first}-{field.top},{field.low}-{last}"
                )
        elif base:
            low = _value(base, field, expression)
            high = low
            if slash:  # '5/15': from 5 to the end of the field in steps of 15
                low, high = low % (field.high + 1), field.high  # '7/2' starts on Sunday, 0
        else:
            raise ValueError(
                f"{excerpt(expression)}: the {field.name} field {excerpt(text)} has an empty item"
            )
        values.update(range(low, high + 1, step))
    if field is _FIELDS[_DOW] and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _compact(values: frozenset[int], field: _Field) -> str:
    """The shortest readable spelling of a set: ``*``, ``*/15``, ``5-59/15``, ``1-5,7``."""
    ordered = sorted(values)
    if len(ordered) == field.high - field.low + 1:
        return "*"
    if len(ordered) >= 2:
        step = ordered[1] - ordered[0]
        if step > 1 and ordered == list(range(ordered[0], ordered[-1] + 1, step)):
            reaches_end = ordered[-1] + step > field.high
            if ordered[0] == field.low and reaches_end:
                return f"*/{step}"
            if len(ordered) >= 4:
                return f"{ordered[0]}-{field.high if reaches_end else ordered[-1]}/{step}"
    parts: list[str] = []
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            run = ordered[start:index]
            parts.extend([f"{run[0]}-{run[-1]}"] if len(run) >= 3 else map(str, run))
            start = index
    return ",".join(parts)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _words(items: list[str], conjunction: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _check_fires(days: frozenset[int], months: frozenset[int], expression: str) -> None:
    """Day-of-month alone (day-of-week ``*``): some listed month must have some listed day."""
    if any(day <= _MONTH_LENGTHS[month - 1] for month in months for day in days):
        return
    month_words = _words([_MONTH_NAMES[m - 1] for m in sorted(months)], "and")
    verb = "has" if len(months) == 1 else "have"
    day_words = _words([_ordinal(d) for d in sorted(days)], "or")
    raise ValueError(f"{excerpt(expression)} never fires ({month_words} {verb} no {day_words})")


_CACHED_CRON = 256  # characters: longer expressions are normalised every time, not remembered


def normalize_cron(expression: str) -> str:
    """The canonical spelling of a cron expression; ``ValueError`` with a helpful message if bad.

    Spellings of one schedule normalise identically (``SUN``/``0``/``7``, ``@daily``/``0 0 * * *``,
    extra whitespace), so stored and declared schedules compare equal. Results are remembered
    for expressions of a sane length only, so that the cache's memory stays bounded.
    """
    if len(expression) <= _CACHED_CRON:
        return _normalize_cached(expression)
    return _normalize(expression)


@functools.lru_cache(maxsize=512)
def _normalize_cached(expression: str) -> str:
    return _normalize(expression)


def _normalize(expression: str) -> str:
    fields = _FIELD_SPLIT.findall(expression)
    if not fields:
        raise ValueError(
            "the cron expression is empty; write 5 fields such as '0 3 * * *' or a macro "
            "such as '@daily'"
        )
    if fields[0].startswith("@"):
        macro = fields[0].lower()
        if macro == "@reboot":
            raise ValueError(
                "'@reboot' runs at start-up, not on a schedule; use a time such as '@daily' "
                "or '0 3 * * *'"
            )
        if macro not in _MACROS:
            raise ValueError(
                f"{excerpt(expression)} is not a cron macro; use one of {', '.join(_MACROS)}"
            )
        if len(fields) > 1:
            raise ValueError(f"{excerpt(expression)}: a macro such as {macro} stands alone")
        fields = _MACROS[macro].split()
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"{excerpt(expression)} has {len(fields)} fields; standard cron has 5 (minute hour "
            "day-of-month month day-of-week), without seconds or years"
        )
    sets = [
        _parse_field(text, field, expression) for text, field in zip(fields, _FIELDS, strict=True)
    ]
    spelled = [_compact(values, field) for values, field in zip(sets, _FIELDS, strict=True)]
    dom_restricted, dow_restricted = fields[_DOM] != "*", fields[_DOW] != "*"
    if dom_restricted and dow_restricted:
        if "*" in (spelled[_DOM], spelled[_DOW]):
            # Either day matching fires and one of them matches every day: every day fires.
            spelled[_DOM] = spelled[_DOW] = "*"
    elif dom_restricted:
        _check_fires(sets[_DOM], sets[_MONTH], expression)
    return " ".join(spelled)


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: 'America' is a folder
        raise ValueError(f"unknown time zone {excerpt(timezone)}") from None


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant a naive local time fires: its first occurrence, or the end of its gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Skipped by a spring-forward: fold=1 reads it with the later offset (before the
    # transition), fold=0 with the earlier one (after it). Search the transition between them.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) // 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return high


def _cron_times(canonical: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    from croniter import CroniterBadDateError, croniter

    # Start from the wall time of `after`: no local time before it maps after it, because
    # the mapping is monotonic. In the second pass of a repeated hour the first candidates
    # map to the first pass, before `after`, and are dropped below.
    wall = after.astimezone(zone).replace(tzinfo=None, fold=0)
    walker = croniter(canonical, wall, ret_type=datetime, day_or=True)
    floor = after
    while True:
        try:
            candidate: datetime = walker.get_next()
            instant = _instant(candidate, zone)
        except CroniterBadDateError:  # nothing within 50 years of the last fire time
            return
        except (OverflowError, ValueError):  # past year 9999: datetime ends there
            return
        if instant > floor:  # several gap times map to one instant: it runs once
            floor = instant
            yield instant


def _interval_times(seconds: int, after: datetime, anchor: datetime) -> Iterator[datetime]:
    period = timedelta(seconds=seconds)
    base = anchor.astimezone(UTC)
    try:
        moment = base + ((after - base) // period + 1) * period
        while True:
            yield moment
            moment += period
    except OverflowError:  # past year 9999: datetime ends there
        return


def _fire_times(
    cron: str | None,
    interval_seconds: int | None,
    timezone: str,
    after: datetime,
    anchor: datetime | None,
) -> Iterator[datetime]:
    if after.tzinfo is None or (anchor is not None and anchor.tzinfo is None):
        raise ValueError("fire times need timezone-aware datetimes")
    zone = _zone(timezone)
    if cron is not None and interval_seconds is None:
        return _cron_times(normalize_cron(cron), zone, after)
    if interval_seconds is not None and cron is None:
        if interval_seconds <= 0:
            raise ValueError(f"an interval must be positive, not {interval_seconds} s")
        return _interval_times(interval_seconds, after, after if anchor is None else anchor)
    raise ValueError("give exactly one of cron and interval_seconds")


def next_fire_times(
    *,
    cron: str | None,
    interval_seconds: int | None,
    timezone: str,
    after: datetime,
    count: int,
    anchor: datetime | None = None,
) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``, as UTC datetimes, increasing.

    An interval fires at ``anchor + k * interval``; the anchor defaults to ``after``. The
    scheduler passes the stored anchor so that a restart does not move the cadence.
    """
    return list(islice(_fire_times(cron, interval_seconds, timezone, after, anchor), count))


def fire_times_between(
    *,
    cron: str | None,
    interval_seconds: int | None,
    timezone: str,
    start: datetime,
    end: datetime,
    anchor: datetime | None = None,
    limit: int = 1000,
) -> list[datetime]:
    """The fire times in ``(start, end]``, earliest first, at most ``limit`` of them."""
    times: list[datetime] = []
    for moment in _fire_times(cron, interval_seconds, timezone, start, anchor):
        if moment > end or len(times) >= limit:
            break
        times.append(moment)
    return times


def _interval_words(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    raise AssertionError("unreachable: every whole number is a number of seconds")


def describe(cron: str | None, interval_seconds: int | None) -> str:
    """The timing in words: ``At 00:00, only on Sunday`` or ``every 2 hours``."""
    if interval_seconds is not None:
        return _interval_words(interval_seconds)
    if cron is None:
        raise ValueError("give one of cron and interval_seconds")
    text = normalize_cron(cron)
    from cron_descriptor import ExpressionDescriptor, Options

    options = Options(locale_code="en_US", use_24hour_time_format=True)
    try:
        return str(ExpressionDescriptor(text, options).get_description())
    except Exception:  # words are a courtesy; the expression itself is valid
        return text
