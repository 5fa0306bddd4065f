"""The completion callback: a JSON POST to a schedule's ``callback_url``, signed when configured.

``imports.runs.running`` hands a job's ``Callback`` over once the job has its final status: to
``reconcile serve``'s ``Courier`` (its own thread and small bounded queue, so a slow receiver
never holds a run slot; a full queue records the callback dropped), or, for ``reconcile run``,
to ``deliver`` within ``RUN_BUDGET`` seconds in all. The outcome is stored in ``cpi_jobs.callback``
and never changes the job's status.

Each attempt (``imports.runs.posting``) has one deadline for resolving, connecting, sending and
reading, reads at most a few kB of the reply, and goes only where the destination policy
(``RECONCILER_CALLBACK_ALLOW``, ``model.destinations``) allows. A network error, a timeout, 408,
429 or 5xx is retried with exponential backoff up to ``attempts`` times; any other answer, and a
refused destination or a URL that cannot be sent, is final. Redirects are not followed (a POST
must not turn into a GET). With ``RECONCILER_WEBHOOK_SECRET`` set, requests are signed as
Standard Webhooks specifies (https://www.standardwebhooks.com): ``webhook-id`` (the job id, the
same on every retry so the receiver can deduplicate), ``webhook-timestamp`` and
``webhook-signature``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler import __version__
from reconciler.errors import ReconcileError
from reconciler.imports.runs.posting import Refused, post
from reconciler.logs import get_logger
from reconciler.model.destinations import Destinations

if TYPE_CHECKING:
    from reconciler.settings import Settings

__all__ = ["ATTEMPTS", "QUEUE", "RUN_BUDGET", "TIMEOUT", "Callback", "Courier", "deliver", "sign"]

TIMEOUT = 10.0  # seconds for one attempt in all: resolve, connect, send, read the status
ATTEMPTS = 3
BACKOFF = 1.0  # seconds before the second attempt; doubles each time
RUN_BUDGET = 60.0  # seconds reconcile run waits for its callback, every attempt included
QUEUE = 64  # callbacks waiting in reconcile serve; one more is dropped, and recorded so
_RETRY_STATUS = frozenset({408, 429})
_log = get_logger("reconciler.callbacks")


@dataclass(frozen=True, slots=True)
class Callback:
    """One job's callback, not yet sent."""

    url: str
    payload: dict[str, Any]
    job_id: str


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``.

    A ``whsec_`` secret's key is the base64 after the prefix (as Standard Webhooks libraries
    read it); any other secret's key is its own bytes.
    """
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _host(url: str) -> str:
    """The host for logs, never the whole URL: its query may carry a token."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    message_id: str,
    secret: str | None = None,
    destinations: Destinations | None = None,
    timeout: float = TIMEOUT,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    budget: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stopping: threading.Event | None = None,
) -> dict[str, Any]:
    """POST ``payload`` to ``url`` with retries; the delivery outcome, never an exception.

    ``budget`` bounds every attempt and wait together; ``stopping`` set ends the retries.
    """
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    host, allow = _host(url), destinations or Destinations()
    ends = time.monotonic() + (budget if budget is not None else float("inf"))
    outcome: dict[str, Any] = {"delivered": False, "attempts": 0, "status_code": None}
    error: str | None = "not sent"
    for attempt in range(1, attempts + 1):
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"reconcile/{__version__}",
            "webhook-id": message_id,
        }
        if secret:
            timestamp = int(time.time())
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(secret, message_id, timestamp, body)
        deadline = min(time.monotonic() + timeout, ends)
        try:
            status = post(url, body, headers, deadline=deadline, destinations=allow)
            retry = status >= 500 or status in _RETRY_STATUS
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except Refused as exc:  # never sent: nothing to retry
            outcome.update(error=exc.reason)
            _log.warning("callback refused", host=host, error=exc.reason)
            return outcome
        except OSError as exc:
            status, retry = None, True
            error = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        outcome.update(attempts=attempt, status_code=status, error=error, delivered=error is None)
        if error is None:
            _log.info("callback delivered", host=host, status=status, attempts=attempt)
            return outcome
        wait = backoff * 2 ** (attempt - 1)
        if not retry or attempt == attempts or time.monotonic() + wait >= ends:
            break
        if stopping is not None and (stopping.is_set() or stopping.wait(wait)):
            break
        if stopping is None:
            sleep(wait)
    _log.warning("callback failed", host=host, attempts=outcome["attempts"], error=error)
    return outcome


def _not_sent(reason: str) -> dict[str, Any]:
    return {"delivered": False, "attempts": 0, "status_code": None, "error": reason}


class Courier:
    """Sends ``reconcile serve``'s callbacks from one thread and a queue of ``capacity``.

    ``send`` never waits; ``stop`` ends the retries and records what was still waiting.
    """

    def __init__(self, settings: Settings, *, url: str, capacity: int = QUEUE) -> None:
        self._settings, self._url, self._capacity = settings, url, capacity
        self._queue: queue.Queue[Callback | None] = queue.Queue(capacity)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, callback: Callback) -> dict[str, Any] | None:
        """Queue ``callback``: ``None``, or the outcome to record when it is dropped."""
        with self._lock:
            if self._stopping.is_set():
                return _not_sent("not sent: reconcile serve was stopping")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="callbacks", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(callback)
            except queue.Full:
                reason = (
                    f"dropped: {self._capacity} callbacks were already waiting to be sent "
                    "(slow or unreachable receivers)"
                )
                _log.warning("callback dropped", job_id=callback.job_id, error=reason)
                return _not_sent(reason)
        return None

    def stop(self, grace: float) -> None:
        """Send nothing more: wait up to ``grace`` s for the callback being sent (its retries
        end) and record the waiting ones as not sent."""
        with self._lock:
            self._stopping.set()
            thread = self._thread
        left: list[Callback] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left.append(item)
        if thread is not None:
            self._queue.put(None)
            thread.join(max(grace, 0.0))
        for callback in left:
            self._record(callback, _not_sent("not sent: reconcile serve stopped first"))

    def _work(self) -> None:
        while (callback := self._queue.get()) is not None:
            if self._stopping.is_set():
                self._record(callback, _not_sent("not sent: reconcile serve stopped first"))
                continue
            try:
                outcome = deliver(
                    callback.url, callback.payload, message_id=callback.job_id,
                    secret=self._settings.webhook_secret,
                    destinations=self._settings.callback_allow,
                    timeout=TIMEOUT, attempts=ATTEMPTS, backoff=BACKOFF, stopping=self._stopping,
                )  # fmt: skip
            except Exception as exc:  # a bug must not end the thread: later callbacks wait on it
                _log.exception("cannot send the callback", job_id=callback.job_id)
                outcome = _not_sent(f"not sent: unexpected error: {type(exc).__name__}")
            self._record(callback, outcome)

    def _record(self, callback: Callback, outcome: dict[str, Any]) -> None:
        import psycopg

        from reconciler.store.connecting import connect
        from reconciler.store.jobs import record_callback

        try:
            with connect(self._url, autocommit=True) as conn:
                record_callback(conn, callback.job_id, outcome)
        except (psycopg.Error, ReconcileError) as exc:
            message = exc.message if isinstance(exc, ReconcileError) else str(exc)
            _log.error("cannot record the callback", job_id=callback.job_id, error=message)
