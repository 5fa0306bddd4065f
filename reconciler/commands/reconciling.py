"""The reconcile commands: ``plan`` (``--dry-run``), ``apply``, ``status`` and ``export``.

Each loads the folder (offline), opens the management database and hands the pure plan to the
store; the text and JSON renderings come from ``model.rendering``. ``plan`` judges its plan with
the guards apply uses (``model.guards``): a plan apply would refuse is rendered with the refusal,
its pull-request comment written all the same, and exits 3 as apply would. A successful ``apply``
clears the daemon's shown config error. ``status`` shows the stored names, paths and errors
through ``escaping.terminal`` (rows may hold anything).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.commands.arguments import ExportArguments, PlanArguments, StatusArguments
from reconciler.commands.output import emit_json
from reconciler.errors import EXIT_CHANGES, EXIT_OK, GuardRefused, UsageError
from reconciler.escaping import capped, terminal
from reconciler.logs import get_logger
from reconciler.model import guards
from reconciler.model.guards import Command, Refusal
from reconciler.model.plans import Desired, Op, Plan, make_plan
from reconciler.model.rendering import COMMENT_LIMIT, plan_document, render_markdown, render_plan
from reconciler.reading import load_desired
from reconciler.settings import Settings

if TYPE_CHECKING:
    import psycopg

    from reconciler.commands.reporting import StatusEntry
    from reconciler.store.daemon_state import DaemonState

__all__ = ["apply", "export", "plan", "status"]

_log = get_logger("reconciler.commands")


def _print_plan(
    plan: Plan,
    arguments: PlanArguments,
    settings: Settings,
    kind: str,
    refusal: Refusal | None = None,
) -> None:
    now = datetime.now(UTC)
    if settings.output == "json":
        emit_json(kind, plan_document(plan, refusal))
    elif settings.output == "markdown":
        path = Path(arguments.plan_file or "reconcile-plan.md")
        whole = render_markdown(plan, now=now, refusal=refusal)
        try:
            path.write_text(whole, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot save the plan to {path}: {exc.strerror}") from None
        comment = render_markdown(
            plan, now=now, limit=COMMENT_LIMIT, saved_as=str(path), refusal=refusal
        )
        sys.stdout.write(comment)
    else:
        sys.stdout.write(render_plan(plan, color=settings.color, now=now, refusal=refusal) + "\n")


def plan(arguments: PlanArguments, settings: Settings) -> int:
    """Print the plan and change nothing; with ``--against DIR``, offline against that folder.

    Exits as apply would: 3 when a guard refuses the plan (a folder that does not load included,
    with the refusal rendered in every format), 1 for a conflict, else 0 (2 with changes and
    ``--detailed-exitcode``).
    """
    from reconciler.store.applying import refuse_if_blocked

    owner = settings.owner
    try:
        desired = load_desired(settings.schedules_dir, owner=owner)
    except GuardRefused as exc:
        _print_plan(Plan((), owner), arguments, settings, "Plan", guards.invalid(exc.message))
        raise
    result = _planned(desired, arguments, settings)
    refusal = guards.evaluate(
        result,
        desired_count=len(desired.rows),
        # With nothing declared, every owned row is a delete: the plan counts them.
        owned_count=result.count(Op.DELETE),
        allow_empty=settings.allow_empty,
        max_deletes=settings.max_deletes,
    )
    _print_plan(result, arguments, settings, "Plan", refusal)
    refuse_if_blocked(result)  # as apply does, before the guards
    if refusal is not None:
        raise GuardRefused(refusal.message(Command.PLAN))
    if arguments.detailed_exitcode and not result.empty:
        return EXIT_CHANGES
    return EXIT_OK


def _planned(desired: Desired, arguments: PlanArguments, settings: Settings) -> Plan:
    """The plan against the database, or offline against the folder ``--against`` names."""
    from reconciler.store.applying import plan_against

    against = arguments.against
    if against:
        return make_plan(desired.rows, _base(Path(against), settings).rows, owner=settings.owner)
    from reconciler.store.connecting import open_store

    with open_store(settings, migrate=False) as conn:
        return plan_against(conn, desired, owner=settings.owner, adopt=arguments.adopt)


def _base(folder: Path, settings: Settings) -> Desired:
    """The folder planned against, read as if it were applied.

    A folder that does not exist, in a folder that does, is nothing before: the first pull
    request that adds ``schedules.d/`` has no folder on its base branch. A missing parent is
    more likely a wrong path (or a checkout that did not happen), so it stays an error.
    """
    if not folder.exists() and not folder.is_symlink():
        parent = folder.absolute().parent
        if not parent.is_dir():
            raise UsageError(
                f"cannot plan against {folder}: neither it nor {parent} exists (a missing folder "
                "in one that exists is planned against as nothing, for the first pull request "
                "that adds it)"
            )
        _log.info("the folder planned against does not exist: planning against nothing",
                  against=str(folder))  # fmt: skip
        return Desired(())
    try:
        return load_desired(folder, owner=settings.owner)
    except GuardRefused as exc:
        raise UsageError(f"cannot plan against {folder}: {exc.message}") from None


def apply(arguments: PlanArguments, settings: Settings) -> int:
    """Apply the plan once, in one transaction under the apply lock."""
    from reconciler.store.applying import apply_plan
    from reconciler.store.connecting import open_store

    if arguments.against:
        raise UsageError(
            "--against only plans (`reconcile plan --against DIR`); apply needs the database"
        )
    desired = load_desired(settings.schedules_dir, owner=settings.owner)
    with open_store(settings) as conn:
        result = apply_plan(
            conn,
            desired,
            owner=settings.owner,
            adopt=arguments.adopt,
            allow_empty=settings.allow_empty,
            max_deletes=settings.max_deletes,
        )
        _clear_daemon_error(conn, settings.owner)
    _print_plan(result, arguments, settings, "AppliedPlan")
    if settings.output == "text" and not result.empty:
        sys.stdout.write("Apply complete.\n")
    _log.info("applied", changes=len(result.changes), owner=settings.owner)
    if arguments.detailed_exitcode and not result.empty:
        return EXIT_CHANGES
    return EXIT_OK


def _clear_daemon_error(conn: psycopg.Connection[Any], owner: str) -> None:
    """The folder applied: the error the daemon last showed (``reconcile status``) is stale.

    Written only when there is one: a manual apply does not invent a daemon. The daemon records
    its own folder again when it next reads it.
    """
    from reconciler.store.daemon_state import read_state, record_load

    with conn.transaction():  # committed here: the connection is not in autocommit
        state = read_state(conn, owner)
        if state is None or state.config_error is None:
            return
        record_load(conn, owner, error=None)
    _log.info("cleared the daemon's config error: this apply succeeded", owner=owner)


def status(arguments: StatusArguments, settings: Settings) -> int:
    """List schedules from the database: timing, owner, last run and result, next run; a
    summary of every schedule by state; ``--project`` and ``--failing`` narrow the list."""
    from reconciler.commands.reporting import (
        daemon_document,
        fetch_status,
        render_daemon,
        render_status,
        render_summary,
        select,
        tally,
    )
    from reconciler.store.connecting import open_store
    from reconciler.store.daemon_state import read_state

    now = datetime.now(UTC)
    with open_store(settings) as conn:
        entries = fetch_status(conn, name=arguments.name, now=now)
        state = read_state(conn, settings.owner)
    project, failing = arguments.project, arguments.failing
    filtered = project is not None or failing
    listed = select(entries, project=project, failing=failing) if filtered else entries
    states = tally(entries)
    if settings.output == "json":
        summary = {"schedules": len(entries), "listed": len(listed), "states": states}
        emit_json(
            "Status",
            {
                "schedules": [e.document() for e in listed],
                "summary": summary,
                "daemon": daemon_document(state),
            },
        )
    else:
        table = render_status([_shown(e) for e in listed], filtered=filtered)
        summary_line = render_summary(len(entries), states, len(listed) if filtered else None)
        daemon = render_daemon(_shown_state(state), terminal(settings.owner), now)
        sys.stdout.write(f"{table}\n\n{terminal(summary_line)}\n{daemon}\n")
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


def export(arguments: ExportArguments, settings: Settings) -> int:
    """Write YAML documents for rows this reconciler does not own yet."""
    from reconciler.commands.exporting import export_rows
    from reconciler.store.connecting import open_store

    with open_store(settings) as conn:
        return export_rows(conn, settings=settings, out=arguments.out)
