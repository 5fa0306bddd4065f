"""The completion callback: a JSON POST to a schedule's ``callback_url``, signed when configured.

``imports.runs.running`` calls ``deliver`` once a job has its final status and stores the outcome in
``cpi_jobs.callback``; the outcome never changes the job's status. Each attempt has a timeout; a
network error, a timeout, 408, 429 or 5xx is retried with exponential backoff up to ``attempts``
times, any other answer is final. Redirects are not followed (a POST must not turn into a GET).
With ``RECONCILER_WEBHOOK_SECRET`` set, requests are signed as Standard Webhooks specifies
(https://www.standardwebhooks.com): ``webhook-id`` (the job id, the same on every retry so the
receiver can deduplicate), ``webhook-timestamp`` and ``webhook-signature``. The standard library
suffices for one POST, so no HTTP client dependency is added.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from reconciler import __version__
from reconciler.logs import get_logger

__all__ = ["ATTEMPTS", "TIMEOUT", "deliver", "sign"]

TIMEOUT = 10.0
ATTEMPTS = 3
BACKOFF = 1.0  # seconds before the second attempt; doubles each time
_RETRY_STATUS = frozenset({408, 429})
_log = get_logger("reconciler.callbacks")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_opener = urllib.request.build_opener(_NoRedirect)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _attempt(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bool]:
    """POST once: ``(status, retry?)``; network failures raise ``OSError``."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=timeout) as response:
            response.read()
            return int(response.status), False
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, exc.code >= 500 or exc.code in _RETRY_STATUS


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    message_id: str,
    secret: str | None = None,
    timeout: float = TIMEOUT,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST ``payload`` to ``url`` with retries; the delivery outcome, never an exception."""
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    host = urlsplit(url).hostname or "?"  # never the whole URL: its query may carry a token
    outcome: dict[str, Any] = {"delivered": False, "attempts": 0, "status_code": None}
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
        error: str | None
        try:
            status, retry = _attempt(url, body, headers, timeout)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            status, retry = None, True
            error = "timed out" if isinstance(reason, TimeoutError) else str(reason)
        outcome.update(attempts=attempt, status_code=status, error=error, delivered=error is None)
        if error is None:
            _log.info("callback delivered", host=host, status=status, attempts=attempt)
            return outcome
        if not retry or attempt == attempts:
            break
        sleep(backoff * 2 ** (attempt - 1))
    _log.warning("callback failed", host=host, attempts=outcome["attempts"], error=error)
    return outcome
