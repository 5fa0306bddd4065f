"""Loading one run's files: each file in its own transaction, several files over parallel sessions.

``imports.runs.running`` calls ``import_files`` with an open source and the checked target. Append
and upsert files load over up to ``workers`` connections at once (a thread each; the threads mostly
wait on the network while PostgreSQL parses). Replace loads sequentially in one transaction: it
deletes the old rows and copies the new files, so readers see the old content until the commit and
the new content after it, never an empty table. TRUNCATE would be faster but takes an ACCESS
EXCLUSIVE lock for the whole load and is not MVCC-safe (a reader's earlier snapshot would see the
table empty); DELETE's dead rows are autovacuum's job. A replace with any failed file rolls back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from reconciler.errors import DataError, ReconcileError
from reconciler.imports.engine.copying import CopyFailure, TargetTable, copy_failure, load
from reconciler.imports.engine.framing import locate_open_quote, record_line
from reconciler.logs import get_logger
from reconciler.model.results import FileResult
from reconciler.store.connecting import connect

if TYPE_CHECKING:
    from reconciler.model.files import Source, SourceFile
    from reconciler.store.ledger import Ledger

__all__ = ["Connections", "Meter", "Progress", "import_files"]

_log = get_logger("reconciler.imports")
_PROGRESS_EVERY = 0.1  # seconds between progress callbacks; file starts and ends always report
_IDLE = psycopg.pq.TransactionStatus.IDLE  # a session back in the pool must hold no transaction


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a running import, for progress displays (rows are approximate until done)."""

    files_total: int
    files_done: int
    current: str
    bytes_read: int
    bytes_total: int
    rows: int
    elapsed: float


class Meter:
    """Thread-safe running totals of a run; feeds the heartbeat and the progress callback."""

    def __init__(self, progress: Callable[[Progress], None] | None = None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0
        self.files_total = self.files_done = self.bytes_total = 0
        self.bytes_read = self.rows_done = self.newlines = 0
        self._current = ""

    def begin(self, files: Sequence[SourceFile]) -> None:
        with self._lock:
            self.files_total = len(files)
            self.bytes_total = sum(f.size for f in files)

    def totals(self) -> tuple[int, int]:
        """``(rows, bytes)`` so far; rows of files still loading are estimated from newlines."""
        with self._lock:
            return self.rows_done + self.newlines, self.bytes_read

    def file_started(self, f: SourceFile) -> None:
        with self._lock:
            self._current = f.name
        self._report(force=True)

    def block(self, nbytes: int, newlines: int) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.newlines += newlines
        self._report()

    def file_done(self, result: FileResult, newlines: int, *, skipped_bytes: int = 0) -> None:
        with self._lock:
            self.files_done += 1
            self.newlines -= newlines
            self.rows_done += result.rows if result.status == "imported" else 0
            self.bytes_read += skipped_bytes
        self._report(force=True)

    def _report(self, *, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < _PROGRESS_EVERY:
                return
            self._last = now
            snapshot = Progress(
                self.files_total, self.files_done, self._current, self.bytes_read,
                self.bytes_total, self.rows_done + self.newlines, now - self._start,
            )  # fmt: skip
        self._progress(snapshot)


class Connections:
    """Up to ``size`` sessions to the target database, opened on demand and reused."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self._url)
            conn.execute("SELECT set_config('application_name', 'reconcile import', false)")
            conn.commit()
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if not conn.broken and conn.info.transaction_status == _IDLE:
                self._idle.put(conn)

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()


@dataclass(frozen=True, slots=True)
class _Run:
    target: TargetTable
    ledger: Ledger
    source: Source
    job_id: str
    meter: Meter


class _Changed(Exception):
    """The file's size differs from its listing: it was still being written."""


def _failed(
    f: SourceFile, read: int, error: str, *, line: int | None = None, column: str | None = None
) -> FileResult:
    return FileResult(
        f.path, f.size, f.mtime, "failed", bytes=read, error=error, line=line, column=column
    )


def _load_one(conn: psycopg.Connection[Any], run: _Run, f: SourceFile) -> FileResult:
    """Load ``f`` in one transaction (a savepoint inside a replace); never raises our errors."""
    run.meter.file_started(f)
    read = newlines = 0

    def on_block(nbytes: int, lines: int) -> None:
        nonlocal read, newlines
        read += nbytes
        newlines += lines
        run.meter.block(nbytes, lines)

    began = time.monotonic()
    try:
        with conn.transaction():
            if not run.ledger.claim(conn, f, run.job_id):
                result = FileResult(f.path, f.size, f.mtime, "skipped", note="already imported")
            else:
                with run.source.open(f) as reader:
                    rows, nbytes = load(conn, run.target, reader, on_block=on_block)
                if nbytes != f.size:
                    raise _Changed(f"listed {f.size} bytes but read {nbytes}")
                run.ledger.settle(conn, f, rows)
                result = FileResult(f.path, f.size, f.mtime, "imported", rows=rows, bytes=nbytes)
    except pg_errors.LockNotAvailable:
        result = _failed(f, read, "another run is loading this file right now")
    except psycopg.Error as exc:
        if conn.broken:
            result = _failed(f, read, str(exc).strip())
        else:
            why = _located(run, f, copy_failure(exc))
            result = _failed(f, read, why.message, line=why.line, column=why.column)
    except DataError as exc:
        result = _failed(f, read, exc.message, line=exc.line or _record_line(run, f, exc.record))
    except _Changed as exc:
        result = _failed(
            f, read, f"the file changed while it was read ({exc}); it is retried on the next run"
        )
    except (ReconcileError, OSError) as exc:
        result = _failed(f, read, exc.message if isinstance(exc, ReconcileError) else str(exc))
    run.meter.file_done(result, newlines)
    _log_file(result, time.monotonic() - began)
    return result


_UNTERMINATED = "unterminated CSV quoted field"


def _located(run: _Run, f: SourceFile, why: CopyFailure) -> CopyFailure:
    """PostgreSQL's account, with the line where an unterminated quote began, not the file's end.

    Found by reading the file again: only on this error path.
    """
    if not why.message.startswith(_UNTERMINATED) or run.target.dialect is None:
        return why
    try:
        with run.source.open(f) as reader:
            line = locate_open_quote(reader, run.target.dialect)
    except (ReconcileError, OSError):
        line = None
    if line is None:
        return CopyFailure(f"{_UNTERMINATED}: a quoted value is never closed")
    quote = run.target.dialect.quote
    return CopyFailure(
        f"{_UNTERMINATED}: the quote in the record starting on line {line} is never closed "
        f"(a {quote} inside a quoted value is written twice: {quote}{quote})",
        line=line,
    )


def _record_line(run: _Run, f: SourceFile, record: int | None) -> int | None:
    """The first line of data record ``record`` of ``f``, by reading it again (error path)."""
    if record is None or run.target.dialect is None:
        return None
    try:
        with run.source.open(f) as reader:
            return record_line(reader, run.target.dialect, record)
    except (ReconcileError, OSError):
        return None


def _log_file(result: FileResult, seconds: float) -> None:
    if result.status == "imported":
        _log.info(
            "file imported", path=result.path, rows=result.rows, bytes=result.bytes,
            seconds=round(seconds, 3),
        )  # fmt: skip
    elif result.status == "failed":
        _log.error("file failed", path=result.path, line=result.line, error=result.error)
    else:
        _log.info("file skipped", path=result.path, reason=result.note)


def _replace(pool: Connections, run: _Run, files: Sequence[SourceFile]) -> list[FileResult]:
    results: list[FileResult] = []
    with pool.session() as conn:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DELETE FROM {}").format(run.target.identifier))
                # Every file is still tried (each in a savepoint) so one run reports all bad files.
                results = [_load_one(conn, run, f) for f in files]
                if any(r.status == "failed" for r in results):
                    raise psycopg.Rollback()
        except psycopg.Rollback:
            # psycopg swallows its own Rollback unless the session broke first: then no COMMIT
            # was sent and the server rolled the whole replace back when the session ended.
            pass
        except psycopg.Error as exc:  # the DELETE or the commit itself
            reason = " ".join(str(exc).split())
            if results and conn.broken:  # the import ledger, read once the server is back, knows
                reason = f"lost the connection to PostgreSQL while committing: {reason}"
            return [FileResult(f.path, f.size, f.mtime, "failed", error=reason) for f in files]
    if any(r.status == "failed" for r in results):
        reason = "rolled back: another file of this replace run failed; the table is unchanged"
        results = [r.undone(reason) if r.status == "imported" else r for r in results]
    return results


def import_files(
    pool: Connections,
    target: TargetTable,
    ledger: Ledger,
    source: Source,
    files: Sequence[SourceFile],
    *,
    job_id: str,
    meter: Meter,
    workers: int,
) -> list[FileResult]:
    """Load ``files`` (not yet imported) into ``target``; one result per file, in order."""
    run = _Run(target, ledger, source, job_id, meter)
    if not files:
        return []
    if target.mode == "replace":
        return _replace(pool, run, files)

    def one(f: SourceFile) -> FileResult:
        with pool.session() as conn:
            return _load_one(conn, run, f)

    if workers == 1 or len(files) == 1:
        return [one(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(workers, len(files)), thread_name_prefix="copy") as ex:
        return list(ex.map(one, files))
