"""The files of one run: list them, load the new ones, confirm the doubtful, finish them all.

``imports.runs.running`` calls ``transfer`` once a run's job is recorded, and uses ``Outage`` (the
bounded wait for PostgreSQL to answer again) for its own session as well. ``transfer`` fills its
``results`` as soon as each file's data is committed, so a later failure (an after-import action,
closing the source) keeps the record of what landed.

A run reaches the target database only for what it needs: with nothing listed, not at all; with
files listed, for the import ledger; with a file to load, for the table's check
(``inspect_target``) too, so a target gone wrong is reported by the first run with a file for it.
Once a run's ``Deadline`` has passed, what the target database is doing for the run is cancelled
(``Connections.interrupt``, called again until ``transfer`` ends): a lock wait or a slow trigger
ends with the bound, not after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from reconciler.backoff import Backoff
from reconciler.errors import ReconcileError, StoreError
from reconciler.imports.engine.copying import inspect_target
from reconciler.imports.engine.importing import Connections, Imported, Meter, import_files
from reconciler.imports.runs.resolving import ImportSpec, open_source, target_url
from reconciler.logs import get_logger, one_line
from reconciler.model.delivery import marker_path, ordered, waiting, without_markers
from reconciler.model.results import ALREADY_IMPORTED, FileResult
from reconciler.store.connecting import connect
from reconciler.store.ledger import Ledger, file_key

if TYPE_CHECKING:
    from reconciler.imports.runs.resolving import Deadline
    from reconciler.model.files import Source, SourceFile
    from reconciler.model.specs import Delivery
    from reconciler.settings import Settings
    from reconciler.store.ledger import Known

__all__ = ["Outage", "transfer"]

_FIRST_RETRY = 0.25  # seconds: the first and the longest of the backoff's delays
_LAST_RETRY = 4.0
_log = get_logger("reconciler.imports")


class Outage:
    """The bounded wait for PostgreSQL to answer again, one window per run.

    The window opens at the first failed attempt; each connection attempt may itself take up
    to the connect timeout (10 s) against a host that drops packets.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._deadline: float | None = None

    def connect(self, url: str) -> psycopg.Connection[Any]:
        """A new connection to ``url``; ``StoreError`` once the window has passed."""
        backoff = Backoff(_FIRST_RETRY, _LAST_RETRY)
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
                time.sleep(min(backoff.next(), self._deadline - now))


def transfer(
    spec: ImportSpec,
    settings: Settings,
    *,
    job_id: str,
    management_url: str,
    meter: Meter,
    results: list[FileResult],
    outage: Outage,
) -> None:
    """Load the schedule's new, complete files; ``results`` fills in as soon as data is
    committed, so a later failure (an after-import action, closing the source) keeps the record
    of what landed. One result per listed file, in the order the files were committed; the
    job's document lists only those the run acted on (``model.results.fold``)."""
    project = spec.project_spec
    target = spec.target  # TargetError for a project managed elsewhere
    assert project is not None
    assert spec.schedule.project_id
    assert spec.schedule.project
    delivery = project.delivery
    url, external = target_url(spec, settings, management_url)
    schema = target.table.split(".")[0] if "." in target.table else None
    with open_source(spec, settings) as source:
        listed = ordered(without_markers(source.list_files(), delivery), delivery)
        if not listed:  # nothing to load: the first run that lists a file checks the target
            return
        if delivery.ready_marker is not None:  # finishing a file removes its marker too
            listed = [replace(f, marker=marker_path(f, delivery.ready_marker)) for f in listed]
        ledger = Ledger(
            spec.schedule.project_id, spec.schedule.project, source.key, schema, external
        )
        with Connections(url) as pool, _cut_off(spec.deadline, pool):
            with _before_loading(spec.deadline, pool), pool.session() as tconn:
                ledger.prepare(tconn)
                known = ledger.lookup(tconn, listed)
            outcome, todo = _sorted(listed, known, delivery, source, settings)
            imported = Imported([], {})
            if todo:  # the table is checked once per run, and only when a file is to load
                with _before_loading(spec.deadline, pool), pool.session() as tconn:
                    table = inspect_target(tconn, target, project.csv)
                meter.begin(todo)
                imported = import_files(
                    pool, table, ledger, source, todo, job_id=job_id, meter=meter,
                    workers=settings.import_workers, delivery=delivery, known=known,
                )  # fmt: skip
            loaded = imported.results
            if any(r.status == "failed" for r in loaded):
                loaded = _confirm(url, ledger, todo, loaded, outage)
            outcome.update((r.path, r) for r in loaded)
            results.extend(outcome[f.path] for f in listed)
            _after_import(source, listed, results)
        if external:
            _mirror(ledger, management_url, files=listed, imported=imported, job_id=job_id)


def _sorted(
    listed: Sequence[SourceFile],
    known: Known,
    delivery: Delivery,
    source: Source,
    settings: Settings,
) -> tuple[dict[str, FileResult], list[SourceFile]]:
    """The listed files already imported or not ready yet, by path, and those to load now."""
    now = datetime.now(UTC)
    outcome: dict[str, FileResult] = {}
    todo: list[SourceFile] = []
    for f in listed:
        if file_key(f) in known.seen:
            outcome[f.path] = _already(f)
        elif (why := _waiting(f, delivery, now, source, settings)) is not None:
            outcome[f.path] = FileResult(f.path, f.size, f.mtime, "waiting", note=why)
        else:
            todo.append(f)
    return outcome, todo


@contextmanager
def _cut_off(deadline: Deadline | None, pool: Connections) -> Iterator[None]:
    """Within the block, past ``deadline``, cancel what the run's target sessions are doing."""
    if deadline is None:
        yield
        return
    with deadline.on_cut(partial(pool.interrupt, deadline.rolled_back)):
        yield


@contextmanager
def _before_loading(deadline: Deadline | None, pool: Connections) -> Iterator[None]:
    """A statement of the block that the deadline cancelled fails with the deadline's error."""
    try:
        yield
    except (ReconcileError, psycopg.Error) as exc:
        # a TargetError too: "cannot create or update the import ledger (canceling ...)"
        cancelled = any(isinstance(e, pg_errors.QueryCanceled) for e in (exc, exc.__cause__))
        if deadline is None or not pool.interrupted or not cancelled:
            raise
        raise deadline.stop("nothing was loaded; the next run loads its files") from exc


def _waiting(
    f: SourceFile, delivery: Delivery, now: datetime, source: Source, settings: Settings
) -> str | None:
    return waiting(f, delivery, now=now, modified=source.modified, settle=settings.settle_seconds)


def _mirror(
    ledger: Ledger,
    management_url: str,
    *,
    files: Sequence[SourceFile],
    imported: Imported,
    job_id: str,
) -> None:
    by_path = {r.path: r for r in imported.results if r.status == "imported"}
    loaded = [
        (f, imported.digests[f.path], by_path[f.path].rows) for f in files if f.path in by_path
    ]
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
    outage: Outage,
) -> list[FileResult]:
    """Failed files that the ledger records as loaded after all: their COMMIT landed but its
    answer was lost with the connection (or a concurrent run loaded them). Read over a new
    session, as the old one may be dead.
    """
    failed = [f for f, r in zip(files, loaded, strict=True) if r.status == "failed"]
    try:
        with outage.connect(url) as conn:
            landed = ledger.lookup(conn, failed).seen
    except (ReconcileError, psycopg.Error) as exc:  # they stay failed: nothing says they landed
        message = exc.message if isinstance(exc, ReconcileError) else one_line(exc)
        _log.warning("cannot read the import ledger to confirm failed files", error=message)
        return loaded
    note = "already imported: the import ledger records it, though this run saw an error"
    return [
        FileResult(r.path, r.size, r.mtime, "skipped", bytes=r.bytes, note=note)
        if r.status == "failed" and file_key(f) in landed
        else r
        for f, r in zip(files, loaded, strict=True)
    ]


def _already(f: SourceFile) -> FileResult:
    return FileResult(f.path, f.size, f.mtime, "skipped", note=ALREADY_IMPORTED)


def _after_import(source: Source, listed: Sequence[SourceFile], results: list[FileResult]) -> None:
    """Keep, delete or move each file whose bytes are committed, now or by an earlier run.

    Files skipped as already imported are finished too: a crash between an earlier run's commit
    and its after-import action is completed by the next run.
    """
    for i, (f, result) in enumerate(zip(listed, results, strict=True)):
        if result.status not in ("imported", "skipped", "unchanged"):
            continue
        try:
            note = source.finish(f)
        except (ReconcileError, OSError) as exc:
            message = exc.message if isinstance(exc, ReconcileError) else str(exc)
            _log.warning("after-import action failed", path=f.path, error=message)
            results[i] = replace(result, note=f"after_import failed: {message}")
            continue
        if note is not None:
            results[i] = replace(result, note=note)
