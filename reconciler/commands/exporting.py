"""``reconcile export``: YAML documents for rows this reconciler does not own yet.

A team moving from the old REST API to Git exports its schedules, commits the files, and applies
once with ``--adopt``. Projects are exported as ``external: true`` (they stay where they are);
secrets found in the rows are replaced by ``${VAR}`` references and reported, never written out.
``local_files`` are stored relative to the schedules folder and written relative to the file
they are written into, so they read the same files (printed documents belong at the top).
``--output json`` prints one ``Export`` document: each project's documents, the file they were
written to (``null`` when printed), and the secrets replaced.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from reconciler.commands.output import emit_json
from reconciler.escaping import terminal
from reconciler.logs import get_logger
from reconciler.model.durations import RETRY_BACKOFF_DEFAULT
from reconciler.model.specs import API_VERSION
from reconciler.settings import Settings
from reconciler.store.schedules import ScheduleRecord, fetch_unowned

if TYPE_CHECKING:
    import psycopg

__all__ = ["export_rows", "schedule_documents"]

_log = get_logger("reconciler.export")
_SECRET_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


def _variable(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _relocator(schedules_dir: Path, folder: Path) -> Callable[[list[str]], list[str]]:
    """Globs relative to ``schedules_dir`` rewritten relative to ``folder``; absolute ones kept."""
    root, there = os.path.abspath(schedules_dir), os.path.abspath(folder)

    def relocate(globs: list[str]) -> list[str]:
        return [
            g
            if posixpath.isabs(g)
            else Path(os.path.relpath(os.path.normpath(os.path.join(root, g)), there)).as_posix()
            for g in globs
        ]

    return relocate


def _schedule_spec(
    row: ScheduleRecord, warnings: list[str], relocate: Callable[[list[str]], list[str]]
) -> dict[str, Any]:
    name = row.name
    spec: dict[str, Any] = {"project": row.project}
    if row.schedule_type == "cron":
        spec["cron"] = row.cron_expression
    else:
        spec["interval"] = row.interval_seconds
    spec["timezone"] = row.timezone or "UTC"
    spec["enabled"] = True if row.enabled is None else bool(row.enabled)
    callback, override, local = row.callback_url, row.sftp_override, row.local_files
    if callback:
        spec["callback_url"] = callback
    if override:
        override = dict(override)
        password = override.get("password")
        if password is not None and not _SECRET_REF.match(str(password)):
            variable = f"{_variable(name)}_SFTP_PASSWORD"
            override["password"] = f"${{{variable}}}"
            warnings.append(f"schedule {name}: its SFTP password is now ${{{variable}}}; set it")
        spec["sftp_override"] = override
    if local:
        is_globs = isinstance(local, list) and all(isinstance(g, str) for g in local)
        spec["local_files"] = relocate(local) if is_globs else local
    grace = row.misfire_grace_seconds
    if grace is not None and grace != 300:
        spec["misfire_grace"] = grace
    if row.timeout_seconds is not None:
        spec["timeout"] = row.timeout_seconds
    if row.retries:
        spec["retries"] = row.retries
    backoff = row.retry_backoff_seconds
    if backoff is not None and backoff != RETRY_BACKOFF_DEFAULT:
        spec["retry_backoff"] = backoff
    return spec


def schedule_documents(
    rows: list[ScheduleRecord],
    warnings: list[str],
    relocate: Callable[[list[str]], list[str]] = list,
) -> dict[str, list[dict[str, Any]]]:
    """Documents grouped by project: an external Project, then its schedules.

    ``relocate`` rewrites a schedule's stored ``local_files`` for the file it is written into.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        project = str(row.project)  # never None: fetch_unowned reads schedules with a project
        docs = grouped.setdefault(
            project,
            [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Project",
                    "metadata": {"name": project},
                    "spec": {"external": True},
                }
            ],
        )
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Schedule",
                "metadata": {"name": row.name},
                "spec": _schedule_spec(row, warnings, relocate),
            }
        )
    return grouped


def _file_name(project: str) -> str:
    """A file name for ``project``'s documents that stays inside the output folder, whatever
    the name a row from elsewhere holds (a '/', '..', a leading dot or control characters)."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in project).lstrip(".")
    return f"{safe or 'project'}.yaml"


def export_rows(conn: psycopg.Connection[Any], *, settings: Settings, out: str | None) -> int:
    """Write (or print) the documents; return the exit code."""
    rows = fetch_unowned(conn, owner=settings.owner)
    warnings: list[str] = []
    folder = settings.schedules_dir if out is None else Path(out)
    grouped = schedule_documents(rows, warnings, _relocator(settings.schedules_dir, folder))
    as_json = settings.output == "json"
    exported = []
    for project, docs in grouped.items():
        target = None if out is None else folder / _file_name(project)
        exported.append(
            {"project": project, "file": None if target is None else str(target), "documents": docs}
        )
        text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
        if target is None:
            if not as_json:
                sys.stdout.write(f"# {terminal(project)}\n---\n{text}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {terminal(str(target))} ({len(docs) - 1} schedule(s))", file=sys.stderr)
    for warning in warnings:
        _log.warning("secret replaced by a reference", detail=warning)
    if as_json:
        emit_json("Export", {"owner": settings.owner, "projects": exported, "warnings": warnings})
    if not grouped:
        print(
            f"Nothing to export: every schedule is owned by {terminal(repr(settings.owner))}.",
            file=sys.stderr,
        )
    return 0
