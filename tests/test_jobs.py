"""Job rows against real PostgreSQL: overlap skips, statistics, abandoned runs, occurrences."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from import_rows import add_project, add_schedule, jobs

from reconciler.model.results import FileResult
from reconciler.store.history import job_history
from reconciler.store.jobs import (
    Heartbeat,
    ScheduleRef,
    end_worker_jobs,
    fail_lost_job,
    finish_job,
    job_lock_key,
    reap_abandoned,
    start_job,
)

NAME = "daily-sales-import"


@pytest.fixture
def schedule(database_url: str) -> ScheduleRef:
    """A project and a schedule, as an apply leaves them."""
    project_id = add_project(database_url)
    schedule_id = add_schedule(database_url, local_files=["data/*.csv"])
    return ScheduleRef(schedule_id, NAME, project_id, "sales_project")


@pytest.fixture
def session(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit session, as a runner holds one for a whole run."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _stats(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT total_runs, successful_runs, failed_runs, last_job_id::text, "
            "last_run_at IS NOT NULL FROM cpi_schedules WHERE name = %s",
            (NAME,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _insert_running(url: str, schedule: ScheduleRef, *, beat_age: str = "0 s") -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO cpi_jobs (schedule_id, schedule_name, project_id, status, started_at, "
            "heartbeat_at) VALUES (%s, %s, %s, 'running', now() - %s::interval, "
            "now() - %s::interval) RETURNING id::text",
            (schedule.id, schedule.name, schedule.project_id, beat_age, beat_age),
        ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize(
    ("status", "stats"),
    [("succeeded", (1, 1, 0)), ("failed", (1, 0, 1))],
)
def test_finish_stores_status_and_statistics_together(
    database_url: str,
    schedule: ScheduleRef,
    session: psycopg.Connection[Any],
    status: Any,
    stats: tuple[int, int, int],
) -> None:
    """The final status, totals and the schedule's counters land in one transaction."""
    started = start_job(session, schedule, trigger="manual")
    assert started.status == "running"
    f = FileResult("/d/a.csv", 10, datetime(2026, 11, 1, tzinfo=UTC), "imported", rows=2, bytes=10)
    finish_job(session, schedule, started, status=status, files=(f,), error=None)
    (row,) = jobs(database_url)
    assert (row["status"], row["rows_imported"], row["bytes_read"]) == (status, 2, 10)
    assert row["files"][0]["path"] == "/d/a.csv"
    assert row["finished_at"] is not None
    assert _stats(database_url) == (*stats, started.id, True)


def test_an_overlapping_run_is_recorded_as_skipped(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """While a run is alive, a second start records a skipped row naming it, stats untouched."""
    first = start_job(session, schedule, trigger="manual")
    with psycopg.connect(database_url, autocommit=True) as other:
        second = start_job(other, schedule, trigger="manual")
    assert second.status == "skipped"
    assert second.error is not None
    assert first.id in second.error
    statuses = sorted(r["status"] for r in jobs(database_url))
    assert statuses == ["running", "skipped"]
    assert _stats(database_url)[:3] == (0, 0, 0)


def test_a_dead_runs_row_is_abandoned_at_once(database_url: str, schedule: ScheduleRef) -> None:
    """A running row whose session is gone (its lock free) is abandoned before the next run."""
    dead = _insert_running(database_url, schedule)
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = start_job(conn, schedule, trigger="manual")
    assert started.status == "running"
    statuses = {str(r["id"]): r["status"] for r in jobs(database_url)}
    assert statuses == {dead: "abandoned", started.id: "running"}
    assert _stats(database_url)[:3] == (1, 0, 1)


def test_a_stalled_holder_is_terminated_and_abandoned(
    database_url: str, schedule: ScheduleRef
) -> None:
    """A live session holding the lock with a stale heartbeat is cut off; the new run proceeds."""
    _insert_running(database_url, schedule, beat_age="10 min")
    stalled = psycopg.connect(database_url, autocommit=True)
    stalled.execute("SELECT pg_advisory_lock(%s)", (job_lock_key(NAME),))
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            started = start_job(conn, schedule, trigger="manual")
        assert started.status == "running"
        assert [r["status"] for r in jobs(database_url)] == ["abandoned", "running"]
        with pytest.raises(psycopg.OperationalError):
            stalled.execute("SELECT 1")
    finally:
        stalled.close()


def test_a_fresh_heartbeat_keeps_a_live_run(database_url: str, schedule: ScheduleRef) -> None:
    """A lock holder that still beats is not reaped; the newcomer is skipped."""
    _insert_running(database_url, schedule, beat_age="5 s")
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (job_lock_key(NAME),))
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert start_job(conn, schedule, trigger="manual").status == "skipped"
            assert reap_abandoned(conn) == []


def test_reap_abandons_only_runs_without_a_live_session(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """reap_abandoned marks dead runs and leaves live ones running."""
    add_schedule(database_url, "other", local_files=["x.csv"])
    other = ScheduleRef(None, "other", schedule.project_id, "sales_project")
    live = start_job(session, schedule, trigger="manual")
    dead = _insert_running(database_url, other)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert reap_abandoned(conn) == [dead]
    assert [(str(r["id"]), r["status"]) for r in jobs(database_url)] == [(live.id, "running")]
    assert jobs(database_url, "other")[0]["status"] == "abandoned"


def test_an_occurrence_is_claimed_once(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """Two runners of the same scheduled occurrence: one row; the other learns who has it."""
    when = datetime(2026, 11, 1, tzinfo=UTC)
    first = start_job(session, schedule, trigger="schedule", scheduled_for=when)
    finish_job(session, schedule, first, status="succeeded", files=(), error=None)
    with psycopg.connect(database_url, autocommit=True) as other:
        again = start_job(other, schedule, trigger="schedule", scheduled_for=when)
    assert (again.claimed, again.id) == (False, first.id)
    assert len(jobs(database_url)) == 1


def test_finishing_a_wrongly_abandoned_run_corrects_the_counters(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """A run reaped while alive still records its real outcome, counted once."""
    started = start_job(session, schedule, trigger="manual")
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_jobs SET status = 'abandoned' WHERE id = %s", (started.id,))
        conn.execute("UPDATE cpi_schedules SET total_runs = 1, failed_runs = 1")
    finish_job(session, schedule, started, status="succeeded", files=(), error=None)
    assert _stats(database_url)[:3] == (1, 1, 0)


@pytest.mark.parametrize(
    ("status", "stats"),
    [("succeeded", (1, 1, 0)), ("failed", (1, 0, 1))],
)
def test_finishing_a_run_failed_over_another_session_counts_it_once(
    database_url: str,
    schedule: ScheduleRef,
    session: psycopg.Connection[Any],
    status: Any,
    stats: tuple[int, int, int],
) -> None:
    """A run a shutdown path already recorded failed still records its outcome, counted once."""
    started = start_job(session, schedule, trigger="manual")
    with psycopg.connect(database_url, autocommit=True) as other:
        ended = fail_lost_job(other, schedule, started, files=(), error="stopped")
    assert (ended.status, ended.ours) == ("failed", True)
    assert _stats(database_url)[:3] == (1, 0, 1)
    finish_job(session, schedule, started, status=status, files=(), error=None)
    assert jobs(database_url)[0]["status"] == status
    assert _stats(database_url)[:3] == stats


def test_a_lost_run_fails_its_job_only_while_it_is_still_running(
    database_url: str, schedule: ScheduleRef
) -> None:
    """Over a new session a lost run records failed once; a job another run abandoned stays so."""
    lost = psycopg.connect(database_url, autocommit=True)
    first = start_job(lost, schedule, trigger="manual")
    lost.close()  # the session and its lock are gone, as when the server restarts
    with psycopg.connect(database_url, autocommit=True) as conn:
        ended = fail_lost_job(conn, schedule, first, files=(), error="lost")
        assert (ended.status, ended.error, ended.ours) == ("failed", "lost", True)
        again = fail_lost_job(conn, schedule, first, files=(), error="again")
        assert (again.status, again.error, again.ours) == ("failed", "lost", False)
    assert _stats(database_url)[:3] == (1, 0, 1)

    lost = psycopg.connect(database_url, autocommit=True)
    second = start_job(lost, schedule, trigger="manual")
    lost.close()
    with psycopg.connect(database_url, autocommit=True) as other:
        newer = start_job(other, schedule, trigger="manual")  # finds the lock free
        with psycopg.connect(database_url, autocommit=True) as conn:
            ended = fail_lost_job(conn, schedule, second, files=(), error="lost")
        assert (ended.status, ended.ours) == ("abandoned", False)
        statuses = {str(r["id"]): r["status"] for r in jobs(database_url)}
        assert statuses == {first.id: "failed", second.id: "abandoned", newer.id: "running"}
    assert _stats(database_url)[:3] == (2, 0, 2)


def test_heartbeat_refreshes_the_row(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """The heartbeat thread moves heartbeat_at and publishes the running totals."""
    started = start_job(session, schedule, trigger="manual")
    before = jobs(database_url)[0]["heartbeat_at"]
    with Heartbeat(session, started.id, lambda: (7, 700), interval=0.05):
        time.sleep(0.3)
    row = jobs(database_url)[0]
    assert row["heartbeat_at"] > before
    assert (row["rows_imported"], row["bytes_read"]) == (7, 700)


def test_history_outlives_the_schedule(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """Deleting the schedule keeps its runs readable by name, newest first."""
    for status in ("failed", "succeeded"):
        started = start_job(session, schedule, trigger="manual")
        finish_job(session, schedule, started, status=status, files=(), error=None)
    session.execute("DELETE FROM cpi_schedules WHERE name = %s", (NAME,))
    history = job_history(session, NAME, limit=10)
    assert [j["status"] for j in history] == ["succeeded", "failed"]
    assert len(job_history(session, NAME, limit=1)) == 1


def test_replicas_firing_one_occurrence_at_once_run_it_once_and_skip_nothing(
    database_url: str, schedule: ScheduleRef
) -> None:
    """Eight sessions claim one occurrence at the same instant: one runs, none records a skip
    (the decision is taken under the claim lock, not between the run lock and the insert)."""
    at = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    sessions = [psycopg.connect(database_url, autocommit=True) for _ in range(8)]
    barrier = threading.Barrier(len(sessions))
    results: list[Any] = []

    def claim(conn: psycopg.Connection[Any]) -> None:
        barrier.wait()
        results.append(start_job(conn, schedule, trigger="schedule", scheduled_for=at))

    threads = [threading.Thread(target=claim, args=(c,)) for c in sessions]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        for conn in sessions:
            conn.close()
    assert sorted(r.claimed for r in results) == [False] * 7 + [True]
    assert [(j["status"], j["scheduled_for"]) for j in jobs(database_url)] == [("running", at)]


def test_a_shutdown_ends_its_own_running_jobs_and_the_run_counts_once(
    database_url: str, schedule: ScheduleRef, session: psycopg.Connection[Any]
) -> None:
    """A shutdown fails this worker's running jobs only; a finish arriving after counts once."""
    started = start_job(session, schedule, trigger="manual")
    other = _insert_running(database_url, ScheduleRef(None, "other", None, None))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE cpi_jobs SET worker = 'elsewhere:1' WHERE id = %s", (other,))
        # the heartbeat's running total, of rows whose transaction dies with the process
        conn.execute("UPDATE cpi_jobs SET rows_imported = 500 WHERE id = %s", (started.id,))
        ended = end_worker_jobs(conn, f"{socket.gethostname()}:{os.getpid()}", "interrupted")
    assert ended == [started.id]
    assert [j["rows_imported"] for j in jobs(database_url)] == [0]  # what landed
    assert _stats(database_url)[:3] == (1, 0, 1)
    finish_job(session, schedule, started, status="succeeded", files=(), error=None)
    assert _stats(database_url)[:3] == (1, 1, 0)
    assert [(str(j["id"]), j["status"]) for j in jobs(database_url)] == [(started.id, "succeeded")]
    assert [j["status"] for j in jobs(database_url, "other")] == ["running"]
