"""Cron and interval arithmetic: parsing, normalising, describing and fire times.

Pure: no clock, no I/O; callers pass ``now``. Used by ``model.specs`` (validation), ``reconcile
next`` and the scheduler.
"""

from __future__ import annotations

__all__ = ["normalize_cron"]


def normalize_cron(expression: str) -> str:
    """The canonical spelling of a cron expression; ``ValueError`` with a helpful message if bad."""
    return " ".join(expression.split())
