"""``reconcile status``: the schedules in the database, their timing, owner, last and next run,
and the state ``reconcile serve`` keeps there (who leads, the last apply, the current config error).
A summary line counts every schedule by state; ``--project`` and ``--failing`` (``select``) narrow
the table, never the counts, so a thousand schedules read as one line and a short list.

Called by ``commands.reconciling.status``; reads the rows through ``store.schedules`` (one
query). The next run is the one the daemon stored; a schedule no daemon has scheduled yet shows
the one the scheduler will compute (from the anchor apply stored, so it does not move).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reconciler.errors import NotFound
from reconciler.model.timing import describe, next_fire_times
from reconciler.store.daemon_state import DaemonState
from reconciler.store.schedules import fetch_schedules

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "FAILING",
    "STATES",
    "StatusEntry",
    "daemon_document",
    "fetch_status",
    "render_daemon",
    "render_status",
    "render_summary",
    "select",
    "tally",
]

# A schedule's state: its last run's result; "never run" before one, "disabled" above all else.
STATES = (
    "succeeded",
    "failed",
    "abandoned",
    "missed",
    "skipped",
    "running",
    "never run",
    "disabled",
)
# The last runs that imported nothing they should have: what --failing lists.
FAILING = frozenset({"failed", "abandoned"})


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """One schedule as stored; ``local_files`` are relative to the schedules folder."""

    name: str
    project: str | None
    timing: str
    timezone: str
    enabled: bool
    owner: str | None
    last_run_at: datetime | None
    last_result: str | None
    next_run_at: datetime | None
    source: str | None
    local_files: Any = None  # JSON as stored: a list of globs unless edited by hand

    @property
    def state(self) -> str:
        """One of ``STATES``: disabled, the last run's result, or never run."""
        if not self.enabled:
            return "disabled"
        return self.last_result or "never run"

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("last_run_at", "next_run_at"):
            doc[key] = doc[key].isoformat() if doc[key] else None
        return doc


def _next(
    cron: str | None, interval: int | None, tz: str, anchor: datetime | None, now: datetime
) -> datetime | None:
    try:
        times = next_fire_times(
            cron=cron, interval_seconds=interval, timezone=tz, after=now, count=1, anchor=anchor
        )
    except ValueError:  # a row written by hand with an expression we cannot read
        return None
    return times[0] if times else None


def fetch_status(
    conn: psycopg.Connection[Any], *, name: str | None, now: datetime
) -> list[StatusEntry]:
    """One entry per schedule (or the one named), sorted by name."""
    entries = []
    for row in fetch_schedules(conn, name=name):
        cron, interval, tz = row.cron_expression, row.interval_seconds, row.timezone or "UTC"
        kind = row.schedule_type
        timing = cron if kind == "cron" else describe(None, interval) if interval else None
        entries.append(
            StatusEntry(
                name=row.name,
                project=row.project,
                timing=timing or "?",
                timezone=tz,
                enabled=bool(row.enabled),
                owner=row.owner,
                last_run_at=row.last_run_at,
                last_result=row.last_status,
                next_run_at=(row.next_run_at or _next(cron, interval, tz, row.interval_anchor, now))
                if row.enabled
                else None,
                source=f"{row.source_file}:{row.source_line}" if row.source_file else None,
                local_files=row.local_files,
            )
        )
    if name is not None and not entries:
        raise NotFound("schedule", name, "the database (run `reconcile apply` first?)")
    return entries


def select(
    entries: Iterable[StatusEntry], *, project: str | None = None, failing: bool = False
) -> list[StatusEntry]:
    """The entries of ``project`` (if given) whose last run failed (if ``failing``), in order."""
    return [
        e
        for e in entries
        if (project is None or e.project == project) and (not failing or e.state in FAILING)
    ]


def tally(entries: Iterable[StatusEntry]) -> dict[str, int]:
    """How many entries are in each state, in the order of ``STATES`` (others after), no zeros."""
    counts = Counter(e.state for e in entries)
    order = [*STATES, *sorted(set(counts) - set(STATES))]  # a status written by another program
    return {state: counts[state] for state in order if counts[state]}


def render_summary(total: int, states: dict[str, int], listed: int | None = None) -> str:
    """``1,000 schedules: 990 succeeded, 10 failed``, and ``; 10 listed`` under a filter."""
    noun = "schedule" if total == 1 else "schedules"
    counts = ", ".join(f"{count:,} {state}" for state, count in states.items())
    line = f"{total:,} {noun}" + (f": {counts}" if counts else "")
    return line if listed is None else f"{line}; {listed:,} listed"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def render_status(entries: list[StatusEntry], *, filtered: bool = False) -> str:
    """A table, one line per schedule."""
    if not entries:
        return "No schedule matches." if filtered else "No schedules in the database."
    header = (
        "NAME",
        "PROJECT",
        "TIMING",
        "TIMEZONE",
        "ENABLED",
        "OWNER",
        "LAST RUN",
        "RESULT",
        "NEXT RUN",
    )
    rows = [header] + [
        (
            e.name,
            e.project or "-",
            e.timing,
            e.timezone,
            "yes" if e.enabled else "no",
            e.owner or "-",
            _when(e.last_run_at),
            e.last_result or "-",
            _when(e.next_run_at),
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    return f"{_when(moment)} ({seconds} s ago)" if seconds < 3600 else _when(moment)


def render_daemon(state: DaemonState | None, owner: str, now: datetime) -> str:
    """The daemon's lines under the table: leader, last apply, and the config error if any."""
    if state is None:
        return f"daemon (owner {owner}): has never run; start it with `reconcile serve`"
    lines = [
        f"daemon (owner {owner}): leader {state.leader or '-'}, last seen "
        f"{_ago(state.leader_seen_at, now)}",
        f"  folder last applied {_ago(state.applied_at, now)}, "
        f"last read {_ago(state.loaded_at, now)}",
    ]
    if state.config_error:
        lines.append(
            f"  config error since {_when(state.config_error_at)} (the last applied state "
            "keeps running):"
        )
        lines += [f"    {line}" for line in state.config_error.splitlines()]
    return "\n".join(lines)


def daemon_document(state: DaemonState | None) -> dict[str, Any] | None:
    """The daemon's state for ``--output json``; ``None`` if no daemon has run for the owner."""
    if state is None:
        return None
    doc = asdict(state)
    for key, value in doc.items():
        if isinstance(value, datetime):
            doc[key] = value.isoformat()
    return doc
