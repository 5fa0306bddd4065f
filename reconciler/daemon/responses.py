"""The HTTP API's JSON bodies, as pydantic models: the OpenAPI document is generated from them.

``daemon.api`` builds them from ``store.listing`` rows. ``ScheduleResponse`` and
``ScheduleListResponse`` keep the original REST API's shapes (every ``cpi_schedules`` column,
the run statistics and ``project_name``) and add the reconciler's own fields; every error is an
``ErrorResponse`` with a one-line ``detail``, some with fields of their own.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reconciler.logs import MASK
from reconciler.store.listing import JobRow
from reconciler.store.schedules import ScheduleRecord

__all__ = [
    "ErrorResponse",
    "JobListResponse",
    "JobResponse",
    "ManagedInGit",
    "RunAccepted",
    "RunSkipped",
    "ScheduleListResponse",
    "ScheduleResponse",
]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScheduleResponse(_Body):
    """A schedule: the original API's ``ScheduleResponse`` and the reconciler's own fields."""

    id: str
    name: str
    project_id: str | None
    project_name: str | None
    schedule_type: str | None = Field(description="cron or interval")
    cron_expression: str | None
    interval_seconds: int | None
    timezone: str | None
    enabled: bool = Field(description="a NULL column reads as the original default, true")
    callback_url: str | None
    sftp_override: Any = Field(
        description="as stored, with ${VAR} references; a literal secret (a row the original "
        "API wrote) is shown as ***"
    )
    local_files: Any = Field(description="globs relative to the schedules folder, as stored")
    last_run_at: datetime | None
    next_run_at: datetime | None
    last_job_id: str | None
    total_runs: int
    successful_runs: int
    failed_runs: int
    created_at: datetime | None
    updated_at: datetime | None
    owner: str | None = Field(description="the reconciler owner id that manages the row")
    managed: bool = Field(description="whether this daemon's owner id manages the schedule")
    source_file: str | None = Field(description="the YAML file that declares the schedule")
    source_line: int | None = Field(description="the line of its document in that file")
    misfire_grace_seconds: int | None
    timeout_seconds: int | None = Field(description="how long a run may take; null: no limit")
    retries: int | None = Field(description="how often a failed run is tried again")
    retry_backoff_seconds: int | None = Field(
        description="the wait before the first retry, doubled for each later one (at most 1 h)"
    )
    last_status: str | None = Field(description="the status of the last job")

    @classmethod
    def of(cls, row: ScheduleRecord, *, owner: str) -> ScheduleResponse:
        """The row as a response; not validated again: the column types are the fields'."""
        return cls.model_construct(
            id=row.id, name=row.name, project_id=row.project_id, project_name=row.project,
            schedule_type=row.schedule_type, cron_expression=row.cron_expression,
            interval_seconds=row.interval_seconds, timezone=row.timezone,
            enabled=row.enabled is not False, callback_url=row.callback_url,
            sftp_override=_without_secrets(row.sftp_override), local_files=row.local_files,
            last_run_at=row.last_run_at, next_run_at=row.next_run_at,
            last_job_id=row.last_job_id, total_runs=row.total_runs or 0,
            successful_runs=row.successful_runs or 0, failed_runs=row.failed_runs or 0,
            created_at=row.created_at, updated_at=row.updated_at, owner=row.owner,
            managed=row.owner == owner, source_file=row.source_file,
            source_line=row.source_line, misfire_grace_seconds=row.misfire_grace_seconds,
            timeout_seconds=row.timeout_seconds, retries=row.retries,
            retry_backoff_seconds=row.retry_backoff_seconds,
            last_status=row.last_status,
        )  # fmt: skip


_SECRET_KEYS = ("password", "passphrase", "private_key")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def _without_secrets(value: Any) -> Any:
    """``value`` with every secret-looking field that is not a ``${VAR}`` reference masked:
    rows written by the original API may hold a literal password."""
    if isinstance(value, dict):
        return {
            k: MASK
            if any(word in str(k).lower() for word in _SECRET_KEYS)
            and isinstance(v, str)
            and not _REFERENCE.fullmatch(v)
            else _without_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


class ScheduleListResponse(_Body):
    """One page of schedules by name, as the original ``ScheduleListResponse``, and paging."""

    schedules: list[ScheduleResponse]
    total: int = Field(description="schedules matching the filters, on every page")
    limit: int
    offset: int


class JobResponse(_Body):
    """One run of a schedule (a ``cpi_jobs`` row)."""

    id: str
    schedule_id: str | None
    schedule_name: str | None
    project_id: str | None
    project_name: str | None
    trigger: str = Field(description="schedule or manual")
    status: str = Field(description="running, succeeded, failed, skipped, missed or abandoned")
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    rows_imported: int
    bytes_read: int
    files: Any = Field(description="per-file results of the files the run acted on")
    skipped_files: int = Field(description="files skipped unread as already imported (not listed)")
    error: str | None
    callback: Any = Field(description="the callback's delivery outcome")
    worker: str | None = Field(description="host:pid of the process that ran it")
    created_at: datetime | None

    @classmethod
    def of(cls, row: JobRow) -> JobResponse:
        """The row as a response; not validated again: the column types are the fields'."""
        return cls.model_construct(
            id=row.id, schedule_id=row.schedule_id, schedule_name=row.schedule_name,
            project_id=row.project_id, project_name=row.project_name, trigger=row.trigger,
            status=row.status, scheduled_for=row.scheduled_for, started_at=row.started_at,
            finished_at=row.finished_at, heartbeat_at=row.heartbeat_at,
            rows_imported=row.rows_imported, bytes_read=row.bytes_read, files=row.files,
            skipped_files=row.skipped_files, error=row.error, callback=row.callback,
            worker=row.worker, created_at=row.created_at,
        )  # fmt: skip


class JobListResponse(_Body):
    """One page of a schedule's runs, newest first."""

    schedule: str
    jobs: list[JobResponse]
    total: int
    limit: int
    offset: int


class RunAccepted(_Body):
    """A manual run recorded and handed to the daemon's workers; follow ``job_url``."""

    job_id: str
    schedule: str
    status: str = Field(description="running")
    trigger: str = Field(description="manual")
    started_at: datetime | None
    job_url: str


class ErrorResponse(_Body):
    """Every error: what went wrong and what to do, in one line."""

    detail: str


class RunSkipped(_Body):
    """A manual run that overlapped a live run: recorded ``skipped``, as the scheduler would."""

    detail: str
    job_id: str
    schedule: str
    status: str = Field(description="skipped")


class ManagedInGit(_Body):
    """A write the reconciler refuses: the change belongs in a YAML document in Git."""

    detail: str
    schedule: str | None = None
    owner: str | None = None
    source_file: str | None = None
    source_line: int | None = None
