"""Test helpers: project and schedule rows as ``reconcile apply`` leaves them, and CSV files.

The import tests insert rows directly with SQL so they do not depend on the reconciling layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from reconciler.model.specs import ProjectSpec

__all__ = ["SALES", "add_project", "add_schedule", "count", "jobs", "write_sales"]

SALES = "CREATE TABLE public.sales (sale_id int PRIMARY KEY, sold_at date, amount numeric)"


def add_project(url: str, name: str = "sales_project", **spec: Any) -> str:
    """Insert a project row; ``spec`` is the Project's spec as written in YAML."""
    spec.setdefault("target", {"table": "public.sales"})
    document = ProjectSpec.model_validate(spec).model_dump(mode="json")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO cpi_projects (name, spec, owner, source_file) "
            "VALUES (%s, %s, 'reconcile', 'sales.yaml') RETURNING id::text",
            (name, json.dumps(document)),
        ).fetchone()
    assert row is not None
    return str(row[0])


def add_schedule(
    url: str,
    name: str = "daily-sales-import",
    *,
    project: str = "sales_project",
    local_files: list[str] | None = None,
    source_file: str = "sales.yaml",
    callback_url: str | None = None,
    sftp_override: dict[str, Any] | None = None,
    enabled: bool = True,
) -> str:
    """Insert a schedule row (cron, daily) for ``project``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, cron_expression, "
            "enabled, callback_url, sftp_override, local_files, owner, source_file) "
            "SELECT %s, id, 'cron', '0 0 * * *', %s, %s, %s, %s, 'reconcile', %s "
            "FROM cpi_projects WHERE name = %s RETURNING id::text",
            (
                name, enabled, callback_url,
                json.dumps(sftp_override) if sftp_override else None,
                json.dumps(local_files) if local_files else None,
                source_file, project,
            ),
        ).fetchone()  # fmt: skip
    assert row is not None
    return str(row[0])


def write_sales(path: Path, ids: range, *, bad_line: int | None = None) -> Path:
    """A sales CSV with a header and one row per id; ``bad_line`` (1-based) gets a bad amount."""
    lines = ["sale_id,sold_at,amount"]
    lines += [f"{i},2026-11-01,{i % 100}.50" for i in ids]
    if bad_line is not None:
        lines[bad_line - 1] = lines[bad_line - 1].rsplit(",", 1)[0] + ",abc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def count(url: str, table: str = "sales") -> int:
    """The number of rows in ``table``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def jobs(url: str, schedule: str = "daily-sales-import") -> list[dict[str, Any]]:
    """The schedule's job rows, oldest first, as dicts."""
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT * FROM cpi_jobs WHERE schedule_name = %s ORDER BY started_at, created_at",
            (schedule,),
        ).fetchall()
