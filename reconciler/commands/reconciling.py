"""The reconcile commands: ``plan`` (``--dry-run``), ``apply``, ``status`` and ``export``.

Each loads the folder (offline), opens the management database and hands the pure plan to the
store; the text and JSON renderings come from ``model.rendering``. ``status`` shows the stored
names, paths and errors through ``escaping.terminal`` (rows may hold anything).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.commands.output import emit_json
from reconciler.errors import EXIT_CHANGES, EXIT_OK, GuardRefused, UsageError
from reconciler.escaping import capped, terminal
from reconciler.logs import get_logger
from reconciler.model.plans import Desired, Plan, make_plan
from reconciler.model.rendering import COMMENT_LIMIT, plan_document, render_markdown, render_plan
from reconciler.reading import load_desired
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.commands.reporting import StatusEntry
    from reconciler.store.daemon_state import DaemonState

__all__ = ["apply", "export", "plan", "status"]

_log = get_logger("reconciler.commands")


def _print_plan(plan: Plan, args: argparse.Namespace, settings: Settings, kind: str) -> None:
    now = datetime.now(UTC)
    if settings.output == "json":
        emit_json(kind, plan_document(plan))
    elif settings.output == "markdown":
        path = Path(getattr(args, "plan_file", None) or "reconcile-plan.md")
        whole = render_markdown(plan, now=now)
        try:
            path.write_text(whole, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot save the plan to {path}: {exc.strerror}") from None
        sys.stdout.write(render_markdown(plan, now=now, limit=COMMENT_LIMIT, saved_as=str(path)))
    else:
        sys.stdout.write(render_plan(plan, color=settings.color, now=now) + "\n")


def plan(args: argparse.Namespace, settings: Settings) -> int:
    """Print the plan and change nothing; with ``--against DIR``, offline against that folder."""
    from reconciler.store.applying import plan_against, refuse_if_blocked

    desired = load_desired(settings.schedules_dir, owner=settings.owner)
    against = getattr(args, "against", None)
    if against:
        result = make_plan(desired.rows, _base(Path(against), settings).rows, owner=settings.owner)
    else:
        from reconciler.store.connecting import open_store

        with open_store(settings, migrate=False) as conn:
            result = plan_against(conn, desired, owner=settings.owner, adopt=_flag(args, "adopt"))
    _print_plan(result, args, settings, "Plan")
    refuse_if_blocked(result)
    if _flag(args, "detailed_exitcode") and not result.empty:
        return EXIT_CHANGES
    return EXIT_OK


def _base(folder: Path, settings: Settings) -> Desired:
    """The folder planned against, read as if it were applied."""
    try:
        return load_desired(folder, owner=settings.owner)
    except GuardRefused as exc:
        raise UsageError(f"cannot plan against {folder}: {exc.message}") from None


def apply(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the plan once, in one transaction under the apply lock."""
    from reconciler.store.applying import apply_plan
    from reconciler.store.connecting import open_store

    if getattr(args, "against", None):
        raise UsageError(
            "--against only plans (`reconcile plan --against DIR`); apply needs the database"
        )
    desired = load_desired(settings.schedules_dir, owner=settings.owner)
    with open_store(settings) as conn:
        result = apply_plan(
            conn,
            desired,
            owner=settings.owner,
            adopt=_flag(args, "adopt"),
            allow_empty=_flag(args, "allow_empty"),
            max_deletes=settings.max_deletes,
        )
    _print_plan(result, args, settings, "AppliedPlan")
    if settings.output == "text" and not result.empty:
        sys.stdout.write("Apply complete.\n")
    _log.info("applied", changes=len(result.changes), owner=settings.owner)
    if _flag(args, "detailed_exitcode") and not result.empty:
        return EXIT_CHANGES
    return EXIT_OK


def status(args: argparse.Namespace, settings: Settings) -> int:
    """List schedules from the database: timing, owner, last run and result, next run."""
    from reconciler.commands.reporting import (
        daemon_document,
        fetch_status,
        render_daemon,
        render_status,
    )
    from reconciler.store.connecting import open_store
    from reconciler.store.daemon_state import read_state

    now = datetime.now(UTC)
    with open_store(settings) as conn:
        entries = fetch_status(conn, name=getattr(args, "name", None), now=now)
        state = read_state(conn, settings.owner)
    if settings.output == "json":
        emit_json(
            "Status",
            {"schedules": [e.document() for e in entries], "daemon": daemon_document(state)},
        )
    else:
        daemon = render_daemon(_shown_state(state), terminal(settings.owner), now)
        sys.stdout.write(render_status([_shown(e) for e in entries]) + "\n\n" + daemon + "\n")
    return EXIT_OK


def _shown(entry: StatusEntry) -> StatusEntry:
    """``entry`` with its stored texts escaped for a terminal."""
    texts = ("name", "project", "timing", "timezone", "owner", "last_result", "source")
    escaped: dict[str, Any] = {k: terminal(v) for k in texts if (v := getattr(entry, k))}
    return replace(entry, **escaped)


def _shown_state(state: DaemonState | None) -> DaemonState | None:
    """The daemon's row with its leader and config error escaped; the error keeps its lines."""
    if state is None:
        return None
    error = state.config_error
    return replace(
        state,
        leader=terminal(state.leader) if state.leader else None,
        config_error=terminal(capped(error), lines=True) if error else None,
    )


def export(args: argparse.Namespace, settings: Settings) -> int:
    """Write YAML documents for rows this reconciler does not own yet."""
    from reconciler.commands.exporting import export_rows
    from reconciler.store.connecting import open_store

    with open_store(settings) as conn:
        return export_rows(conn, settings=settings, out=getattr(args, "out", None))


def _flag(args: argparse.Namespace, name: str) -> bool:
    return bool(getattr(args, name, False))
