"""One run of a schedule, start to finish: ``run_schedule`` is the entry point for every trigger.

``reconcile run NAME`` calls it with ``trigger="manual"``; the daemon calls it with
``trigger="schedule"`` and the occurrence's ``scheduled_for``. The steps: read the schedule and
project rows, record the job (or a skip), open the source and the target, load the files not yet
imported, run each file's after-import action once its data is committed, store the final status
with the schedule's statistics, then send the callback. Everything that can go wrong after the
job row exists becomes a one-line ``error`` on the job and in the log, never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from reconciler.errors import ReconcileError
from reconciler.imports import callbacks
from reconciler.imports.copying import inspect_target
from reconciler.imports.importing import Connections, Meter, Progress, import_files
from reconciler.imports.jobs import Heartbeat, Started, finish_job, record_callback, start_job
from reconciler.imports.ledger import Ledger
from reconciler.imports.resolving import ImportSpec, load_import, open_source, target_url
from reconciler.imports.results import FileResult, JobResult, JobStatus
from reconciler.logs import get_logger, redact
from reconciler.store.connecting import connect, database_url, open_store

if TYPE_CHECKING:
    from reconciler.imports.sources import Source, SourceFile
    from reconciler.settings import Settings

__all__ = ["Progress", "run_schedule"]

_log = get_logger("reconciler.imports")


def run_schedule(
    name: str,
    *,
    settings: Settings,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> JobResult:
    """Run schedule ``name`` once in this process and return its recorded result.

    Raises ``NotFound`` when the schedule is not in the database and ``StoreError`` when the
    management database is unreachable; every other failure is the returned job's ``error``.
    """
    management_url = database_url(settings)
    with open_store(settings) as conn:
        conn.autocommit = True  # the job session holds the run's advisory lock between statements
        spec = load_import(conn, name)
        started = start_job(conn, spec.schedule, trigger=trigger, scheduled_for=scheduled_for)
        base = JobResult(
            job_id=started.id, schedule=spec.schedule.name, project=spec.schedule.project,
            status=started.status, trigger=trigger, error=started.error,
            scheduled_for=scheduled_for, started_at=started.started_at,
        )  # fmt: skip
        if not started.claimed:  # another replica owns this occurrence and its callback
            return base
        if started.status == "skipped":
            result = replace(base, finished_at=started.started_at)
        else:
            if not spec.enabled:
                _log.info("running a disabled schedule", schedule=name, trigger=trigger)
            result = _run(
                conn, spec, started, base,
                settings=settings, management_url=management_url, progress=progress,
            )  # fmt: skip
        if spec.callback_url:
            outcome = callbacks.deliver(
                spec.callback_url,
                result.payload(),
                message_id=started.id,
                secret=settings.webhook_secret,
            )
            record_callback(conn, started.id, outcome)
            result = replace(result, callback=outcome)
        return result


def _run(
    conn: psycopg.Connection[Any],
    spec: ImportSpec,
    started: Started,
    base: JobResult,
    *,
    settings: Settings,
    management_url: str,
    progress: Callable[[Progress], None] | None,
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
                meter=meter, results=files,
            )  # fmt: skip
    except ReconcileError as exc:
        error = exc.message
    except psycopg.Error as exc:
        error = f"PostgreSQL: {redact(str(exc).strip().splitlines()[0])}"
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
    finished_at = finish_job(
        conn, spec.schedule, started, status=status, files=tuple(files), error=error
    )
    result = replace(
        base, status=status, error=error, files=tuple(files), finished_at=finished_at,
        rows_imported=sum(f.rows for f in files if f.status == "imported"),
        bytes_read=sum(f.bytes for f in files),
    )  # fmt: skip
    log = _log.info if status == "succeeded" else _log.error
    log(
        "import finished", schedule=spec.schedule.name, job_id=started.id, status=status,
        rows=result.rows_imported, bytes=result.bytes_read,
        seconds=round(time.monotonic() - began, 3), error=error,
    )  # fmt: skip
    return result


def _import(
    spec: ImportSpec,
    settings: Settings,
    *,
    job_id: str,
    management_url: str,
    meter: Meter,
    results: list[FileResult],
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
