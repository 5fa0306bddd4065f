"""What a run produced: one ``FileResult`` per file and one ``JobResult`` per run.

``imports.runs.running`` builds them, ``store.jobs`` stores them in ``cpi_jobs``, the callback and
``reconcile run --output json`` send ``JobResult.to_json()``. Plain frozen values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

__all__ = ["FileResult", "FileStatus", "JobResult", "JobStatus"]

JobStatus = Literal["running", "succeeded", "failed", "skipped", "missed", "abandoned"]
# imported: committed; skipped: listed as an earlier run saw it (not read); unchanged: read, but
# its bytes were loaded into the project before (rolled back); waiting: not complete yet (not
# settled, no ready marker), a later run takes it; failed: the file's own transaction rolled back;
# rolled_back: loaded fine but undone because a replace run failed.
FileStatus = Literal["imported", "skipped", "unchanged", "waiting", "failed", "rolled_back"]


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
    files: tuple[FileResult, ...] = ()
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
        """The callback body: the job without the callback's own outcome."""
        return {
            "job_id": self.job_id,
            "schedule": self.schedule,
            "project": self.project,
            "status": self.status,
            "trigger": self.trigger,
            "rows_imported": self.rows_imported,
            "bytes_read": self.bytes_read,
            "files": [f.to_json() for f in self.files],
            "error": self.error,
            "scheduled_for": _iso(self.scheduled_for),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }

    def to_json(self) -> dict[str, Any]:
        """The ``JobResult`` document of ``reconcile run --output json``."""
        return {**self.payload(), "callback": self.callback}
