"""One run of a schedule, start to finish: ``run_schedule`` is the entry point for every trigger.

``reconcile run NAME`` calls it with ``trigger="manual"``; the daemon calls it with
``trigger="schedule"`` and the occurrence's ``scheduled_for``; the HTTP API calls its two halves
apart, ``claim_run`` (answering with the job id) and then ``Claim.run`` in a worker. The steps:
read the schedule and project rows, record the job (or a skip), open the source and the target,
load the files not yet imported, run each file's after-import action once its data is committed,
store the final status with the schedule's statistics, then send the callback. Everything that can
go wrong after the job row exists becomes a one-line ``error`` on the job and in the log, never a
traceback.

PostgreSQL stopping mid-run ends the session that holds the run's lock. The run then waits a
short, bounded window (``RECONNECT_WITHIN``, with backoff) for the server to answer again: back in
time, it reads the import ledger for files whose COMMIT went unanswered, records the job
``failed`` with the cause (only if the row is still ``running``: without the lock another runner
may have claimed the schedule meanwhile) and sends the callback; not back in time, it raises
``StoreError`` with the cause and the next run marks the job abandoned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from reconciler.errors import ReconcileError, StoreError
from reconciler.imports import callbacks
from reconciler.imports.copying import inspect_target
from reconciler.imports.importing import Connections, Meter, Progress, import_files
from reconciler.imports.resolving import ImportSpec, load_import, open_source, target_url
from reconciler.logs import get_logger, redact
from reconciler.model.results import FileResult, JobResult, JobStatus
from reconciler.store.connecting import connect, database_url, open_store
from reconciler.store.jobs import (
    Heartbeat,
    Started,
    fail_lost_job,
    finish_job,
    record_callback,
    start_job,
)
from reconciler.store.ledger import Ledger

if TYPE_CHECKING:
    from reconciler.model.files import Source, SourceFile
    from reconciler.settings import Settings

__all__ = ["RECONNECT_WITHIN", "Claim", "Progress", "claim_run", "run_schedule"]

# Seconds a run waits for PostgreSQL to answer again: a restart or a switchover takes a few; the
# window stays well inside the 30 s a container gets between SIGTERM and SIGKILL.
RECONNECT_WITHIN = 20.0
_FIRST_RETRY = 0.25  # seconds; doubles up to _LAST_RETRY
_LAST_RETRY = 4.0
_log = get_logger("reconciler.imports")


def run_schedule(
    name: str,
    *,
    settings: Settings,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    progress: Callable[[Progress], None] | None = None,
    reconnect_within: float | None = None,
) -> JobResult:
    """Run schedule ``name`` once in this process and return its recorded result.

    Raises ``NotFound`` when the schedule is not in the database and ``StoreError`` when the
    management database is unreachable, or went away mid-run and did not answer again within
    ``reconnect_within`` seconds (default ``RECONNECT_WITHIN``); every other failure is the
    returned job's ``error``.
    """
    claim = claim_run(
        name, settings=settings, trigger=trigger, scheduled_for=scheduled_for,
        reconnect_within=reconnect_within,
    )  # fmt: skip
    return claim.run(progress)


def claim_run(
    name: str,
    *,
    settings: Settings,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    reconnect_within: float | None = None,
) -> Claim:
    """Record the job of one run of ``name`` (or its skip) and return it, not yet run.

    The first half of ``run_schedule``, for callers that answer with the job id before the
    import runs (the daemon's HTTP API): the returned ``Claim`` holds the session that holds
    the run's lock, and its ``run`` (in any thread) does the rest. ``NotFound`` and
    ``StoreError`` as for ``run_schedule``; nothing stays open when they are raised.
    """
    management_url = database_url(settings)
    outage = _Outage(RECONNECT_WITHIN if reconnect_within is None else reconnect_within)
    with ExitStack() as stack:
        conn = stack.enter_context(open_store(settings))
        conn.autocommit = True  # the job session holds the run's advisory lock between statements
        spec = load_import(conn, name)
        started = start_job(conn, spec.schedule, trigger=trigger, scheduled_for=scheduled_for)
        base = JobResult(
            job_id=started.id, schedule=spec.schedule.name, project=spec.schedule.project,
            status=started.status, trigger=trigger, error=started.error,
            scheduled_for=scheduled_for, started_at=started.started_at,
        )  # fmt: skip
        return Claim(
            conn, spec, started, base, stack.pop_all(),
            settings=settings, management_url=management_url, outage=outage,
        )  # fmt: skip


class Claim:
    """A recorded job not yet run: ``running`` (the lock is held), ``skipped``, or another
    replica's occurrence (``claimed`` false). Call ``run`` exactly once, or ``cancel``.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        spec: ImportSpec,
        started: Started,
        base: JobResult,
        session: ExitStack,
        *,
        settings: Settings,
        management_url: str,
        outage: _Outage,
    ) -> None:
        self._conn, self._spec, self._started, self._base = conn, spec, started, base
        self._session = session
        self._settings, self._url, self._outage = settings, management_url, outage

    @property
    def job(self) -> JobResult:
        """The job as recorded so far: its id, ``running`` or ``skipped``, and the reason."""
        return self._base if self._started.claimed else replace(self._base, claimed=False)

    def run(self, progress: Callable[[Progress], None] | None = None) -> JobResult:
        """Run the import (or, for a skip, send its callback), record the end, close the session."""
        with self._session:
            conn, spec, started, base = self._conn, self._spec, self._started, self._base
            if not started.claimed:  # another replica owns this occurrence and its callback
                return replace(base, claimed=False)
            if started.status == "skipped":
                return _call_back(
                    conn, spec, replace(base, finished_at=started.started_at), self._settings
                )
            if not spec.enabled:
                _log.info(
                    "running a disabled schedule", schedule=base.schedule, trigger=base.trigger
                )
            return _run(
                conn, spec, started, base, settings=self._settings,
                management_url=self._url, progress=progress, outage=self._outage,
            )  # fmt: skip

    def cancel(self, reason: str) -> None:
        """Never run: record a running job ``failed`` with ``reason``, close the session."""
        with self._session:
            if self._started.claimed and self._started.status == "running":
                finish_job(
                    self._conn, self._spec.schedule, self._started,
                    status="failed", files=(), error=reason,
                )  # fmt: skip


def _call_back(
    conn: psycopg.Connection[Any], spec: ImportSpec, result: JobResult, settings: Settings
) -> JobResult:
    """Send the schedule's callback, if any, and store its outcome on the job."""
    if not spec.callback_url or result.job_id is None:
        return result
    outcome = callbacks.deliver(
        spec.callback_url, result.payload(), message_id=result.job_id,
        secret=settings.webhook_secret,
    )  # fmt: skip
    record_callback(conn, result.job_id, outcome)
    return replace(result, callback=outcome)


class _Outage:
    """The bounded wait for PostgreSQL to answer again, one window per run.

    The window opens at the first failed attempt; each connection attempt may itself take up
    to the connect timeout (10 s) against a host that drops packets.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._deadline: float | None = None

    def connect(self, url: str) -> psycopg.Connection[Any]:
        """A new connection to ``url``; ``StoreError`` once the window has passed."""
        delay = _FIRST_RETRY
        while True:
            try:
                return connect(url)
            except StoreError as exc:
                now = time.monotonic()
                if self._deadline is None:
                    self._deadline = now + self.window
                    _log.warning("waiting for PostgreSQL", seconds=self.window, error=exc.message)
                if now >= self._deadline:
                    raise
                time.sleep(min(delay, self._deadline - now))
                delay = min(delay * 2, _LAST_RETRY)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact(lines[0].strip()) if lines else type(exc).__name__


def _run(
    conn: psycopg.Connection[Any],
    spec: ImportSpec,
    started: Started,
    base: JobResult,
    *,
    settings: Settings,
    management_url: str,
    progress: Callable[[Progress], None] | None,
    outage: _Outage,
) -> JobResult:
    meter = Meter(progress)
    files: list[FileResult] = []
    error: str | None = None
    began = time.monotonic()
    _log.info("import started", schedule=spec.schedule.name, job_id=started.id)
    try:
        with Heartbeat(conn, started.id, meter.totals):
            _import(
                spec, settings, job_id=started.id, management_url=management_url,
                meter=meter, results=files, outage=outage,
            )  # fmt: skip
    except ReconcileError as exc:
        error = exc.message
    except psycopg.Error as exc:
        error = f"PostgreSQL: {_one_line(exc)}"
    except BaseException as exc:  # an interrupt or a bug: the row must not stay 'running'
        kind = "interrupted" if not isinstance(exc, Exception) else "unexpected error"
        error = f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")
        try:
            finish_job(
                conn, spec.schedule, started, status="failed", files=tuple(files), error=error
            )
        except Exception as again:  # the next run marks it abandoned instead
            _log.error("cannot record the job's end", job_id=started.id, error=str(again))
        raise
    failed = [f for f in files if f.status == "failed"]
    if error is None and failed:
        first = failed[0]
        where = f"{first.path}" + (f" line {first.line}" if first.line else "")
        error = f"{len(failed)} of {len(files)} files failed; first: {where}: {first.error}"
    if error:
        error = " ".join(error.split())  # one line, whatever a library put in its message
    status: JobStatus = "failed" if error else "succeeded"
    result = replace(
        base, status=status, error=error, files=tuple(files),
        rows_imported=sum(f.rows for f in files if f.status == "imported"),
        bytes_read=sum(f.bytes for f in files),
    )  # fmt: skip
    try:
        finished_at = finish_job(
            conn, spec.schedule, started, status=status, files=tuple(files), error=error
        )
    except psycopg.OperationalError as exc:
        if not conn.broken:
            raise
        return _finish_lost(
            exc, spec, started, result,
            settings=settings, url=management_url, outage=outage, began=began,
        )  # fmt: skip
    result = replace(result, finished_at=finished_at)
    _log_end(result, began)
    return _call_back(conn, spec, result, settings)


def _log_end(result: JobResult, began: float) -> None:
    log = _log.info if result.status == "succeeded" else _log.error
    log(
        "import finished", schedule=result.schedule, job_id=result.job_id, status=result.status,
        rows=result.rows_imported, bytes=result.bytes_read,
        seconds=round(time.monotonic() - began, 3), error=result.error,
    )  # fmt: skip


def _finish_lost(
    lost: psycopg.Error,
    spec: ImportSpec,
    started: Started,
    result: JobResult,
    *,
    settings: Settings,
    url: str,
    outage: _Outage,
    began: float,
) -> JobResult:
    """The management session died mid-run, and the run's lock with it: end the job anew.

    ``StoreError`` when PostgreSQL does not answer again within the window; the job then
    stays ``running`` until the next run finds its lock free and marks it abandoned.
    """
    cause = f"lost the connection to the management database during the run ({_one_line(lost)})"
    error = cause if result.error is None else f"{cause}; {result.error}"
    try:
        conn = outage.connect(url)
    except StoreError as exc:
        raise StoreError(
            f"{cause}, and PostgreSQL did not answer again within {outage.window:g} s; the next "
            f"run of {spec.schedule.name} marks job {started.id} abandoned"
        ) from exc
    with conn:
        conn.autocommit = True
        ended = fail_lost_job(conn, spec.schedule, started, files=result.files, error=error)
        shown = error if ended.ours else ended.error  # else: this run's own finish had committed
        if ended.status == "abandoned":  # another runner has claimed the schedule since
            shown = f"{cause}; another run has since marked this job abandoned"
        result = replace(result, status=ended.status, error=shown, finished_at=ended.finished_at)
        _log_end(result, began)
        if result.status == "abandoned":  # as for every abandoned job, no callback
            return result
        return _call_back(conn, spec, result, settings)


def _import(
    spec: ImportSpec,
    settings: Settings,
    *,
    job_id: str,
    management_url: str,
    meter: Meter,
    results: list[FileResult],
    outage: _Outage,
) -> None:
    """Load the schedule's new files; ``results`` fills in as soon as data is committed, so a
    later failure (an after-import action, closing the source) keeps the record of what landed.
    """
    project = spec.project_spec
    target = spec.target  # TargetError for a project managed elsewhere
    assert project is not None
    assert spec.schedule.project_id
    assert spec.schedule.project
    url, external = target_url(spec, settings, management_url)
    schema = target.table.split(".")[0] if "." in target.table else None
    with open_source(spec, settings) as source, Connections(url) as pool:
        listed = source.list_files()
        ledger = Ledger(
            spec.schedule.project_id, spec.schedule.project, source.key, schema, external
        )
        with pool.session() as tconn:
            table = inspect_target(tconn, target, project.csv)
            ledger.prepare(tconn)
            done = ledger.imported(tconn, listed)
        todo = [f for f in listed if (f.path, f.size, f.mtime) not in done]
        meter.begin(todo)
        loaded = import_files(
            pool, table, ledger, source, todo,
            job_id=job_id, meter=meter, workers=settings.import_workers,
        )  # fmt: skip
        if any(r.status == "failed" for r in loaded):
            loaded = _confirm(url, ledger, todo, loaded, outage)
        by_path = {r.path: r for r in loaded}
        results.extend(by_path.get(f.path) or _already(f) for f in listed)
        _after_import(source, listed, results)
        if external:
            _mirror(ledger, management_url, listed=listed, results=results, job_id=job_id)


def _mirror(
    ledger: Ledger,
    management_url: str,
    *,
    listed: Sequence[SourceFile],
    results: list[FileResult],
    job_id: str,
) -> None:
    loaded = [(f, r.rows) for f, r in zip(listed, results, strict=True) if r.status == "imported"]
    if not loaded:
        return
    try:
        with connect(management_url) as conn:
            ledger.mirror(conn, loaded, job_id)
    except (ReconcileError, psycopg.Error) as exc:  # informational copy: the target's record rules
        _log.warning("cannot copy the import records to cpi_imported_files", error=str(exc))


def _confirm(
    url: str,
    ledger: Ledger,
    files: Sequence[SourceFile],
    loaded: list[FileResult],
    outage: _Outage,
) -> list[FileResult]:
    """Failed files that the ledger records as loaded after all: their COMMIT landed but its
    answer was lost with the connection (or a concurrent run loaded them). Read over a new
    session, as the old one may be dead.
    """
    failed = [f for f, r in zip(files, loaded, strict=True) if r.status == "failed"]
    try:
        with outage.connect(url) as conn:
            landed = ledger.imported(conn, failed)
    except (ReconcileError, psycopg.Error) as exc:  # they stay failed: nothing says they landed
        message = exc.message if isinstance(exc, ReconcileError) else _one_line(exc)
        _log.warning("cannot read the import ledger to confirm failed files", error=message)
        return loaded
    note = "already imported: the import ledger records it, though this run saw an error"
    return [
        FileResult(r.path, r.size, r.mtime, "skipped", bytes=r.bytes, note=note)
        if r.status == "failed" and (f.path, f.size, f.mtime) in landed
        else r
        for f, r in zip(files, loaded, strict=True)
    ]


def _already(f: SourceFile) -> FileResult:
    return FileResult(f.path, f.size, f.mtime, "skipped", note="already imported")


def _after_import(source: Source, listed: Sequence[SourceFile], results: list[FileResult]) -> None:
    """Keep, delete or move each file whose data is committed, now or by an earlier run.

    Files skipped as already imported are finished too: a crash between an earlier run's commit
    and its after-import action is completed by the next run.
    """
    for i, (f, result) in enumerate(zip(listed, results, strict=True)):
        if result.status not in ("imported", "skipped"):
            continue
        try:
            source.finish(f)
        except (ReconcileError, OSError) as exc:
            message = exc.message if isinstance(exc, ReconcileError) else str(exc)
            _log.warning("after-import action failed", path=f.path, error=message)
            results[i] = replace(result, note=f"after_import failed: {message}")
