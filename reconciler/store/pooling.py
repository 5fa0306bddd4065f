"""A small pool of sessions to the management database, for the daemon's HTTP API.

``daemon.api`` reads schedules and jobs on every request; a connection per request would cost a
TCP and authentication round trip each time, so requests borrow an autocommit session from a
``psycopg_pool`` pool instead. The pool opens in the background and keeps trying while the
server is down; a request that cannot get a working session within ``timeout`` seconds, or whose
statement fails, gets ``StoreError`` here (the API answers 503), never a psycopg exception.
The pool's sessions are named ``reconcile/api/<host:pid>`` (``store.connecting.session_name``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from reconciler.errors import StoreError
from reconciler.logs import redact

if TYPE_CHECKING:
    import psycopg

__all__ = ["ReadPool"]


class ReadPool:
    """Up to ``size`` autocommit sessions to ``url``, each checked before it is lent."""

    def __init__(self, url: str, *, size: int = 4, timeout: float = 3.0) -> None:
        from psycopg_pool import ConnectionPool

        from reconciler.store.connecting import session_name

        # Named here: the pool opens its sessions in threads of its own.
        application_name = session_name("api")
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            timeout=timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": 10,
                "application_name": application_name,
            },
            check=ConnectionPool.check_connection,  # a session the server dropped is replaced
            name="reconcile-api",
            open=False,
        )
        self._pool.open(wait=False)

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        """A session for a few statements; ``StoreError`` when PostgreSQL cannot answer."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreError(f"no session to PostgreSQL within the timeout ({exc})") from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {redact(' '.join(str(exc).split()))}") from exc

    def close(self) -> None:
        self._pool.close(timeout=2)
