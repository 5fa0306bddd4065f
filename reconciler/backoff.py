"""The one rule for waiting between attempts to reach something that did not answer.

Every loop that reconnects (the timer's claim and sync sessions, the leader's campaign, the wait
for the database at start, a run waiting out an outage) takes its delays from a ``Backoff``: the
first retry after ``first`` seconds, each next one twice as long, never more than ``last``, and
back to ``first`` once an attempt succeeds.
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Doubling delays between ``first`` and ``last`` seconds."""

    def __init__(self, first: float = 0.5, last: float = 10.0) -> None:
        self._first, self._last = first, last
        self._delay = first

    def next(self) -> float:
        """The delay before the next attempt (the one after it doubles)."""
        delay = self._delay
        self._delay = min(delay * 2, self._last)
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits ``first`` again."""
        self._delay = self._first
