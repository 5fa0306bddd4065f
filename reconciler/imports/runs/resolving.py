"""From a schedule's name to what one run needs: its rows, its source and its target database.

``imports.runs.running`` calls ``load_import`` (the ``cpi_schedules`` and ``cpi_projects`` rows as
the apply left them, read by ``store.schedules``), then ``open_source`` and ``target_url`` once the
job row exists, so that an unreachable SFTP server or an unset ``${VAR}`` is recorded on the job
rather than lost. A row edited by hand into something the documents cannot say is a ``TargetError``
naming the row.

A schedule with a ``timeout`` runs with a ``Deadline``: past it, the source opens no more files and
a file being read stops at its next block, which aborts its COPY, so its transaction rolls back
and the import ledger never records it. ``Deadline.on_cut`` tells the run's other parts when it
passes (``transferring`` cancels what the target database is doing then). The scheduler reads
``retries`` and ``retry_backoff_seconds`` from the same ``ImportSpec``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.errors import NotFound, SourceError, TargetError
from reconciler.imports import sources
from reconciler.logs import get_logger
from reconciler.model.durations import RETRIES_MAX, RETRY_BACKOFF_DEFAULT, RETRY_DELAY_MAX
from reconciler.model.files import LocalFiles, merge_sftp
from reconciler.model.specs import ProjectSpec, SftpOverride, Target
from reconciler.store.jobs import ScheduleRef
from reconciler.store.schedules import ScheduleRecord, fetch_schedule

if TYPE_CHECKING:
    from datetime import datetime

    import psycopg

    from reconciler.model.files import Opened, Source, SourceFile
    from reconciler.settings import Settings

__all__ = ["Deadline", "ImportSpec", "load_import", "open_source", "target_url"]

_log = get_logger("reconciler.imports")
_M = TypeVar("_M", bound=BaseModel)
_AGAIN = 0.5  # seconds between a deadline's callbacks once it has passed
_ROLLED_BACK = "its transaction was rolled back; the next run loads it whole"


class Deadline:
    """When a run must have ended: its schedule's ``timeout``, counted from the run's start.

    Shared by the run's threads: ``check`` raises ``SourceError`` once it has passed, ``stop``
    is the error of any work it stopped (the file being loaded then fails and rolls back), and
    ``cut`` tells whether it ever stopped any. ``on_cut`` calls back when it passes.
    """

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds
        self._cut = threading.Event()

    @property
    def reason(self) -> str:
        return f"timed out after {self.seconds} s (the schedule's timeout)"

    @property
    def cut(self) -> bool:
        """Whether the deadline stopped work: a file being read or loaded, or one not opened."""
        return self._cut.is_set()

    def stop(self, then: str) -> SourceError:
        """The error of work the deadline stopped (the reason, then ``then``); it is now cut."""
        self._cut.set()
        return SourceError(f"{self.reason}: {then}")

    def rolled_back(self) -> SourceError:
        """The error of a file the deadline stopped while it was loading."""
        return self.stop(_ROLLED_BACK)

    def check(self, then: str) -> None:
        """``stop(then)`` raised once the deadline has passed."""
        if time.monotonic() >= self._at:
            raise self.stop(then)

    @contextmanager
    def on_cut(self, callback: Callable[[], None], *, every: float = _AGAIN) -> Iterator[None]:
        """Within the block, call ``callback`` in a thread of its own once the deadline passes,
        then again every ``every`` seconds until the block ends: what started just as the
        first call came is reached by the next. Leaving the block waits for a call under way
        (``callback`` bounds its own waits)."""
        done = threading.Event()

        def calls() -> None:
            wait = self._at - time.monotonic()
            while not done.wait(max(wait, 0.0)):
                try:
                    callback()
                except Exception as exc:  # a bug in the callback must not end the thread unseen
                    _log.error("deadline callback failed", error=f"{type(exc).__name__}: {exc}")
                wait = every

        thread = threading.Thread(target=calls, name="deadline", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """A schedule row and its project's spec, parsed back into the document models.

    ``local_files`` are relative to the schedules folder, as apply stores them.
    ``timeout_seconds`` (None: no limit), ``retries`` and ``retry_backoff_seconds`` are the
    schedule's columns of those names; ``deadline`` is set by the run that uses the spec.
    """

    schedule: ScheduleRef
    project_spec: ProjectSpec | None
    enabled: bool
    callback_url: str | None
    sftp_override: SftpOverride | None
    local_files: tuple[str, ...] | None
    source_file: str | None
    timeout_seconds: int | None = None
    retries: int = 0
    retry_backoff_seconds: int = RETRY_BACKOFF_DEFAULT
    deadline: Deadline | None = field(default=None, compare=False)

    @property
    def target(self) -> Target:
        """The project's target; ``TargetError`` for a project reconcile cannot import into."""
        spec = self.project_spec
        if spec is None or spec.target is None:
            raise TargetError(
                f"project {self.schedule.project!r} is managed elsewhere (no target declared "
                "here); declare it as a Project with a target to import with reconcile"
            )
        return spec.target


def load_import(conn: psycopg.Connection[Any], name: str) -> ImportSpec:
    """The schedule ``name`` and its project; ``NotFound`` if the schedule is not in the DB."""
    row = fetch_schedule(conn, name)
    conn.rollback()
    if row is None:
        raise NotFound("schedule", name, "the database; run `reconcile apply` first")
    schedule = f"schedule {row.name!r}: its row in cpi_schedules"
    local = row.local_files
    if local is not None and not (
        isinstance(local, list) and local and all(isinstance(g, str) and g for g in local)
    ):
        raise _invalid(schedule, "local_files: not a list of globs")
    return ImportSpec(
        schedule=row.ref,
        project_spec=_parsed(
            ProjectSpec,
            row.project_spec,
            f"project {row.project!r}: its row in cpi_projects",
            field="spec",
        ),
        enabled=row.enabled is not False,  # NULL, as in the seed's default: enabled
        callback_url=row.callback_url,
        sftp_override=_parsed(SftpOverride, row.sftp_override, schedule, field="sftp_override"),
        local_files=tuple(local) if local else None,
        source_file=row.source_file,
        **_limits(row, schedule),
    )


def _limits(row: ScheduleRecord, schedule: str) -> dict[str, Any]:
    """The row's timeout and retries, checked as the documents check them."""
    timeout, retries, backoff = row.timeout_seconds, row.retries, row.retry_backoff_seconds
    problems = []
    if timeout is not None and timeout < 1:
        problems.append(f"timeout_seconds: {timeout} is not a limit (at least 1, or NULL)")
    if retries is None or not 0 <= retries <= RETRIES_MAX:
        problems.append(f"retries: {retries} is not from 0 to {RETRIES_MAX}")
    if backoff is None or not 1 <= backoff <= RETRY_DELAY_MAX:
        problems.append(f"retry_backoff_seconds: {backoff} is not from 1 to {RETRY_DELAY_MAX}")
    if problems:
        raise _invalid(schedule, "; ".join(problems))
    return {"timeout_seconds": timeout, "retries": retries, "retry_backoff_seconds": backoff}


def _parsed(model: type[_M], value: Any, row: str, *, field: str) -> _M | None:
    """``value`` (the column ``field``) as ``model``; ``TargetError`` naming ``row`` if invalid."""
    if not value:
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join((field, *(str(p) for p in err["loc"])))
            + ": "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise _invalid(row, problems) from exc


def _invalid(row: str, problems: str) -> TargetError:
    message = f"{row} no longer validates ({problems}); run `reconcile apply` to set it back"
    return TargetError(" ".join(message.split()))  # one line, whatever the row holds


def open_source(spec: ImportSpec, settings: Settings) -> Source:
    """The schedule's source: its ``local_files``, else the project's SFTP with the override;
    with a ``deadline``, one that reads nothing past it."""
    if spec.local_files:
        local = LocalFiles(
            spec.local_files, schedule=spec.schedule.name, declared_in=spec.source_file
        )
        source = sources.open_source(local, settings)
    else:
        project_sftp = spec.project_spec.sftp if spec.project_spec else None
        source = sources.open_source(merge_sftp(project_sftp, spec.sftp_override), settings)
    return source if spec.deadline is None else _Bounded(source, spec.deadline)


class _Bounded:
    """A source that reads nothing past a deadline: a file is not opened, and a file being read
    fails at its next block. The failure aborts the file's COPY: its transaction rolls back and
    the ledger does not record it, so the next run loads it whole."""

    def __init__(self, source: Source, deadline: Deadline) -> None:
        self._source, self._deadline = source, deadline
        self.key = source.key

    def list_files(self) -> list[SourceFile]:
        return self._source.list_files()

    def modified(self, path: str) -> datetime | None:
        return self._source.modified(path)

    @contextmanager
    def open(self, f: SourceFile) -> Iterator[Opened]:
        self._deadline.check("not started; the next run loads it")
        with self._source.open(f) as opened:
            yield _BoundedFile(opened, self._deadline)

    def finish(self, f: SourceFile) -> str | None:
        return self._source.finish(f)  # its data is committed: the action completes the load

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> _Bounded:
        self._source.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._source.__exit__(*exc)


class _BoundedFile:
    def __init__(self, opened: Opened, deadline: Deadline) -> None:
        self._opened, self._deadline = opened, deadline

    def read(self, n: int = -1, /) -> bytes:
        self._deadline.check(_ROLLED_BACK)
        return self._opened.read(n)

    def stat(self) -> tuple[int, datetime]:
        return self._opened.stat()


def target_url(spec: ImportSpec, settings: Settings, management_url: str) -> tuple[str, bool]:
    """The target database's URL, and whether it is another database than the management one."""
    from reconciler.imports.secrets import resolve

    url = resolve(
        spec.target.database_url,
        environ=settings.environ,
        where=f"project {spec.schedule.project}: target.database_url",
    )
    return (url, True) if url else (management_url, False)
