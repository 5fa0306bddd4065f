"""``reconcile run NAME`` and ``reconcile history NAME``: run an import now, list past runs.

``run`` runs in the calling process through ``imports.runs.running.run_schedule`` (the same code the
daemon uses), shows progress on stderr when it is a terminal, prints a summary and exits 0 when
the job succeeded, 1 when it failed or was skipped. File names, schedule names and errors (a
server's or PostgreSQL's words) are printed through ``escaping.terminal``, errors ``capped``.
SIGTERM during ``run`` raises ``Terminated``: the job is recorded failed and its files roll back,
as with Ctrl-C and as ``serve`` does at shutdown.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from datetime import datetime
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from reconciler.commands.arguments import HistoryArguments, RunArguments
from reconciler.commands.output import emit_json, paint
from reconciler.errors import EXIT_ERROR, EXIT_OK, Terminated
from reconciler.escaping import capped, terminal
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.imports.engine.importing import Progress
    from reconciler.model.results import FileResult, JobResult

__all__ = ["history", "run"]

_STATUS_COLOR = {
    "succeeded": "green", "imported": "green", "failed": "red", "abandoned": "red",
    "skipped": "yellow", "missed": "yellow", "rolled_back": "yellow", "unchanged": "yellow",
    "waiting": "yellow", "running": "bold",
}  # fmt: skip


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


class _Bar:
    """One self-overwriting progress line on a terminal; silent elsewhere (logs tell the story)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._shown = False

    def __call__(self, p: Progress) -> None:
        rate = p.bytes_read / p.elapsed if p.elapsed > 0 else 0.0
        total = f" / {_size(p.bytes_total)}" if p.bytes_total else ""
        line = (
            f"file {min(p.files_done + 1, p.files_total)} of {p.files_total} "
            f"{terminal(p.current)}  "
            f"{_size(p.bytes_read)}{total}  ~{p.rows:,} rows  {_size(rate)}/s"
        )
        width = shutil.get_terminal_size().columns - 1
        with self._lock:
            self._stream.write("\r" + line[:width].ljust(width))
            self._stream.flush()
            self._shown = True

    def close(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
                self._stream.flush()


def _file_line(f: FileResult, color: bool) -> str:
    status = paint(f"{f.status:<11}", _STATUS_COLOR.get(f.status, "bold"), enabled=color)
    name = terminal(PurePosixPath(f.path).name)
    if f.status == "imported":
        detail = f"{f.rows:,} rows  {_size(f.bytes)}" + (f"  ({_text(f.note)})" if f.note else "")
    elif f.status == "failed":
        detail = (f"line {f.line}: " if f.line else "") + _text(f.error)
    else:
        detail = _text(f.note)
    return f"  {status} {name}  {detail}".rstrip()


def _text(value: object) -> str:
    """A stored or received text (an error, a note) fit for one line of a terminal."""
    return terminal(capped(str(value))) if value else ""


def _summary(result: JobResult, color: bool) -> str:
    from reconciler.model.results import fold

    status = paint(result.status, _STATUS_COLOR.get(result.status, "bold"), enabled=color)
    seconds = (
        (result.finished_at - result.started_at).total_seconds()
        if result.finished_at and result.started_at
        else 0.0
    )
    acted, unread = fold(result.files)  # as the job's document: those skipped unread counted
    already = f" ({unread:,} already imported, not read)" if unread else ""
    head = (
        f"{terminal(result.schedule)}: {status} in {seconds:.1f} s: {len(acted)} file(s){already}, "
        f"{result.rows_imported:,} rows, {_size(result.bytes_read)} (job {result.job_id})"
    )
    lines = [head, *(_file_line(f, color) for f in acted)]
    if result.callback is not None:
        cb = result.callback
        state = "delivered" if cb.get("delivered") else f"failed ({_text(cb.get('error'))})"
        lines.append(f"  callback {state} after {cb.get('attempts')} attempt(s)")
    return "\n".join(lines)


def run(arguments: RunArguments, settings: Settings) -> int:
    """Run one import of schedule NAME now, in this process."""
    from reconciler.imports.runs.running import run_schedule

    bar = _Bar(sys.stderr) if settings.output == "text" and sys.stderr.isatty() else None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_schedule(arguments.name, settings=settings, trigger="manual", progress=bar)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    if settings.output == "json":
        emit_json("JobResult", result.to_json())
    else:
        sys.stdout.write(_summary(result, settings.color) + "\n")
        if result.error:
            print(f"error: {_text(result.error)}", file=sys.stderr)
    return EXIT_OK if result.status == "succeeded" else EXIT_ERROR


def _interrupt(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def _duration(job: dict[str, Any]) -> str:
    if job["started_at"] and job["finished_at"]:
        return f"{(job['finished_at'] - job['started_at']).total_seconds():.1f}s"
    return "-"


def _trigger(job: dict[str, Any]) -> str:
    """What started the run: ``schedule``, ``manual``, or ``retry N`` for the Nth try of an
    occurrence whose earlier tries failed."""
    attempt: int = job["attempt"]
    return f"retry {attempt}" if attempt > 1 else _text(job["trigger"])


def history(arguments: HistoryArguments, settings: Settings) -> int:
    """List a schedule's runs, newest first (kept after the schedule is deleted): when each
    started, how it ended, what triggered it, and when its occurrence was due (``DUE``, ``-``
    for a manual run)."""
    from reconciler.store.connecting import open_store
    from reconciler.store.history import job_history

    with open_store(settings) as conn:
        jobs = job_history(conn, arguments.name, limit=arguments.limit)
    if settings.output == "json":
        emit_json("JobHistory", {"schedule": arguments.name, "jobs": jobs})
        return EXIT_OK
    if not jobs:
        sys.stdout.write(f"{terminal(arguments.name)}: no runs yet\n")
        return EXIT_OK
    header = (
        f"{'STARTED':<24} {'STATUS':<10} {'TRIGGER':<9} {'DURATION':>9} {'ROWS':>12} FILES "
        f"{'DUE':<23} ERROR"
    )
    lines = [paint(header, "bold", enabled=settings.color)]
    for job in jobs:
        shown = f"{_text(job['status']):<10}"
        status = paint(shown, _STATUS_COLOR.get(job["status"], "bold"), enabled=settings.color)
        lines.append(
            f"{_when(job['started_at']):<24} {status} {_trigger(job):<9} "
            f"{_duration(job):>9} {job['rows_imported']:>12,} {len(job['files']):>5} "
            f"{_when(job['scheduled_for']):<23} {_text(job['error'])}".rstrip()
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
