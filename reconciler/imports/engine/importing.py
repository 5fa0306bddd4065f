"""Loading one run's files: each file in its own transaction, several files over parallel sessions.

``imports.runs.transferring`` calls ``import_files`` with an open source, the checked target and
what the ledger knows. Each file streams into COPY through ``Digesting``; after the last read the
open handle must still match the listing (else the file changed while it was read), an empty
delivery must not empty a replaced table, the ledger must take the digest as new (else the file is
``unchanged``), and an append must not be a file that merely grew. Any of these rolls the file's
transaction back.

Append and upsert files stage over up to ``workers`` connections at once (a thread each; the
threads mostly wait on the network while PostgreSQL parses), and land in the order given
(``_Turns``): an upsert merges its stage in its turn, so the newest file's values win. Replace loads
sequentially in one transaction: it deletes the old rows and copies the new files, so readers see
the old content until the commit and the new content after it, never an empty table. TRUNCATE
would be faster but takes an ACCESS EXCLUSIVE lock for the whole load and is not MVCC-safe (a
reader's earlier snapshot would see the table empty); DELETE's dead rows are autovacuum's job. A
replace with any failed file, or with no new file, rolls back.

``Connections.interrupt`` (a run's deadline, from another thread) cancels what the sessions in use
are running on the server; a file it stops, or that would start landing after it, rolls back and
fails with the interrupt's error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from reconciler.errors import DataError, ReconcileError
from reconciler.imports.engine.copying import (
    CopyFailure,
    Staged,
    TargetTable,
    copy_failure,
    stage,
)
from reconciler.imports.engine.digesting import Digesting
from reconciler.imports.engine.framing import locate_open_quote, record_line
from reconciler.logs import get_logger
from reconciler.model.delivery import empty_refusal, growth_refusal
from reconciler.model.results import FileResult
from reconciler.store.connecting import connect

if TYPE_CHECKING:
    from reconciler.model.files import Source, SourceFile
    from reconciler.model.specs import Delivery
    from reconciler.store.ledger import Known, Ledger

__all__ = ["Connections", "Imported", "Meter", "Progress", "import_files"]

_log = get_logger("reconciler.imports")
_PROGRESS_EVERY = 0.1  # seconds between progress callbacks; file starts and ends always report
_IDLE = psycopg.pq.TransactionStatus.IDLE  # a session back in the pool must hold no transaction
_TURN_CHECK = 0.2  # seconds between checks that a file waiting for its turn blocks no other
_CANCEL_WAIT = 2.0  # seconds the server gets to take one session's cancel request


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
    """Sessions to the target database, opened on demand and reused; ``interrupt`` stops them."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._all: list[psycopg.Connection[Any]] = []
        self._lent: set[psycopg.Connection[Any]] = set()  # in use by a thread of the run
        self._lock = threading.Lock()
        self._error: Callable[[], ReconcileError] | None = None

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self._url)  # named for its role, as every session is
            with self._lock:
                self._all.append(conn)
        with self._lock:
            self._lent.add(conn)
        try:
            yield conn
        finally:
            with self._lock:
                self._lent.discard(conn)
            if not conn.broken and conn.info.transaction_status == _IDLE:
                self._idle.put(conn)

    @property
    def interrupted(self) -> bool:
        return self._error is not None

    def interrupt(self, error: Callable[[], ReconcileError]) -> None:
        """Cancel the statement each session in use is running; from now on a file that is
        stopped, or that would start landing, rolls back and fails with ``error()``.

        For another thread, as often as it likes: the server ignores a cancel that finds the
        session idle, so a commit already made stays. Waits at most ``_CANCEL_WAIT`` s for the
        server to take each request.
        """
        with self._lock:  # the sessions stay open while they are cancelled
            if self._error is None:
                _log.warning("interrupting the run's target sessions", in_use=len(self._lent))
            self._error = error
            for conn in self._lent:
                try:
                    conn.cancel_safe(timeout=_CANCEL_WAIT)
                except psycopg.Error as exc:  # the statement then ends as it would have
                    _log.warning("cannot cancel a statement on the target", error=str(exc).strip())

    def halt(self) -> ReconcileError | None:
        """The error of a file the interrupt stops; None until there is an interrupt."""
        error = self._error
        return None if error is None else error()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()


@dataclass(frozen=True, slots=True)
class _Run:
    pool: Connections
    target: TargetTable
    ledger: Ledger
    source: Source
    job_id: str
    meter: Meter
    delivery: Delivery
    known: Known
    digests: dict[str, bytes] = field(default_factory=dict)  # path -> digest, as files load
    sightings: list[tuple[SourceFile, bytes]] = field(default_factory=list)


class _Changed(Exception):
    """The file is not the one listed: it changed while it was read."""


class _Unchanged(Exception):
    """The file's bytes were loaded into the project before."""


class _Refused(Exception):
    """The file loaded but must not land (an empty replace, an append of a grown file)."""


class _Yield(Exception):
    """A file waiting for its turn holds a lock an earlier file needs: it rolls back first."""


class _Turns:
    """Commit order: file ``i`` lands only once every file before it has landed or failed.

    Files stage (COPY) in parallel; each waits here before it merges and commits. A staged
    append holds its rows' index entries, so an earlier file could wait on a later one's lock
    while the later one waits for its turn: a wait PostgreSQL cannot see. The waiting file checks
    for that and yields (rolls back, loads again in its turn).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._done: set[int] = set()
        self._pids: dict[int, int] = {}  # file index -> the backend loading it

    def start(self, index: int, conn: psycopg.Connection[Any]) -> None:
        with self._cond:
            self._pids[index] = conn.info.backend_pid

    def wait(self, index: int, conn: psycopg.Connection[Any] | None) -> None:
        """Return once it is file ``index``'s turn; ``_Yield`` if it blocks the one in turn."""
        with self._cond:
            while self._next != index:
                self._cond.wait(_TURN_CHECK)
                if conn is not None and self._next != index and self._blocks(conn):
                    raise _Yield()

    def _blocks(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether this session holds a lock the file in turn waits for (the lock on the turns
        is released while PostgreSQL is asked)."""
        pid = self._pids.get(self._next)
        if pid is None:
            return False
        self._cond.release()
        try:
            row = conn.execute(
                "SELECT pg_backend_pid() = ANY(pg_blocking_pids(%s))", (pid,)
            ).fetchone()
        finally:
            self._cond.acquire()
        return bool(row and row[0])

    def done(self, index: int) -> None:
        with self._cond:
            self._done.add(index)
            while self._next in self._done:
                self._next += 1
            self._cond.notify_all()


def _failed(
    f: SourceFile, read: int, error: str, *, line: int | None = None, column: str | None = None
) -> FileResult:
    return FileResult(
        f.path, f.size, f.mtime, "failed", bytes=read, error=error, line=line, column=column
    )


def _load_one(
    conn: psycopg.Connection[Any],
    run: _Run,
    f: SourceFile,
    turn: Callable[[], None] = lambda: None,
) -> FileResult:
    """Load ``f`` in one transaction (a savepoint inside a replace); never raises our errors.

    ``turn`` returns once the file may land (``_Yield`` if it must roll back first).
    """
    run.meter.file_started(f)
    read = newlines = 0

    def on_block(nbytes: int, lines: int) -> None:
        nonlocal read, newlines
        read += nbytes
        newlines += lines
        run.meter.block(nbytes, lines)

    began = time.monotonic()
    versions = run.known.versions_of(f) if run.target.mode == "append" else ()
    try:
        with conn.transaction():
            with run.source.open(f) as opened:
                reader = Digesting(opened, (size for size, _ in versions if size < f.size))
                staged = stage(conn, run.target, reader, on_block=on_block)
                now = opened.stat()
            if reader.read_bytes != f.size or now != (f.size, f.mtime):
                raise _Changed(_change(f, reader.read_bytes, now))
            digest = reader.digest()
            run.digests[f.path] = digest
            _refuse_empty(run, staged)
            turn()
            if (halted := run.pool.halt()) is not None:  # interrupted: nothing starts landing
                raise halted
            rows = staged.finish(conn)
            if not run.ledger.record(conn, f, digest, rows, run.job_id):
                raise _Unchanged()
            _refuse_growth(run, f, reader)  # new bytes only: loaded ones are unchanged above
            result = FileResult(f.path, f.size, f.mtime, "imported", rows=rows, bytes=read)
    except _Unchanged:
        run.sightings.append((f, run.digests[f.path]))
        note = "the same bytes were imported into this project before; nothing loaded"
        result = FileResult(f.path, f.size, f.mtime, "unchanged", bytes=read, note=note)
    except pg_errors.LockNotAvailable:
        result = _failed(f, read, "another run is loading this file right now")
    except psycopg.Error as exc:
        result = _refused(conn, run, f, read, exc)
    except DataError as exc:
        result = _failed(f, read, exc.message, line=exc.line or _record_line(run, f, exc.record))
    except _Changed as exc:
        result = _failed(
            f, read, f"the file changed while it was read ({exc}); it is loaded whole on a "
            "later run, once it has settled",
        )  # fmt: skip
    except _Refused as exc:
        result = _failed(f, read, str(exc))
    except (ReconcileError, OSError) as exc:
        result = _failed(f, read, exc.message if isinstance(exc, ReconcileError) else str(exc))
    run.meter.file_done(result, newlines)
    _log_file(result, time.monotonic() - began)
    return result


def _refused(
    conn: psycopg.Connection[Any], run: _Run, f: SourceFile, read: int, exc: psycopg.Error
) -> FileResult:
    """A file PostgreSQL failed: stopped by the interrupt, cut off with its session, or refused
    (with PostgreSQL's account and the line)."""
    if (halted := _halted(run.pool, exc)) is not None:
        return _failed(f, read, halted.message)
    if conn.broken:
        return _failed(f, read, str(exc).strip())
    why = _located(run, f, copy_failure(exc))
    return _failed(f, read, why.message, line=why.line, column=why.column)


def _halted(pool: Connections, exc: psycopg.Error) -> ReconcileError | None:
    """The interrupt's error when it cancelled the statement that raised ``exc``."""
    return pool.halt() if isinstance(exc, pg_errors.QueryCanceled) else None


def _change(f: SourceFile, read: int, now: tuple[int, datetime]) -> str:
    size, mtime = now
    if read != f.size:
        return f"listed with {f.size} bytes, read {read}, now {size}"
    return (
        f"listed with {f.size} bytes modified {f.mtime:%H:%M:%S}, "
        f"now {size} bytes modified {mtime:%H:%M:%S}"
    )


def _refuse_empty(run: _Run, staged: Staged) -> None:
    """``DataError`` or ``_Refused`` when an empty file must not land."""
    dialect = run.target.dialect
    empty = empty_refusal(
        rows=staged.rows,
        header_expected=bool(dialect and dialect.header),
        header_seen=staged.header_seen,
        replace=run.target.mode == "replace",
        delivery=run.delivery,
    )
    if empty is not None:
        if not staged.header_seen and dialect is not None and dialect.header:
            raise DataError(empty, line=1)
        raise _Refused(empty)


def _refuse_growth(run: _Run, f: SourceFile, reader: Digesting) -> None:
    """``_Refused`` when an append would load a file that merely grew from loaded bytes."""
    if run.target.mode == "append":
        grown = growth_refusal(f.size, run.known.versions_of(f), reader.prefixes)
        if grown is not None:
            raise _Refused(grown)


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
                if not any(r.status == "imported" for r in results):
                    raise psycopg.Rollback()  # nothing new: the table keeps its content
        except psycopg.Rollback:
            # psycopg swallows its own Rollback unless the session broke first: then no COMMIT
            # was sent and the server rolled the whole replace back when the session ended.
            pass
        except psycopg.Error as exc:  # the DELETE or the commit itself
            halted = _halted(pool, exc)
            reason = halted.message if halted else " ".join(str(exc).split())
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
    delivery: Delivery,
    known: Known,
) -> Imported:
    """Load ``files`` (not known to the ledger by their listing) into ``target``, committing
    them in the order given; one result per file, in that order, and the digests read."""
    run = _Run(pool, target, ledger, source, job_id, meter, delivery, known)
    if not files:
        return Imported([], {})
    if target.mode == "replace":
        results = _replace(pool, run, files)
    elif workers == 1 or len(files) == 1:
        results = [_one(pool, run, f) for f in files]
    else:
        turns = _Turns()
        with ThreadPoolExecutor(
            max_workers=min(workers, len(files)), thread_name_prefix="copy"
        ) as ex:
            loads = [ex.submit(_in_turn, pool, run, turns, i, f) for i, f in enumerate(files)]
            results = [load.result() for load in loads]
    _record_sightings(pool, run)
    return Imported(results, dict(run.digests))


@dataclass(frozen=True, slots=True)
class Imported:
    """What ``import_files`` did: one result per file, and the digest of each file read."""

    results: list[FileResult]
    digests: dict[str, bytes]


def _one(pool: Connections, run: _Run, f: SourceFile) -> FileResult:
    with pool.session() as conn:
        return _load_one(conn, run, f)


def _in_turn(pool: Connections, run: _Run, turns: _Turns, index: int, f: SourceFile) -> FileResult:
    with pool.session() as conn:
        try:
            turns.start(index, conn)
            try:
                return _load_one(conn, run, f, lambda: turns.wait(index, conn))
            except _Yield:
                turns.wait(index, None)
                return _load_one(conn, run, f)
        finally:
            turns.done(index)


def _record_sightings(pool: Connections, run: _Run) -> None:
    """Files whose bytes were loaded before: remember their listing, so the next run skips them
    unread (best effort: without it, the next run reads them again and finds the same)."""
    if not run.sightings or run.pool.interrupted:  # the next run reads them again
        return
    try:
        with pool.session() as conn:
            for f, digest in run.sightings:
                run.ledger.sight(conn, f, digest, run.job_id)
    except (ReconcileError, psycopg.Error) as exc:
        message = exc.message if isinstance(exc, ReconcileError) else str(exc).strip()
        _log.warning("cannot record files seen unchanged", error=message)
