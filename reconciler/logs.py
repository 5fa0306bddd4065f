"""structlog set-up and secret redaction; the CLI calls ``configure`` once per process.

structlog (with what it imports: asyncio, and rich where installed) takes a fifth of a short
command's start, so it is loaded with the first line written at the configured level or above,
not before: ``reconcile status`` or ``history`` at the default level write none and never load
it. ``get_logger`` gives a small stand-in that drops lines below that level on its own.

Logs go to stderr: readable on a terminal, one JSON object per line otherwise. A redaction
processor masks passwords in every form libpq accepts (URI user info, ``?password=``, keyword/value
``password=...`` quoted or not) and every secret value registered with ``register_secret`` (the
import engine registers each ``${VAR}`` value it resolves), so no secret reaches a log line.
``mask_url`` is for a string known to be a connection string: it parses it as libpq does, so
whatever the quoting, the password is what gets masked; every place that shows a database URL
(error messages, logs) shows it through ``mask_url``.

Every value is capped (``escaping.capped``); on a terminal (the console format) every value
is also shown through ``escaping.terminal``: a file name or a server's message cannot recolour
the terminal or fake a log line. Libraries that log through the ``logging`` module (psycopg's
"error ignored terminating ...", uvicorn) and ``warnings`` go through structlog too, so a
JSON log holds nothing but JSON lines.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import ModuleType
from typing import IO, Any
from urllib.parse import unquote

from reconciler.escaping import capped, terminal

__all__ = [
    "MASK",
    "configure",
    "get_logger",
    "mask_url",
    "one_line",
    "redact",
    "register_secret",
]

MASK = "***"
# The patterns behind ``redact``: free text may hold a connection string anywhere in it.
_PATTERNS = (
    # URI user info: postgresql://user:PASSWORD@host (any scheme: sftp:// too). A scheme is
    # tried only from the start of a run of scheme characters, and a password is at most 1 KiB:
    # each attempt is bounded, so a hostile text costs time linear in its length.
    re.compile(
        r"(?P<head>(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]{1,1024}(?P<tail>@)",
        re.IGNORECASE,
    ),
    # URI query parameter: ?password=... &sslpassword=...
    re.compile(r"(?P<head>[?&][\w.-]*password=)[^&#\s]*(?P<tail>)", re.IGNORECASE),
    # keyword/value: password=x, password = 'a b', password='it\'s', PGPASSWORD=x
    re.compile(
        r"(?P<head>(?<![^\s'\"(\[{,;])[\w.-]*password\s*=\s*)"
        r"(?:'(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)+)(?P<tail>)",
        re.IGNORECASE,
    ),
)
_CONNINFO_SECRETS = ("password", "sslpassword")  # libpq keywords whose values are secrets
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_LEVELS = logging.getLevelNamesMapping()


class _Setup:
    """What ``configure`` asked for: the configuration not yet given to structlog (not loaded
    yet), and the level below which a line is dropped without loading it (0 until configured:
    structlog's defaults decide then, as they always did)."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None
        self.threshold = 0
        self.lock = threading.Lock()


_setup = _Setup()


def register_secret(value: str) -> None:
    """Remember a resolved secret so that it is masked wherever it would be logged."""
    if len(value) >= 4:  # masking very short values would garble ordinary words
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with connection-string passwords and registered secret values masked."""
    for pattern in _PATTERNS:
        text = pattern.sub(rf"\g<head>{MASK}\g<tail>", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, redacted: libraries' messages span lines."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0].strip()) if lines else type(exc).__name__


def mask_url(url: str) -> str:
    """A database URL or conninfo string fit to show: as written, its passwords masked.

    libpq's own parser (through psycopg) is the judge: the string is shown as written with its
    passwords masked when libpq reads that as the same settings with masked passwords, and
    rebuilt from the parsed settings otherwise, whatever the quoting or escaping. A string libpq
    cannot parse is masked by pattern and cut after its first password, since without libpq's
    reading nothing says where that password ends.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url)
    except ProgrammingError:
        shown = redact(url)
        cut = shown.find(MASK)
        return shown if cut < 0 else shown[: cut + len(MASK)] + " ..."
    masked = {**params, **{key: MASK for key in _CONNINFO_SECRETS if params.get(key)}}
    candidates = [redact(url)]
    if url.startswith(("postgresql://", "postgres://")):
        candidates.append(_mask_uri(url))
    for candidate in candidates:
        try:
            if conninfo_to_dict(candidate) == masked:
                return redact(candidate)
        except ProgrammingError:
            continue
    return redact(make_conninfo("", **masked))


def _mask_uri(url: str) -> str:
    scheme, _, rest = url.partition("://")
    rest, hash_, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":" + MASK
    items = []
    for item in query.split("&"):
        key, equals, _value = item.partition("=")
        items.append(f"{key}={MASK}" if equals and unquote(key) in _CONNINFO_SECRETS else item)
    query = "&".join(items)
    return f"{scheme}://{userinfo}{at}{hosts}{slash}{path}{question}{query}{hash_}{fragment}"


def _redact_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


_MULTILINE = frozenset({"exception", "stack"})  # our own tracebacks keep their lines


def _cap_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Values echoing input (a huge header in an error) are cut: a line stays kilobytes."""
    for key, value in event.items():
        if isinstance(value, str) and key not in _MULTILINE:
            event[key] = capped(value)
    return event


def _escape_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = terminal(value, lines=key in _MULTILINE)
    return event


def _structlog() -> ModuleType:
    """structlog, loaded and given the configuration ``configure`` asked for, on first need."""
    import structlog

    if _setup.pending is not None:
        with _setup.lock:
            if _setup.pending is not None:
                _apply(structlog, **_setup.pending)
                _setup.pending = None
    return structlog


class _Logger:
    """What ``get_logger`` gives: structlog's logger for a name, structlog loaded only once a
    line is to be written (at the configured level or above)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def log(self, level: int, event: Any = None, *args: Any, **kw: Any) -> Any:
        if level < _setup.threshold:
            return None
        return _structlog().get_logger(logger_name=self._name).log(level, event, *args, **kw)

    def _write(self, method: str, level: int, event: Any, args: Any, kw: Any) -> Any:
        if level < _setup.threshold:
            return None
        return getattr(_structlog().get_logger(logger_name=self._name), method)(event, *args, **kw)

    def debug(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("debug", logging.DEBUG, event, args, kw)

    def info(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("info", logging.INFO, event, args, kw)

    def warning(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("warning", logging.WARNING, event, args, kw)

    def error(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("error", logging.ERROR, event, args, kw)

    def exception(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("exception", logging.ERROR, event, args, kw)

    def critical(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._write("critical", logging.CRITICAL, event, args, kw)


class _ToStructlog(logging.Handler):
    """Hands the records of the ``logging`` module (other libraries') to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            _Logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # a logging failure must not break the caller; logging reports it
            self.handleError(record)


def _route_logging() -> None:
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)]
    root.addHandler(_ToStructlog())
    root.setLevel(logging.WARNING)  # libraries' info and debug lines are theirs, not ours
    logging.captureWarnings(True)


def configure(*, log_format: str = "console", level: str = "info", color: bool = False) -> None:
    """Route structlog, the ``logging`` module and ``warnings`` to stderr in the chosen format;
    idempotent. structlog gets this configuration when it is first loaded, or now if it is."""
    with _setup.lock:
        _setup.threshold = _LEVELS[level.upper()]
        # This stderr, bound now as when structlog was set up here at once.
        _setup.pending = {
            "log_format": log_format, "level": _setup.threshold, "color": color, "file": sys.stderr
        }  # fmt: skip
    _route_logging()
    if "structlog" in sys.modules:  # loaded already (a test capturing logs): set up now, so a
        _structlog()  # configuration made after this one is not overwritten by this one


def _apply(
    structlog: ModuleType, *, log_format: str, level: int, color: bool, file: IO[str]
) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=color)
    )
    escape = [] if log_format == "json" else [_escape_event]  # JSON escapes controls itself
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            _cap_event,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger whose lines carry ``logger_name=name``.

    Modules call this at import time, before ``configure`` has run: the logger follows the
    configuration in force when it writes a line, and loads structlog then.
    """
    return _Logger(name)
