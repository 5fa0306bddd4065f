"""Frozen settings: command-line flag, then ``RECONCILER_*`` environment variable, then default.

The CLI builds one ``Settings`` and passes it down as ``settings=``. This is the only module that
reads the process environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reconciler.errors import UsageError

__all__ = ["DEFAULT_OWNER", "Settings", "load_settings"]

DEFAULT_OWNER = "reconcile"
LogFormat = Literal["json", "console"]
OutputFormat = Literal["text", "json"]
_LOG_LEVELS = ("debug", "info", "warning", "error")


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
    output: OutputFormat = "text"
    color: bool = False
    debug: bool = False
    max_deletes: int = 10
    import_workers: int = 2
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


def _default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "reconcile"


def _pick(flag: object, env: Mapping[str, str], *names: str) -> str | None:
    if flag is not None:
        return str(flag)
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


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
    import_workers: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting from flags (``None`` = not given), the environment and defaults."""
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
    fmt = _pick(log_format, env, "RECONCILER_LOG_FORMAT") or ("console" if stderr_tty else "json")
    if fmt not in ("json", "console"):
        raise UsageError(f"log format {fmt!r} is not one of: json, console")
    level = (_pick(log_level, env, "RECONCILER_LOG_LEVEL") or "info").lower()
    if level not in _LOG_LEVELS:
        raise UsageError(f"log level {level!r} is not one of: {', '.join(_LOG_LEVELS)}")
    out = output or "text"
    if out not in ("text", "json"):
        raise UsageError(f"output {out!r} is not one of: text, json")
    use_color = color if color is not None else (sys.stdout.isatty() and "NO_COLOR" not in env)
    workers = import_workers or int(_pick(None, env, "RECONCILER_IMPORT_WORKERS") or 2)
    if workers < 1:
        raise UsageError("import workers must be at least 1")
    return Settings(
        schedules_dir=sched,
        database_url=_pick(database_url, env, "RECONCILER_DATABASE_URL", "DATABASE_URL"),
        owner=_pick(owner, env, "RECONCILER_OWNER") or DEFAULT_OWNER,
        state_dir=Path(_pick(state_dir, env, "RECONCILER_STATE_DIR") or _default_state_dir(env)),
        local_roots=roots,
        log_format=fmt,  # type: ignore[arg-type]  # checked just above
        log_level=level,
        http_address=_pick(http_address, env, "RECONCILER_HTTP_ADDRESS") or "127.0.0.1:8080",
        api_key=env.get("RECONCILER_API_KEY") or None,
        webhook_secret=env.get("RECONCILER_WEBHOOK_SECRET") or None,
        output=out,  # type: ignore[arg-type]  # checked just above
        color=use_color,
        debug=debug,
        max_deletes=max_deletes if max_deletes is not None else 10,
        import_workers=workers,
        environ=env,
    )
