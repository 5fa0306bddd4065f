"""structlog set-up and secret redaction; the CLI calls ``configure`` once per process.

Logs go to stderr: readable on a terminal, one JSON object per line otherwise. A redaction
processor masks passwords in URLs and every secret value registered with ``register_secret`` (the
import engine registers each ``${VAR}`` value it resolves), so no secret reaches a log line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure", "get_logger", "redact", "register_secret"]

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
MASK = "***"


def register_secret(value: str) -> None:
    """Remember a resolved secret so that it is masked wherever it would be logged."""
    if len(value) >= 4:  # masking very short values would garble ordinary words
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with URL passwords and registered secret values masked."""
    text = _URL_PASSWORD.sub(rf"\g<scheme>{MASK}@", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure(*, log_format: str = "console", level: str = "info", color: bool = False) -> None:
    """Route structlog to stderr in the chosen format; idempotent."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=color)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger carrying ``logger_name=name``.

    It is a lazy proxy: modules call this at import time, before ``configure`` has run, and the
    logger still follows the configuration in force when it first logs.
    """
    return structlog.get_logger(logger_name=name)
