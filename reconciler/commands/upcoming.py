"""``reconcile next NAME``: the next fire times of one schedule, read from the folder offline.

``reconciler.cli`` calls ``next_runs``. It reads the clock here, in the shell, and hands ``now``
to the pure ``model.timing``; it touches no database, so it imports neither psycopg nor
APScheduler. An interval's cadence is anchored in the database, which this command does not
read: it counts from now and says so. Times end with year 9999 (``datetime``'s last): fewer runs
than asked for are shown as they are, with a line saying why.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from reconciler.commands.arguments import NextArguments
from reconciler.errors import EXIT_OK, InvalidDocuments, NotFound, UsageError
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.model.loading import LoadedDocument
    from reconciler.model.specs import ScheduleDocument

__all__ = ["MAX_COUNT", "next_runs"]

MAX_COUNT = 1000


def next_runs(arguments: NextArguments, settings: Settings) -> int:
    """Print the next ``arguments.count`` fire times of the schedule ``arguments.name``."""
    from reconciler.model import timing
    from reconciler.reading import load_folder

    count = arguments.count
    if not 1 <= count <= MAX_COUNT:
        shown = str(count) if abs(count) < 10**20 else "a number that large"
        raise UsageError(f"--count must be between 1 and {MAX_COUNT}, not {shown}")
    loaded = load_folder(settings.schedules_dir)
    if not loaded.ok:
        raise InvalidDocuments(loaded.findings)
    found = _find(loaded.documents, arguments.name)
    if found is None:
        raise NotFound("schedule", arguments.name, settings.schedules_dir.as_posix())
    item, document = found
    spec = document.spec
    now = datetime.now(UTC).replace(microsecond=0)
    runs = timing.next_fire_times(
        cron=spec.cron,
        interval_seconds=spec.interval,
        timezone=spec.timezone,
        after=now,
        count=count,
    )
    description = timing.describe(spec.cron, spec.interval)
    zone = ZoneInfo(spec.timezone)
    runs = _representable(runs, zone)
    if settings.output == "json":
        from reconciler.commands.output import emit_json

        emit_json(
            "NextRuns",
            {
                "name": document.metadata.name,
                "source": f"{item.source}:{item.line}",
                "cron": spec.cron,
                "interval_seconds": spec.interval,
                "timezone": spec.timezone,
                "description": description,
                "enabled": spec.enabled,
                "now": now.isoformat(),
                "runs": [
                    {"local": run.astimezone(zone).isoformat(), "utc": run.isoformat()}
                    for run in runs
                ],
            },
        )
        return EXIT_OK
    sys.stdout.write(_text(document, description, runs, zone, count=count, color=settings.color))
    return EXIT_OK


def _representable(runs: list[datetime], zone: ZoneInfo) -> list[datetime]:
    """The runs whose local time exists: near the end of 9999, UTC+14 is already year 10000."""
    for index, run in enumerate(runs):
        try:
            run.astimezone(zone)
        except OverflowError:
            return runs[:index]
    return runs


def _find(
    documents: tuple[LoadedDocument, ...], name: str
) -> tuple[LoadedDocument, ScheduleDocument] | None:
    from reconciler.model.specs import ScheduleDocument

    for item in documents:
        document = item.document
        if isinstance(document, ScheduleDocument) and document.metadata.name == name:
            return item, document
    return None


def _text(
    document: ScheduleDocument,
    description: str,
    runs: list[datetime],
    zone: ZoneInfo,
    *,
    count: int,
    color: bool,
) -> str:
    from reconciler.commands.output import paint

    spec = document.spec
    timing_text = spec.cron if spec.cron is not None else f"interval {spec.interval}s"
    title = paint(document.metadata.name, "bold", enabled=color)
    lines = [f"{title}  {timing_text}  ({description}) {spec.timezone}"]
    if not spec.enabled:
        lines.append(
            paint("  disabled: it would run at these times once enabled", "yellow", enabled=color)
        )
    if spec.interval is not None:
        lines.append(
            paint(
                "  counted from now; the daemon keeps the cadence stored in the database",
                "dim",
                enabled=color,
            )
        )
    clock = "%Y-%m-%d %H:%M" if all(run.second == 0 for run in runs) else "%Y-%m-%d %H:%M:%S"
    for run in runs:
        local = run.astimezone(zone)
        lines.append(f"  {_local(local, clock)}   {run:{clock}} UTC")
    if len(runs) < count:
        lines.append(paint("  no further runs before the end of year 9999", "dim", enabled=color))
    return "\n".join(lines) + "\n"


def _local(moment: datetime, clock: str) -> str:
    offset = moment.strftime("%z")
    offset = f"{offset[:3]}:{offset[3:]}"
    name = moment.tzname() or ""
    # Zones without an abbreviation report the offset as their name ('+0330'): say it once.
    label = f"{name} ({offset})" if name and name[0] not in "+-" else f"({offset})"
    return f"{moment:{clock}} {label}"
