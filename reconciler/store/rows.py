"""Reading the managed rows and writing a plan, in a constant number of round trips.

``store.applying`` calls ``fetch_rows`` (two queries, whatever the number of rows) and
``execute_plan`` (at most one statement per kind and operation: rows travel as one JSON array
unpacked by ``jsonb_to_recordset``), so applying 10,000 schedules costs a handful of round trips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row

from reconciler.model.plans import (
    Kind,
    Op,
    Plan,
    Row,
    resolve_local_files,
    schedule_fields,
    spec_hash,
)
from reconciler.store.schedules import ScheduleRecord, fetch_schedules

if TYPE_CHECKING:
    import psycopg

__all__ = ["execute_plan", "fetch_rows", "refresh_sources"]

_PROJECTS = "SELECT name, spec, owner, source_file, source_line, spec_hash FROM cpi_projects"


@dataclass(frozen=True, slots=True)
class _StoredProject:
    name: str
    spec: Any
    owner: str | None
    source_file: str | None
    source_line: int | None
    spec_hash: str | None


def fetch_rows(conn: psycopg.Connection[Any]) -> list[Row]:
    """Every project and schedule in the database, as comparable rows."""
    rows: list[Row] = []
    with conn.cursor(row_factory=class_row(_StoredProject)) as cur:
        rows.extend(_project_row(p) for p in cur.execute(_PROJECTS))
    rows.extend(_schedule_row(s) for s in fetch_schedules(conn))
    return rows


def _project_row(p: _StoredProject) -> Row:
    line = p.source_line or 0
    return Row(Kind.PROJECT, p.name, {"spec": p.spec}, p.owner, p.source_file, line, p.spec_hash)


def _schedule_row(s: ScheduleRecord) -> Row:
    local, source, stored = s.local_files, s.source_file, s.spec_hash
    globs = local if _is_globs(local) else None
    fields = schedule_fields(
        project=s.project,
        cron=s.cron_expression,
        interval_seconds=s.interval_seconds,
        timezone=s.timezone,
        enabled=s.enabled,
        callback_url=s.callback_url,
        sftp_override=s.sftp_override,
        local_files=globs,
        misfire_grace_seconds=s.misfire_grace_seconds,
        timeout_seconds=s.timeout_seconds,
        retries=s.retries,
        retry_backoff_seconds=s.retry_backoff_seconds,
    )
    if s.cron_expression is None and s.interval_seconds is None:
        fields["schedule_type"] = None
    if globs is None:  # NULL, or edited by hand into no list of globs: shown as is, set back
        fields["local_files"] = local
    elif _written_beside(fields, globs, source, stored):
        stored = None  # a change of storage format, not drift
    return Row(Kind.SCHEDULE, s.name, fields, s.owner, source, s.source_line or 0, stored)


def _is_globs(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(g, str) and g for g in value)


def _written_beside(
    fields: dict[str, Any], globs: list[str], source: str | None, stored: str | None
) -> bool:
    """Whether ``globs`` are stored as the previous version wrote them: relative to the folder of
    ``source`` rather than to the schedules folder (its hash was taken over them resolved).

    Such a row shows as an ordinary update of ``local_files``, which one apply fixes.
    """
    if stored is None or stored == spec_hash(fields):
        return False
    resolved = resolve_local_files(globs, source)
    return resolved != globs and stored == spec_hash({**fields, "local_files": resolved})


def _project_record(row: Row, owner: str) -> dict[str, Any]:
    return {
        "name": row.name,
        "spec": row.fields["spec"],
        "owner": owner,
        "source_file": row.source,
        "source_line": row.line,
        "spec_hash": spec_hash(row.fields),
    }


def _schedule_record(row: Row, owner: str) -> dict[str, Any]:
    f = row.fields
    return {
        "name": row.name,
        "project": f["project"],
        "schedule_type": f["schedule_type"],
        "cron_expression": f["cron_expression"],
        "interval_seconds": f["interval_seconds"],
        "timezone": f["timezone"],
        "enabled": f["enabled"],
        "callback_url": f["callback_url"],
        "sftp_override": f["sftp_override"],
        "local_files": f["local_files"],
        "misfire_grace_seconds": f["misfire_grace_seconds"],
        "timeout_seconds": f["timeout_seconds"],
        "retries": f["retries"],
        "retry_backoff_seconds": f["retry_backoff_seconds"],
        "owner": owner,
        "source_file": row.source,
        "source_line": row.line,
        "spec_hash": spec_hash(f),
    }


_RECORDSET = "jsonb_to_recordset(%s::jsonb) AS x("
_PROJECT_COLS = (
    "name text, spec jsonb, owner text, source_file text, source_line int, spec_hash text)"
)
_SCHEDULE_COLS = (
    "name text, project text, schedule_type text, cron_expression text, interval_seconds int, "
    "timezone text, enabled bool, callback_url text, sftp_override jsonb, local_files jsonb, "
    "misfire_grace_seconds int, timeout_seconds int, retries int, retry_backoff_seconds int, "
    "owner text, source_file text, source_line int, spec_hash text)"
)

_INSERT_PROJECTS = f"""
INSERT INTO cpi_projects (name, spec, owner, source_file, source_line, spec_hash)
SELECT x.name, x.spec, x.owner, x.source_file, x.source_line, x.spec_hash
FROM {_RECORDSET}{_PROJECT_COLS}
"""
_UPDATE_PROJECTS = f"""
UPDATE cpi_projects p SET spec = x.spec, owner = x.owner, source_file = x.source_file,
    source_line = x.source_line, spec_hash = x.spec_hash, updated_at = now()
FROM {_RECORDSET}{_PROJECT_COLS} WHERE p.name = x.name
"""
# A new schedule's interval cadence counts from the apply that creates it, and so does a change of
# timing; next_run_at is left for the scheduler to compute (also when a schedule is disabled or
# enabled again: the time it spent disabled holds no missed runs). Any other change keeps both, so
# a reconcile that leaves the timing alone never moves the next run.
_INSERT_SCHEDULES = f"""
INSERT INTO cpi_schedules (name, project_id, schedule_type, cron_expression, interval_seconds,
    timezone, enabled, callback_url, sftp_override, local_files, misfire_grace_seconds,
    timeout_seconds, retries, retry_backoff_seconds, owner, source_file, source_line, spec_hash,
    interval_anchor, next_run_at)
SELECT x.name, p.id, x.schedule_type, x.cron_expression, x.interval_seconds, x.timezone,
    x.enabled, x.callback_url, x.sftp_override, x.local_files, x.misfire_grace_seconds,
    x.timeout_seconds, x.retries, x.retry_backoff_seconds, x.owner, x.source_file, x.source_line,
    x.spec_hash, now(), NULL
FROM {_RECORDSET}{_SCHEDULE_COLS} JOIN cpi_projects p ON p.name = x.project
"""
_SAME_TIMING = """(s.schedule_type, s.cron_expression, s.interval_seconds, s.timezone)
    IS NOT DISTINCT FROM (x.schedule_type, x.cron_expression, x.interval_seconds, x.timezone)"""
_UPDATE_SCHEDULES = f"""
UPDATE cpi_schedules s SET project_id = p.id, schedule_type = x.schedule_type,
    cron_expression = x.cron_expression, interval_seconds = x.interval_seconds,
    timezone = x.timezone, enabled = x.enabled, callback_url = x.callback_url,
    sftp_override = x.sftp_override, local_files = x.local_files,
    misfire_grace_seconds = x.misfire_grace_seconds, timeout_seconds = x.timeout_seconds,
    retries = x.retries, retry_backoff_seconds = x.retry_backoff_seconds, owner = x.owner,
    source_file = x.source_file, source_line = x.source_line, spec_hash = x.spec_hash,
    interval_anchor = CASE WHEN {_SAME_TIMING} THEN s.interval_anchor ELSE now() END,
    next_run_at = CASE WHEN {_SAME_TIMING} AND coalesce(s.enabled, true) = x.enabled
        THEN s.next_run_at END,
    updated_at = now()
FROM {_RECORDSET}{_SCHEDULE_COLS} JOIN cpi_projects p ON p.name = x.project
WHERE s.name = x.name
"""
_REFRESH_SOURCES = """
UPDATE cpi_{table} t SET source_file = x.source_file, source_line = x.source_line
FROM jsonb_to_recordset(%s::jsonb) AS x(name text, source_file text, source_line int)
WHERE t.name = x.name AND t.owner = %s
"""


def _json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, separators=(",", ":"))


def execute_plan(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Carry out ``plan`` on ``conn`` inside the caller's transaction.

    ``local_files`` are stored as the plan compared them: relative to the schedules folder, the
    way a run reads them, wherever the document sits.
    """
    owner = plan.owner

    def run(sql: str, records: list[dict[str, Any]]) -> None:
        if records:
            conn.execute(sql, (_json(records),))

    def rows(op: Op, kind: Kind) -> list[Row]:
        return [c.desired for c in plan.of(op, kind) if c.desired is not None]

    def schedules(op: Op) -> list[dict[str, Any]]:
        return [_schedule_record(r, owner) for r in rows(op, Kind.SCHEDULE)]

    deleted_schedules = [c.name for c in plan.of(Op.DELETE, Kind.SCHEDULE)]
    if deleted_schedules:
        conn.execute(
            "DELETE FROM cpi_schedules WHERE name = ANY(%s) AND owner = %s",
            (deleted_schedules, owner),
        )
    run(_INSERT_PROJECTS, [_project_record(r, owner) for r in rows(Op.CREATE, Kind.PROJECT)])
    run(_UPDATE_PROJECTS, [_project_record(r, owner) for r in rows(Op.UPDATE, Kind.PROJECT)])
    run(_UPDATE_SCHEDULES, schedules(Op.UPDATE))
    run(_INSERT_SCHEDULES, schedules(Op.CREATE))
    deleted_projects = [c.name for c in plan.of(Op.DELETE, Kind.PROJECT)]
    if deleted_projects:
        conn.execute(
            "DELETE FROM cpi_projects WHERE name = ANY(%s) AND owner = %s",
            (deleted_projects, owner),
        )
    refresh_sources(conn, plan)


def refresh_sources(conn: psycopg.Connection[Any], plan: Plan) -> None:
    """Record the new file and line of rows whose documents moved but did not change."""
    for kind, table in ((Kind.PROJECT, "projects"), (Kind.SCHEDULE, "schedules")):
        records = [
            {"name": r.name, "source_file": r.source, "source_line": r.line}
            for r in plan.moved
            if r.kind is kind
        ]
        if records:
            conn.execute(_REFRESH_SOURCES.format(table=table), (_json(records), plan.owner))
