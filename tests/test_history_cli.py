"""``reconcile history NAME``: when each run's occurrence was due, and which try a retry is.

The jobs are made by the code the daemon runs (``run_schedule`` for a scheduled and a manual
run, ``schedule_retry`` after the scheduled one failed) against real PostgreSQL; ``history``
runs as a real subprocess.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from conftest import Cli
from import_rows import SALES, add_project, add_schedule, write_sales

from reconciler.imports.runs.running import run_schedule
from reconciler.settings import Settings, load_settings
from reconciler.store.claimed import schedule_retry

NAME = "daily-sales-import"
DUE = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


@pytest.fixture
def settings(cli: Cli, database_url: str) -> Settings:
    """The CLI's folder and database, as a run in this process sees them."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET retries = 1, retry_backoff_seconds = 60")
    return load_settings(
        schedules_dir=str(cli.cwd / "schedules.d"), database_url=database_url,
        state_dir=str(cli.cwd / "state"),
        environ={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_SETTLE_SECONDS": "0"},
    )  # fmt: skip


def _shown(moment: datetime, url: str) -> str:
    """``moment`` as the command prints it: in its session's time zone."""
    with psycopg.connect(url) as conn:
        zone = conn.execute("SHOW TimeZone").fetchone()
    assert zone is not None
    return moment.astimezone(ZoneInfo(zone[0])).strftime("%Y-%m-%d %H:%M:%S %Z")


def _runs(settings: Settings, data: Path, url: str) -> tuple[str, str, str]:
    """A manual run that succeeds, then a scheduled run that fails and its retry, waiting for
    its backoff: their job ids, in that order."""
    write_sales(data / "sales_1.csv", range(0, 5))
    manual = run_schedule(NAME, settings=settings)
    assert manual.status == "succeeded"
    write_sales(data / "sales_1.csv", range(0, 5), bad_line=3)
    scheduled = run_schedule(NAME, settings=settings, trigger="schedule", scheduled_for=DUE)
    assert scheduled.status == "failed"
    assert manual.job_id is not None
    assert scheduled.job_id is not None
    with psycopg.connect(url, autocommit=True) as conn:
        retry = schedule_retry(conn, scheduled.job_id)
    assert retry is not None
    return manual.job_id, scheduled.job_id, retry[0]


def test_history_shows_when_each_run_was_due_and_which_try_a_retry_is(
    cli: Cli, settings: Settings, database_url: str
) -> None:
    """Text: a DUE column (the occurrence's time, ``-`` for a manual run) and ``retry 2`` as
    the trigger of a retry; JSON: each run's scheduled_for, attempt and retry_of."""
    manual, scheduled, retry = _runs(settings, cli.cwd / "data", database_url)

    done = cli("history", NAME)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == [
        "STARTED", "STATUS", "TRIGGER", "DURATION", "ROWS", "FILES", "DUE", "ERROR"
    ]  # fmt: skip
    due = _shown(DUE, database_url)
    waiting, failed, oldest = lines
    assert waiting.startswith("- ")  # not started: it waits for its backoff
    assert waiting.split()[1:4] == ["running", "retry", "2"]
    assert waiting.endswith(due)
    assert failed.split()[3:5] == ["failed", "schedule"]
    assert f" {due} " in failed
    assert "1 of 1 files failed" in failed.split(due)[1]
    assert oldest.split()[3:5] == ["succeeded", "manual"]
    assert oldest.split()[7:] == ["1", "-"]  # one file, no DUE, no error

    document = json.loads(cli("history", NAME, "--output", "json").stdout)
    shown = [
        (j["job_id"], j["trigger"], j["scheduled_for"], j["attempt"], j["retry_of"])
        for j in document["jobs"]
    ]
    stored_due = str(DUE.astimezone(ZoneInfo(_zone(database_url))))
    assert shown == [
        (retry, "schedule", stored_due, 2, scheduled),
        (scheduled, "schedule", stored_due, 1, None),
        (manual, "manual", None, 1, None),
    ]


def _zone(url: str) -> str:
    with psycopg.connect(url) as conn:
        zone = conn.execute("SHOW TimeZone").fetchone()
    assert zone is not None
    return str(zone[0])


def test_history_escapes_what_another_program_wrote_in_a_job(
    cli: Cli, settings: Settings, database_url: str
) -> None:
    """A status and a trigger holding terminal controls and a newline print as visible
    escapes, each job on its one line."""
    _runs(settings, cli.cwd / "data", database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE cpi_jobs SET status = E'ok\\x1b[2J', trigger = E'm\\nfake' "
            "WHERE trigger = 'manual'"
        )
    done = cli("history", NAME)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert len(done.stdout.splitlines()) == 4, done.stdout
    assert "ok\\x1b[2J" in done.stdout
    assert "m\\nfake" in done.stdout
