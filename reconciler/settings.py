"""Frozen settings: command-line flag, then ``RECONCILER_*`` environment variable, then default.

The CLI builds one ``Settings`` and passes it down as ``settings=``. This is the only module that
reads the process environment. Every value is checked here, once: a bad one is a ``UsageError``
naming the flag or variable it came from (and never repeating a secret's value), so no command
meets a malformed setting later.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from reconciler.errors import UsageError
from reconciler.model.destinations import Destinations, parse_destinations

__all__ = ["DEFAULT_OWNER", "MAX_IMPORT_WORKERS", "Settings", "load_settings"]

DEFAULT_OWNER = "reconcile"
MAX_IMPORT_WORKERS = 64  # each is a connection to the target database (default limit: 100)
LogFormat = Literal["json", "console"]
OutputFormat = Literal["text", "json", "github", "markdown"]
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_OUTPUTS = ("text", "json", "github", "markdown")
# reconcile serve's numbers: setting, variable, default, lowest, highest.
_DAEMON_NUMBERS = (
    ("concurrent_runs", "RECONCILER_CONCURRENT_RUNS", 8, 1, 256),
    ("resync_seconds", "RECONCILER_RESYNC_SECONDS", 60, 1, 86400),
    ("shutdown_grace", "RECONCILER_SHUTDOWN_GRACE", 25, 0, 3600),
    # How long a file must be unchanged before a run takes it, for projects with no
    # delivery.settle of their own.
    ("settle_seconds", "RECONCILER_SETTLE_SECONDS", 10, 0, 86400),
    # Job history: the leader prunes jobs that started more than this many days ago (0: keep
    # every job), always keeping the newest job_retention_min of each schedule.
    ("job_retention_days", "RECONCILER_JOB_RETENTION_DAYS", 30, 0, 36500),
    ("job_retention_min", "RECONCILER_JOB_RETENTION_MIN", 100, 0, 1_000_000),
    # A leader whose heartbeat is older than this is fenced by a follower: its session is
    # terminated and the follower leads. It beats six times within it (at most every 5 s).
    ("leader_fence_seconds", "RECONCILER_LEADER_FENCE_SECONDS", 30, 3, 3600),
)
# Patterns, compiled on first use (re caches them): `reconcile validate` starts faster.
_HOSTNAME = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
_PRINTABLE = r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?"  # visible ASCII, no space at either end


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a command needs to know about its environment, resolved once."""

    schedules_dir: Path = Path("schedules.d")
    database_url: str | None = None
    owner: str = DEFAULT_OWNER
    state_dir: Path = Path(".reconcile")
    local_roots: tuple[Path, ...] = ()
    log_format: LogFormat = "console"
    log_level: str = "info"
    http_address: str = "127.0.0.1:8080"
    api_key: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    callback_allow: Destinations = field(default_factory=Destinations)
    output: OutputFormat = "text"
    color: bool = False
    debug: bool = False
    max_deletes: int = 10
    allow_empty: bool = False
    import_workers: int = 2
    concurrent_runs: int = 8
    resync_seconds: int = 60
    shutdown_grace: int = 25
    settle_seconds: int = 10
    job_retention_days: int = 30
    job_retention_min: int = 100
    leader_fence_seconds: int = 30
    delete_settle_seconds: int = 10
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


class _Given(NamedTuple):
    """A value and where it came from, for messages: ``--log-level`` or ``RECONCILER_...``."""

    text: str
    origin: str

    def shown(self, *, secret: bool = False) -> str:
        if secret:
            return self.origin
        joiner = " " if self.origin.startswith("-") else "="
        return f"{self.origin}{joiner}{self.text!r}"


def _given(flag: object, flag_name: str, env: Mapping[str, str], *names: str) -> _Given | None:
    if flag is not None:
        return _Given(str(flag), flag_name)
    for name in names:
        value = env.get(name)
        if value:
            return _Given(value, name)
    return None


def _pick(flag: object, env: Mapping[str, str], *names: str) -> str | None:
    given = _given(flag, "", env, *names)
    return given.text if given else None


def _choice(given: _Given | None, allowed: tuple[str, ...], default: str) -> str:
    if given is None:
        return default
    value = given.text.strip().lower()
    if value not in allowed:
        raise UsageError(f"{given.shown()} is not one of: {', '.join(allowed)}")
    return value


def _whole_number(given: _Given | None, default: int, low: int, high: int) -> int:
    if given is None:
        return default
    try:
        value = int(given.text.strip())
    except ValueError:
        raise UsageError(f"{given.shown()} is not a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"{given.shown()} is out of range: give {low} to {high}")
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _yes_no(given: _Given | None, default: bool) -> bool:
    if given is None:
        return default
    value = given.text.strip().lower()
    if value not in _TRUE + _FALSE:
        raise UsageError(f"{given.shown()} is not one of: true, false (or 1, 0, yes, no)")
    return value in _TRUE


def _color(env: Mapping[str, str], *, tty: bool) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org) or TERM is dumb: a terminal
    that shows escape sequences as text (Emacs' shell, some CI logs). --no-color always wins."""
    return tty and "NO_COLOR" not in env and env.get("TERM") != "dumb"


def _http_address(given: _Given | None) -> str:
    if given is None:
        return "127.0.0.1:8080"
    text = given.text.strip()
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        valid_host = _is_ip(host[1:-1])
    else:
        valid_host = ":" not in host and (_is_ip(host) or bool(re.fullmatch(_HOSTNAME, host)))
    if not (colon and valid_host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise UsageError(
            f"{given.shown()} is not host:port (examples: 127.0.0.1:8080, 0.0.0.0:8080, "
            "[::]:8080; port 0 picks a free one)"
        )
    return text


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _owner(given: _Given | None) -> str:
    if given is None:
        return DEFAULT_OWNER
    if not re.fullmatch(_PRINTABLE, given.text) or len(given.text) > 200:
        raise UsageError(
            f"{given.shown()} is not an owner id: use up to 200 visible ASCII characters, "
            "without leading or trailing spaces"
        )
    return given.text


def _key(given: _Given | None) -> str | None:
    """An HTTP header value or signing key: a stray newline from a mounted file is refused."""
    if given is None:
        return None
    if not re.fullmatch(_PRINTABLE, given.text):
        raise UsageError(
            f"{given.shown(secret=True)} must be visible ASCII characters without leading or "
            "trailing whitespace (a secret file's final newline is a common cause)"
        )
    return given.text


def _webhook_secret(given: _Given | None) -> str | None:
    import base64
    import binascii

    secret = _key(given)
    if given is not None and secret is not None and secret.startswith("whsec_"):
        try:
            decoded = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise UsageError(
                f"{given.shown(secret=True)} starts with whsec_ but the rest is not base64 "
                "(Standard Webhooks secrets are whsec_ and the base64 of the key)"
            )
    return secret


def _callback_allow(given: _Given | None) -> Destinations:
    if given is None:
        return Destinations()
    try:
        return parse_destinations(given.text)
    except ValueError as exc:
        raise UsageError(f"{given.shown()}: {exc}") from None


def _default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "state")
        except RuntimeError:  # no HOME and no passwd entry: common for arbitrary container uids
            raise UsageError(
                "cannot find a home folder for local state; set RECONCILER_STATE_DIR"
            ) from None
    return Path(base) / "reconcile"


def load_settings(
    *,
    schedules_dir: str | None = None,
    database_url: str | None = None,
    owner: str | None = None,
    state_dir: str | None = None,
    local_roots: str | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
    http_address: str | None = None,
    output: str | None = None,
    color: bool | None = None,
    debug: bool = False,
    max_deletes: int | None = None,
    allow_empty: bool | None = None,
    import_workers: int | None = None,
    delete_settle_seconds: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting from flags (``None`` = not given), the environment and defaults.

    Raises ``UsageError`` for a value that cannot work, naming its flag or variable.
    """
    env = dict(os.environ if environ is None else environ)
    sched = Path(_pick(schedules_dir, env, "RECONCILER_SCHEDULES_DIR") or "schedules.d")
    roots_text = _pick(local_roots, env, "RECONCILER_LOCAL_ROOTS")
    # Safe default: only files beside the schedules folder (the repository that holds it).
    roots = (
        tuple(Path(p) for p in roots_text.split(os.pathsep) if p)
        if roots_text
        else (sched.absolute().parent,)
    )
    stderr_tty = sys.stderr.isatty()
    fmt = _choice(
        _given(log_format, "--log-format", env, "RECONCILER_LOG_FORMAT"),
        _LOG_FORMATS,
        "console" if stderr_tty else "json",
    )
    level = _choice(
        _given(log_level, "--log-level", env, "RECONCILER_LOG_LEVEL"), _LOG_LEVELS, "info"
    )
    out = _choice(_given(output, "--output", {}), _OUTPUTS, "text")
    use_color = color if color is not None else _color(env, tty=sys.stdout.isatty())
    workers = _whole_number(
        _given(import_workers, "import_workers", env, "RECONCILER_IMPORT_WORKERS"),
        2,
        1,
        MAX_IMPORT_WORKERS,
    )
    daemon = {
        name: _whole_number(_given(None, "", env, variable), default, low, high)
        for name, variable, default, low, high in _DAEMON_NUMBERS
    }
    # The safety guards' overrides: the daemon's only way to allow a large delete or an empty
    # folder, and the same for plan and apply (a flag still wins).
    deletes = _whole_number(
        _given(max_deletes, "--max-deletes", env, "RECONCILER_MAX_DELETES"), 10, 0, 2**31 - 1
    )
    empty = _yes_no(
        _given(True if allow_empty else None, "--allow-empty", env, "RECONCILER_ALLOW_EMPTY"), False
    )
    delete_settle = _whole_number(
        _given(
            delete_settle_seconds,
            "--delete-settle-seconds",
            env,
            "RECONCILER_DELETE_SETTLE_SECONDS",
        ),
        10,
        0,
        86400,
    )
    state = _pick(state_dir, env, "RECONCILER_STATE_DIR")
    return Settings(
        schedules_dir=sched,
        database_url=_pick(database_url, env, "RECONCILER_DATABASE_URL", "DATABASE_URL"),
        owner=_owner(_given(owner, "--owner", env, "RECONCILER_OWNER")),
        state_dir=Path(state) if state else _default_state_dir(env),
        local_roots=roots,
        log_format=fmt,  # type: ignore[arg-type]  # one of _LOG_FORMATS, checked by _choice
        log_level=level,
        http_address=_http_address(
            _given(http_address, "--http-address", env, "RECONCILER_HTTP_ADDRESS")
        ),
        api_key=_key(_given(None, "", env, "RECONCILER_API_KEY")),
        webhook_secret=_webhook_secret(_given(None, "", env, "RECONCILER_WEBHOOK_SECRET")),
        callback_allow=_callback_allow(_given(None, "", env, "RECONCILER_CALLBACK_ALLOW")),
        output=out,  # type: ignore[arg-type]  # one of _OUTPUTS, checked by _choice
        color=use_color,
        debug=debug,
        max_deletes=deletes,
        allow_empty=empty,
        import_workers=workers,
        **daemon,
        delete_settle_seconds=delete_settle,
        environ=env,
    )
