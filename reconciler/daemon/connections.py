"""Bounds on the daemon's HTTP connections, so that no client can exhaust the process.

``daemon.http`` serves through ``protocol_class``: uvicorn's h11 protocol with

- a cap on open connections, derived from the file descriptor limit minus a reserve for the
  folder, the database and the imports (``connection_cap``); at the cap, a new connection
  closes the connection idle the longest, so probes still answer while idle clients hold
  sockets;
- a deadline to send a whole request (``REQUEST_SECONDS``) from the first byte, or from the
  connection's start: a client that never sends, or sends its headers a byte at a time, is
  closed;
- errors of the event loop (``socket.accept() out of system resource``) and uvicorn's warnings
  (``Invalid HTTP request received.``) logged once per kind, then once per ``Throttle.every``
  seconds with how many occurred (``Throttle``), never one line or traceback each.

``raise_descriptor_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from reconciler.logs import get_logger

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

__all__ = [
    "HEADER_LIMIT",
    "KEEP_ALIVE_SECONDS",
    "REQUEST_SECONDS",
    "Throttle",
    "connection_cap",
    "protocol_class",
    "raise_descriptor_limit",
]

REQUEST_SECONDS = 10.0  # to send a whole request, headers and (small) body
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
HEADER_LIMIT = 16 * 1024  # bytes of a request line and headers that h11 buffers
_MOST = 1024  # connections: far more than probes, scrapes and API clients need
_FEWEST = 8
_log = get_logger("reconciler.http")


def raise_descriptor_limit() -> int:
    """Lift the soft limit on open files to the hard limit; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft) or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a sandbox may refuse; the soft limit stays
        return soft
    _log.info("raised the open files limit", before=soft, after=hard)
    return hard


def connection_cap(concurrent_runs: int) -> int:
    """How many HTTP connections may be open: the soft open files limit less a reserve for the
    folder and its watcher, the database's connections and each import's files and sessions."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MOST
    reserve = 96 + 8 * concurrent_runs
    return max(_FEWEST, min(_MOST, soft - reserve))


class Throttle:
    """Log an event once per kind, then at most once per ``every`` seconds with its count."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (last logged, since then)

    def __call__(self, kind: str, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._kinds.get(kind, (-self.every, 0))
            count += 1
            if now - last < self.every:
                self._kinds[kind] = (last, count)
                return
            self._kinds[kind] = (now, 0)
        _log.warning(kind, occurrences=count, per_seconds=self.every, **fields)

    def install(self) -> None:
        """Take over uvicorn's own warnings (one per bad request otherwise)."""
        logger = logging.getLogger("uvicorn.error")
        for old in [f for f in logger.filters if isinstance(f, _Throttled)]:
            logger.removeFilter(old)
        logger.addFilter(_Throttled(self))

    def loop_errors(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An event loop exception handler: one line per kind, no traceback."""
        exc = context.get("exception")
        self(str(context.get("message") or "event loop error"), error=str(exc) if exc else None)


class _Throttled(logging.Filter):
    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self._throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        self._throttle(record.getMessage(), error=str(error) if error else None)
        return False


class _Bounded(H11Protocol):
    """h11 with a deadline per request and a cap on connections (``cap`` set by the subclass)."""

    cap: int = _MOST
    throttle: Throttle

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._active = time.monotonic()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.cap:
            self._evict()
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._active = time.monotonic()
        if self.conn.their_state is h11.IDLE:  # a request begins (or trickles): it has a deadline
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()

    def on_response_complete(self) -> None:
        self._active = time.monotonic()
        super().on_response_complete()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(REQUEST_SECONDS, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.throttle("closed HTTP connections that sent no whole request in time",
                          seconds=REQUEST_SECONDS)  # fmt: skip
            self.transport.abort()

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _evict(self) -> None:
        """Close the connection idle the longest, to make room for this one."""
        idle = [c for c in self.connections if isinstance(c, _Bounded) and c._idle()]
        if not idle:
            return  # every connection is answering; uvicorn's limit_concurrency answers 503
        oldest = min(idle, key=lambda c: c._active)
        self.throttle("closed idle HTTP connections to make room for new ones", cap=self.cap)
        oldest.transport.abort()
        self.connections.discard(oldest)


def protocol_class(cap: int, throttle: Throttle) -> type[H11Protocol]:
    """The protocol uvicorn builds each connection with, capped at ``cap`` connections."""
    return type("BoundedH11Protocol", (_Bounded,), {"cap": cap, "throttle": throttle})
