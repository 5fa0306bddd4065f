"""What a run produced: one ``FileResult`` per file and one ``JobResult`` per run.

``imports.runs.running`` builds them, ``store.jobs`` stores them in ``cpi_jobs``, the callback and
``reconcile run --output json`` send ``JobResult.to_json()``. Plain frozen values, no I/O.

A run holds one result per listed file; a job's document (the row, the callback, the JSON
output, the HTTP API) lists only the files the run acted on and counts the rest, the files
skipped unread as already imported (``fold``): a drop folder of a day's files would otherwise
repeat every one of them in every job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

__all__ = ["ALREADY_IMPORTED", "FileResult", "FileStatus", "JobResult", "JobStatus", "fold"]

JobStatus = Literal["running", "succeeded", "failed", "skipped", "missed", "abandoned"]
# imported: committed; skipped: listed as an earlier run saw it (not read); unchanged: read, but
# its bytes were loaded into the project before (rolled back); waiting: not complete yet (not
# settled, no ready marker), a later run takes it; failed: the file's own transaction rolled back;
# rolled_back: loaded fine but undone because a replace run failed.
FileStatus = Literal["imported", "skipped", "unchanged", "waiting", "failed", "rolled_back"]
# The note of a file skipped unread because an earlier run saw it: counted, not listed.
ALREADY_IMPORTED = "already imported"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome of one file of a run, as stored in ``cpi_jobs.files``."""

    path: str
    size: int
    mtime: datetime
    status: FileStatus
    rows: int = 0
    bytes: int = 0
    error: str | None = None
    line: int | None = None
    column: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in ``cpi_jobs.files`` and sent to callbacks."""
        return {
            "path": self.path,
            "size": self.size,
            "mtime": _iso(self.mtime),
            "status": self.status,
            "rows": self.rows,
            "bytes": self.bytes,
            "error": self.error,
            "line": self.line,
            "column": self.column,
            "note": self.note,
        }

    def undone(self, reason: str) -> FileResult:
        """This file, loaded but rolled back with the rest of its replace run."""
        return replace(self, status="rolled_back", rows=0, note=reason)

    @property
    def unread(self) -> bool:
        """Skipped unread as already imported, and nothing else happened to it (an after-import
        action that failed replaces the note, so such a file stays listed)."""
        return self.status == "skipped" and self.note == ALREADY_IMPORTED


def fold(files: Iterable[FileResult]) -> tuple[tuple[FileResult, ...], int]:
    """The files a run acted on, in order, and how many it skipped unread as already imported."""
    listed = tuple(files)
    acted = tuple(f for f in listed if not f.unread)
    return acted, len(listed) - len(acted)


@dataclass(frozen=True, slots=True)
class JobResult:
    """One run of a schedule: its final status, totals, per-file results and callback outcome."""

    job_id: str | None
    schedule: str
    project: str | None
    status: JobStatus
    trigger: str
    rows_imported: int = 0
    bytes_read: int = 0
    files: tuple[FileResult, ...] = ()  # one per listed file; its document folds them (``fold``)
    error: str | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    callback: dict[str, Any] | None = field(default=None, compare=False)
    # False when another replica had claimed this scheduled occurrence: the job is theirs.
    claimed: bool = field(default=True, compare=False)

    @property
    def failed_files(self) -> tuple[FileResult, ...]:
        return tuple(f for f in self.files if f.status == "failed")

    def payload(self) -> dict[str, Any]:
        """The callback body: the job without the callback's own outcome; ``files`` lists the
        files the run acted on, ``skipped_files`` counts those skipped unread (``fold``)."""
        acted, skipped = fold(self.files)
        return {
            "job_id": self.job_id,
            "schedule": self.schedule,
            "project": self.project,
            "status": self.status,
            "trigger": self.trigger,
            "rows_imported": self.rows_imported,
            "bytes_read": self.bytes_read,
            "files": [f.to_json() for f in acted],
            "skipped_files": skipped,
            "error": self.error,
            "scheduled_for": _iso(self.scheduled_for),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }

    def to_json(self) -> dict[str, Any]:
        """The ``JobResult`` document of ``reconcile run --output json``."""
        return {**self.payload(), "callback": self.callback}
