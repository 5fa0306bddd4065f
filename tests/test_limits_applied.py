"""A schedule's run limits on real PostgreSQL: stored by apply, planned against the rows, read back
by a run and by the HTTP API, exported; the columns the retry engine builds on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.commands.exporting import schedule_documents
from reconciler.daemon.responses import ScheduleResponse
from reconciler.errors import TargetError
from reconciler.imports.runs.resolving import load_import
from reconciler.model.plans import Op
from reconciler.model.rendering import render_plan
from reconciler.reading import desired_from
from reconciler.store.applying import apply_plan, plan_against
from reconciler.store.schedules import fetch_schedule, fetch_unowned

OWNER = "reconcile"
PROJECT = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: sales
spec:
  target: {table: public.sales}
"""
LIMITS = ("timeout_seconds", "retries", "retry_backoff_seconds")


def _files(*spec: str) -> list[tuple[str, bytes]]:
    schedule = (
        "apiVersion: reconciler/v1\nkind: Schedule\nmetadata:\n  name: daily\nspec:\n"
        '  project: sales\n  cron: "0 0 * * *"\n' + "".join(f"  {s}\n" for s in spec)
    )
    return [("p.yaml", PROJECT.encode()), ("s.yaml", schedule.encode())]


def _apply(url: str, *spec: str) -> Op | None:
    """Apply the project and the daily schedule with ``spec``; the schedule's change, if any."""
    desired = desired_from(_files(*spec), Path("schedules.d"), owner=OWNER)
    with psycopg.connect(url) as conn:
        plan = apply_plan(conn, desired, owner=OWNER)
    ops = [c.op for c in plan.changes if c.name == "daily"]
    return ops[0] if ops else None


def _stored(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT {', '.join(LIMITS)} FROM cpi_schedules WHERE name = 'daily'"
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_apply_stores_the_limits_and_plans_nothing_more(database_url: str) -> None:
    """The columns hold whole seconds; applying the same documents again changes nothing."""
    spec = ("timeout: 10m", "retries: 3", "retry_backoff: 1m")
    assert _apply(database_url, *spec) is Op.CREATE
    assert _stored(database_url) == (600, 3, 60)
    assert _apply(database_url, *spec) is None


def test_a_schedule_without_limits_has_the_defaults(database_url: str) -> None:
    """No timeout (NULL), no retries, a 30 s backoff: today's behaviour."""
    _apply(database_url)
    assert _stored(database_url) == (None, 0, 30)


def test_a_change_of_timeout_is_an_update_in_the_plan(database_url: str) -> None:
    """Only the timeout differs; apply sets it, and removing it sets it back to no limit."""
    _apply(database_url, "timeout: 10m")
    desired = desired_from(_files("timeout: 15m"), Path("schedules.d"), owner=OWNER)
    with psycopg.connect(database_url) as conn:
        plan = plan_against(conn, desired, owner=OWNER)
    (change,) = plan.changes
    assert (change.op, change.name) == (Op.UPDATE, "daily")
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("timeout_seconds", 600, 900)]
    assert "      timeout_seconds: 600 -> 900" in render_plan(plan)
    assert _apply(database_url, "timeout: 15m") is Op.UPDATE
    assert _stored(database_url) == (900, 0, 30)
    assert _apply(database_url) is Op.UPDATE
    assert _stored(database_url) == (None, 0, 30)


def test_limits_edited_behind_the_reconcilers_back_are_drift(database_url: str) -> None:
    """A changed column shows as drift and is set back."""
    _apply(database_url, "retries: 2")
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET retries = 9, timeout_seconds = 5")
    desired = desired_from(_files("retries: 2"), Path("schedules.d"), owner=OWNER)
    with psycopg.connect(database_url) as conn:
        (change,) = plan_against(conn, desired, owner=OWNER).changes
    assert change.drift
    assert [d.field for d in change.diffs] == ["retries", "timeout_seconds"]
    _apply(database_url, "retries: 2")
    assert _stored(database_url) == (None, 2, 30)


def test_a_run_and_the_api_read_the_limits(database_url: str) -> None:
    """The resolved run spec carries the three columns (the scheduler reads them there), and
    the HTTP API shows them with the other schedule fields."""
    _apply(database_url, "timeout: 90", "retries: 4", "retry_backoff: 2m")
    with psycopg.connect(database_url) as conn:
        spec = load_import(conn, "daily")
        record = fetch_schedule(conn, "daily")
    assert (spec.timeout_seconds, spec.retries, spec.retry_backoff_seconds) == (90, 4, 120)
    assert spec.deadline is None  # set by the run itself
    assert record is not None
    body = ScheduleResponse.of(record, owner=OWNER).model_dump()
    assert {k: body[k] for k in LIMITS} == dict(zip(LIMITS, (90, 4, 120), strict=True))


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("timeout_seconds", 0, "timeout_seconds: 0 is not a limit"),
        ("retries", 11, "retries: 11 is not from 0 to 10"),
        ("retry_backoff_seconds", 0, "retry_backoff_seconds: 0 is not from 1 to 3600"),
    ],
)
def test_a_run_refuses_limits_edited_into_nonsense(
    database_url: str, column: str, value: int, problem: str
) -> None:
    """A row edited by hand beyond what a document may say names the column and the fix."""
    _apply(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(f"UPDATE cpi_schedules SET {column} = %s", (value,))
        with pytest.raises(TargetError, match=problem) as caught:
            load_import(conn, "daily")
    assert "run `reconcile apply` to set it back" in caught.value.message


def test_export_writes_the_limits_that_differ_from_the_defaults(database_url: str) -> None:
    """Rows from elsewhere keep their limits in their documents; defaults are left out."""
    with psycopg.connect(database_url) as conn:
        (pid,) = conn.execute(
            "INSERT INTO cpi_projects (name) VALUES ('legacy') RETURNING id"
        ).fetchone() or (None,)
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, interval_seconds, "
            "timeout_seconds, retries, retry_backoff_seconds) VALUES "
            "('slow', %(p)s, 'interval', 7200, 1800, 2, 45), "
            "('plain', %(p)s, 'interval', 7200, NULL, 0, 30)",
            {"p": pid},
        )
        rows = fetch_unowned(conn, owner=OWNER)
    (docs,) = schedule_documents(rows, []).values()
    specs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Schedule"}
    assert {k: specs["slow"][k] for k in ("timeout", "retries", "retry_backoff")} == {
        "timeout": 1800,
        "retries": 2,
        "retry_backoff": 45,
    }
    assert not {"timeout", "retries", "retry_backoff"} & set(specs["plain"])


def test_jobs_have_an_attempt_and_the_job_they_retry(database_url: str) -> None:
    """cpi_jobs.attempt starts at 1; retry_of names the failed job and is cleared when that job
    is pruned; the scheduler's index on next_run_at is there."""
    with psycopg.connect(database_url) as conn:
        (first,) = conn.execute("INSERT INTO cpi_jobs DEFAULT VALUES RETURNING id").fetchone() or ()
        (retry,) = (
            conn.execute(
                "INSERT INTO cpi_jobs (attempt, retry_of) VALUES (2, %s) RETURNING id", (first,)
            ).fetchone()
            or ()
        )
        assert conn.execute("SELECT attempt FROM cpi_jobs WHERE id = %s", (first,)).fetchone() == (
            1,
        )
        conn.execute("DELETE FROM cpi_jobs WHERE id = %s", (first,))
        assert conn.execute(
            "SELECT attempt, retry_of FROM cpi_jobs WHERE id = %s", (retry,)
        ).fetchone() == (2, None)
        (definition,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_cpi_schedules_due'"
        ).fetchone() or ("",)
    assert "(next_run_at) WHERE (next_run_at IS NOT NULL)" in definition
