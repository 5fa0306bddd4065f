"""Durations as documents write them (``300``, ``"90s"``, ``"1h30m"``), and a run's time limits.

``model.specs`` builds its duration fields from ``Seconds`` (``interval``, ``misfire_grace``,
``delivery.settle``) and from the limits here: ``timeout`` (how long a run may take) and
``retry_backoff`` (the wait before the first retry). ``retry_delay`` is the one rule for how long
a failed run waits before each retry, for the scheduler that runs them. Pure: a duration is read
in time linear in its text, whatever the text, and always fits PostgreSQL's ``integer``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from reconciler.model.scalars import excerpt

__all__ = [
    "DURATION_TEXT",
    "INT4_MAX",
    "RETRIES_MAX",
    "RETRY_BACKOFF_DEFAULT",
    "RETRY_DELAY_MAX",
    "RetryBackoff",
    "Seconds",
    "Timeout",
    "parse_duration",
    "retry_delay",
]

INT4_MAX = 2_147_483_647  # PostgreSQL integer: interval_seconds, misfire_grace_seconds, ...
RETRIES_MAX = 10  # retries a schedule may ask for (Kubernetes' backoffLimit defaults to 6)
RETRY_BACKOFF_DEFAULT = 30  # seconds before the first retry
RETRY_DELAY_MAX = 3600  # no retry waits longer than an hour, however many came before
# Whole seconds, or number-unit pairs; unambiguous, so a failed match is linear in the text.
_DURATION = re.compile(r"[0-9]+|(?:[0-9]+[dhms])+")
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
# Far longer than any duration needs ('24855d3h14m7s' is 13); checked before any pattern runs.
_DURATION_MAX = 64
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_DIGITS = len(str(INT4_MAX))  # more (leading zeros aside) is out of range in any unit
# The same spelling for JSON Schema (editors, CI linters): no part of 11 digits fits.
DURATION_TEXT = r"\s*(?:0*[0-9]{1,10}|(?:0*[0-9]{1,10}[dhmsDHMS])+)\s*"


def parse_duration(value: object) -> int:
    """Whole seconds from ``3600``, ``"90s"``, ``"2h"``, ``"1h30m"`` or ``"1d"``.

    At most ``INT4_MAX`` (about 68 years): the database stores durations as ``integer``.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '2h' or '300s'")
    too_long = f"a duration must be at most {INT4_MAX} seconds (about 68 years)"
    if isinstance(value, int):
        seconds = value
        if seconds > INT4_MAX:
            raise ValueError(f"{too_long}, got {seconds}")
    elif isinstance(value, str):
        if len(value) > _DURATION_MAX:
            raise ValueError(
                f"{excerpt(value)} is not a duration: it is {len(value)} characters long, and a "
                f"duration takes at most {_DURATION_MAX}; write one such as '2h' or '1h30m'"
            )
        text = value.strip().lower()
        if not _DURATION.fullmatch(text):
            raise ValueError(
                f"{excerpt(value)} is not a duration: write whole seconds or units d, h, m, s "
                "such as '2h', '90m' or '1h30m'"
            )
        parts = [(text, "s")] if text.isdigit() else _DURATION_PART.findall(text)
        # Bounded before int(): leading zeros aside, more digits are out of range in any unit.
        if any(len(n.lstrip("0")) > _DURATION_DIGITS for n, _ in parts):
            raise ValueError(f"{too_long}, got {excerpt(value)}")
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
        if seconds > INT4_MAX:
            raise ValueError(f"{too_long}, got {excerpt(value)}")
    else:
        raise ValueError("a duration is a number of seconds or a string like '2h' or '300s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


# The JSON Schema shows what users may write ("2h" or 7200), not the whole seconds it becomes.
_DURATION_INPUT = (
    Annotated[int, Field(ge=0, le=INT4_MAX)]
    | Annotated[str, Field(pattern=r"^\s*([0-9]+|([0-9]+[dhmsDHMS])+)\s*$")]
)
Seconds = Annotated[int, BeforeValidator(parse_duration, json_schema_input_type=_DURATION_INPUT)]


def _timeout(seconds: int) -> int:
    """A rule of the field itself, so it is located there and reported with the others."""
    if seconds < 1:
        raise ValueError(
            "a timeout of 0 s would stop every run as it starts: give at least 1s, "
            "or leave timeout out for no limit"
        )
    return seconds


def _backoff(seconds: int) -> int:
    if seconds < 1:
        raise ValueError(
            "a backoff of 0 s would retry at once, while what failed most likely still fails: "
            "give at least 1s"
        )
    if seconds > RETRY_DELAY_MAX:
        raise ValueError(
            f"a backoff of {seconds} s is longer than any retry waits ({RETRY_DELAY_MAX} s, 1h): "
            "it is the wait before the first retry, doubled for each later one up to 1h"
        )
    return seconds


Timeout = Annotated[Seconds, AfterValidator(_timeout)]
RetryBackoff = Annotated[Seconds, AfterValidator(_backoff)]


def retry_delay(attempt: int, backoff_seconds: int) -> int:
    """Seconds a failed run waits before attempt ``attempt`` (``cpi_jobs.attempt``: 1 is the
    scheduled run itself, so 2 is the first retry): ``backoff_seconds`` before the first retry,
    twice as long before each later one, at most ``RETRY_DELAY_MAX``.

    With the default 30 s: 30, 60, 120, 240, 480, 960, 1920, then 3600 for the rest. A backoff
    under 1 s (a row edited by hand) counts as 1 s.
    """
    if attempt < 2:
        raise ValueError(f"attempt {attempt} is not a retry: the first retry is attempt 2")
    # 2**12 s is past the cap already: a larger exponent (a row edited by hand) changes nothing.
    return min(max(backoff_seconds, 1) << min(attempt - 2, 12), RETRY_DELAY_MAX)
