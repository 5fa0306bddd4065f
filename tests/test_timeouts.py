"""A schedule's ``timeout`` on real PostgreSQL and real files: a run still going at the bound stops
reading, rolls back what it had not committed, fails saying so, and the next run loads it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales

from reconciler.imports.runs.running import run_schedule
from reconciler.model.results import JobResult
from reconciler.settings import Settings, load_settings

NAME = "daily-sales-import"
TIMED_OUT = "timed out after 1 s (the schedule's timeout)"
# Once per COPY, before the server reads its rows: the client sends what the sockets hold (a few
# MiB) and must then wait, so it is still reading the file when the timeout passes.
SLOW = """
CREATE FUNCTION slow_copy() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
CREATE TRIGGER slow_copy BEFORE INSERT ON sales FOR EACH STATEMENT EXECUTE FUNCTION slow_copy();
"""
BIG = 400_000  # rows: some 10 MB, more than the loopback sockets hold


@pytest.fixture
def folder(tmp_path: Path, database_url: str) -> Path:
    """A repository folder with data/ beside it, and public.sales holding one earlier row."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
        conn.execute("INSERT INTO sales VALUES (-1, '2020-01-01', 1)")
    return tmp_path


def _settings(folder: Path, url: str) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"),
        database_url=url,
        state_dir=str(folder / "state"),
        environ={
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_SETTLE_SECONDS": "0",
            "RECONCILER_IMPORT_WORKERS": "1",
        },
    )


def _schedule(url: str, mode: str, timeout: int | None) -> None:
    add_project(url, target={"table": "public.sales", "mode": mode})
    add_schedule(url, local_files=["../data/sales_*.csv"])
    _set_timeout(url, timeout)


def _set_timeout(url: str, timeout: int | None) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE cpi_schedules SET timeout_seconds = %s", (timeout,))


def _in_a_worker(settings: Settings) -> tuple[JobResult, float]:
    """One run in its own thread, as ``reconcile serve`` runs them; its result and duration."""
    done: list[JobResult] = []
    began = time.monotonic()
    worker = threading.Thread(target=lambda: done.append(run_schedule(NAME, settings=settings)))
    worker.start()
    worker.join(60)
    assert done, "the run did not end"
    return done[0], time.monotonic() - began


def _loaded(url: str) -> int:
    """Files the import ledger records as loaded into the project."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM cpi_imported_files WHERE loaded").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_a_run_past_its_timeout_rolls_back_and_the_next_loads_it(
    folder: Path, database_url: str, mode: str
) -> None:
    """At the bound the run stops reading: the file being loaded rolls back, the next is not
    started, the job fails saying it timed out, within seconds of the bound; nothing is in the
    table or the ledger, and a later run without the slowness loads both files whole."""
    _schedule(database_url, mode, timeout=1)
    write_sales(folder / "data/sales_1.csv", range(BIG))
    write_sales(folder / "data/sales_2.csv", range(BIG, BIG + 10))
    with psycopg.connect(database_url) as conn:
        conn.execute(SLOW)
    settings = _settings(folder, database_url)

    result, seconds = _in_a_worker(settings)

    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(f"{TIMED_OUT}: its transaction was rolled back"), result.error
    assert 1 <= seconds < 1 + 4, seconds  # the trigger's 2 s, then the next block read
    assert [(f.status, f.error) for f in result.files] == [
        ("failed", f"{TIMED_OUT}: its transaction was rolled back; the next run loads it whole"),
        ("failed", f"{TIMED_OUT}: not started; the next run loads it"),
    ]
    assert (result.rows_imported, count(database_url), _loaded(database_url)) == (0, 1, 0)
    (job,) = jobs(database_url)
    assert (job["status"], job["error"]) == ("failed", result.error)

    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TRIGGER slow_copy ON sales")
    _set_timeout(database_url, 600)
    again = run_schedule(NAME, settings=settings)
    assert (again.status, again.error) == ("succeeded", None)
    assert [f.status for f in again.files] == ["imported", "imported"]
    expected = BIG + 10 if mode == "replace" else BIG + 10 + 1  # replace drops the earlier row
    assert (count(database_url), _loaded(database_url)) == (expected, 2)


def test_a_run_within_its_timeout_is_untouched(folder: Path, database_url: str) -> None:
    """A timeout that is not reached changes nothing: every file lands, the job succeeds."""
    _schedule(database_url, "append", timeout=600)
    write_sales(folder / "data/sales_1.csv", range(100))
    write_sales(folder / "data/sales_2.csv", range(100, 150))
    result = run_schedule(NAME, settings=_settings(folder, database_url))
    assert (result.status, result.error, result.rows_imported) == ("succeeded", None, 150)
    assert [f.status for f in result.files] == ["imported", "imported"]
    assert count(database_url) == 151


def test_a_slow_run_without_a_timeout_finishes(folder: Path, database_url: str) -> None:
    """No timeout, no limit: the same slow load simply takes its time and lands."""
    _schedule(database_url, "append", timeout=None)
    write_sales(folder / "data/sales_1.csv", range(1000))
    with psycopg.connect(database_url) as conn:
        conn.execute(SLOW)
    result, seconds = _in_a_worker(_settings(folder, database_url))
    assert (result.status, result.rows_imported) == ("succeeded", 1000)
    assert seconds >= 2
