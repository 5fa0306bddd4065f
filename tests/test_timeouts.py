"""A schedule's ``timeout`` on real PostgreSQL and real files: a run still going at the bound stops
reading, has the statement the target is busy with cancelled (a lock wait, a slow trigger), rolls
back what it had not committed, fails saying so, and the next run loads it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales

from reconciler.errors import SourceError
from reconciler.imports.engine.importing import Connections
from reconciler.imports.runs.resolving import Deadline
from reconciler.imports.runs.running import run_schedule
from reconciler.model.results import JobResult
from reconciler.settings import Settings, load_settings
from reconciler.store.locks import Fixed

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
# Far longer than the bound: a run that waits for it has not been interrupted.
ASLEEP = """
CREATE FUNCTION asleep() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
CREATE TRIGGER asleep BEFORE INSERT ON sales FOR EACH STATEMENT EXECUTE FUNCTION asleep();
"""
# Asleep only for an insert of a row numbered from 1000: the file of such rows, not the others.
ASLEEP_FROM_1000 = """
CREATE FUNCTION asleep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    IF EXISTS (SELECT FROM inserted WHERE sale_id >= 1000) THEN PERFORM pg_sleep(30); END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER asleep AFTER INSERT ON sales REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION asleep();
"""
ROLLED_BACK = f"{TIMED_OUT}: its transaction was rolled back; the next run loads it whole"
JOB_TIMED_OUT = f"{TIMED_OUT}: its transaction was rolled back; the next run loads the rest"
MODES = ["append", "upsert", "replace"]


@pytest.fixture
def folder(tmp_path: Path, database_url: str) -> Path:
    """A repository folder with data/ beside it, and public.sales holding one earlier row."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
        conn.execute("INSERT INTO sales VALUES (-1, '2020-01-01', 1)")
    return tmp_path


def _settings(
    folder: Path, url: str, *, workers: int = 1, environ: dict[str, str] | None = None
) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"),
        database_url=url,
        state_dir=str(folder / "state"),
        environ={
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_SETTLE_SECONDS": "0",
            "RECONCILER_IMPORT_WORKERS": str(workers),
            **(environ or {}),
        },
    )


def _schedule(url: str, mode: str, timeout: int | None) -> None:
    key = {"key": ["sale_id"]} if mode == "upsert" else {}
    add_project(url, target={"table": "public.sales", "mode": mode, **key})
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
    assert 1 <= seconds < 1 + 4, seconds  # the trigger's sleep is cancelled at the bound
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


@contextmanager
def _locked(url: str) -> Iterator[None]:
    """public.sales locked by another session, as a long report or a migration holds it."""
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")
        yield


def _assert_timed_out(url: str, result: JobResult, seconds: float) -> None:
    """The job failed with the timeout's error within seconds of the bound, as recorded."""
    assert result.status == "failed"
    assert result.error == JOB_TIMED_OUT
    assert 1 <= seconds < 1 + 5, seconds
    (job,) = [j for j in jobs(url) if str(j["id"]) == result.job_id]
    assert (job["status"], job["error"]) == ("failed", result.error)


def _loads_it_next(folder: Path, url: str, expected: int) -> None:
    """Without a timeout, the next run loads the file the cut rolled back."""
    _set_timeout(url, 600)
    again = run_schedule(NAME, settings=_settings(folder, url))
    assert (again.status, again.error) == ("succeeded", None)
    assert [f.status for f in again.files] == ["imported"]
    assert (count(url), _loaded(url)) == (expected, 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_lock_wait_past_the_timeout_is_cancelled(
    folder: Path, database_url: str, mode: str
) -> None:
    """A target table locked by another session: the run's wait for the lock is cancelled at
    the bound, the file rolls back, the job fails with the timeout's error within seconds of
    it, nothing is in the table or the ledger, and once the lock is gone the next run loads it."""
    _schedule(database_url, mode, timeout=1)
    write_sales(folder / "data/sales_1.csv", range(10))
    settings = _settings(folder, database_url)

    with _locked(database_url):
        result, seconds = _in_a_worker(settings)

    _assert_timed_out(database_url, result, seconds)
    assert [(f.status, f.error) for f in result.files] == [("failed", ROLLED_BACK)]
    assert (result.rows_imported, count(database_url), _loaded(database_url)) == (0, 1, 0)
    _loads_it_next(folder, database_url, 10 if mode == "replace" else 11)


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_trigger_past_the_timeout_is_cancelled(
    folder: Path, database_url: str, mode: str
) -> None:
    """A statement trigger that sleeps 30 s: it is cancelled at the bound, the file rolls back,
    the job fails with the timeout's error within seconds of it, nothing is in the table or
    the ledger, and once the trigger is dropped the next run loads the file."""
    _schedule(database_url, mode, timeout=1)
    write_sales(folder / "data/sales_1.csv", range(10))
    with psycopg.connect(database_url) as conn:
        conn.execute(ASLEEP)

    result, seconds = _in_a_worker(_settings(folder, database_url))

    _assert_timed_out(database_url, result, seconds)
    assert [(f.status, f.error) for f in result.files] == [("failed", ROLLED_BACK)]
    assert (result.rows_imported, count(database_url), _loaded(database_url)) == (0, 1, 0)
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TRIGGER asleep ON sales")
    _loads_it_next(folder, database_url, 10 if mode == "replace" else 11)


@pytest.mark.parametrize("mode", ["append", "upsert"])
@pytest.mark.parametrize("workers", [1, 2])
def test_what_landed_before_the_cut_stays(
    folder: Path, database_url: str, mode: str, workers: int
) -> None:
    """Files committed before the bound stay and are reported imported; the one the target is
    busy with is cancelled, and one staged behind it (two workers) does not land after the
    bound: both roll back, and the next run loads them."""
    _schedule(database_url, mode, timeout=1)
    write_sales(folder / "data/sales_1.csv", range(10))
    write_sales(folder / "data/sales_2.csv", range(1000, 1010))
    write_sales(folder / "data/sales_3.csv", range(2000, 2010))
    with psycopg.connect(database_url) as conn:
        conn.execute(ASLEEP_FROM_1000)
    settings = _settings(folder, database_url, workers=workers)

    result, seconds = _in_a_worker(settings)

    _assert_timed_out(database_url, result, seconds)
    assert [(f.path.rsplit("/", 1)[1], f.status, f.rows) for f in result.files] == [
        ("sales_1.csv", "imported", 10),
        ("sales_2.csv", "failed", 0),
        ("sales_3.csv", "failed", 0),
    ]
    assert result.files[1].error == ROLLED_BACK
    assert result.files[2].error in (
        ROLLED_BACK,
        f"{TIMED_OUT}: not started; the next run loads it",
    )
    assert (result.rows_imported, count(database_url), _loaded(database_url)) == (10, 11, 1)

    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TRIGGER asleep ON sales")
    _set_timeout(database_url, 600)
    again = run_schedule(NAME, settings=settings)
    assert (again.status, again.error) == ("succeeded", None)
    assert [f.status for f in again.files] == ["skipped", "imported", "imported"]
    assert (count(database_url), _loaded(database_url)) == (31, 3)


def test_a_wait_before_loading_is_cancelled(
    folder: Path, database_url: str, empty_database_url: str
) -> None:
    """A target database of its own whose import ledger cannot be created yet (another session
    holds the lock on its creation): the run's wait is cancelled at the bound, nothing is
    loaded, the job fails with the timeout's error; once the lock is free the next run loads."""
    target = empty_database_url
    with psycopg.connect(target) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales", "database_url": "${SALES_DB}"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    _set_timeout(database_url, 1)
    write_sales(folder / "data/sales_1.csv", range(10))
    settings = _settings(folder, database_url, environ={"SALES_DB": target})
    with psycopg.connect(target) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (Fixed.LEDGER_CREATE,))
        result, seconds = _in_a_worker(settings)
    _assert_timed_out(database_url, result, seconds)
    assert (result.files, result.rows_imported, count(target)) == ((), 0, 0)
    _set_timeout(database_url, 600)
    again = run_schedule(NAME, settings=settings)
    assert (again.status, again.rows_imported, count(target)) == ("succeeded", 10, 10)


def test_an_interrupt_cancels_a_running_statement_only(database_url: str) -> None:
    """The sessions' interrupt cancels a statement under way within a second; a commit made
    before it stays, a session idle on the server is not harmed, and from then on a stopped
    file gets the interrupt's error."""
    stop = SourceError("stopped")
    with Connections(database_url) as pool, pool.session() as conn, pool.session() as busy:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
        conn.commit()
        assert pool.halt() is None
        timer = threading.Timer(0.5, pool.interrupt, (lambda: stop,))
        began = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("SELECT pg_sleep(30)")
        timer.join()
        assert time.monotonic() - began < 0.5 + 2
        busy.rollback()
        assert pool.interrupted
        assert pool.halt() is stop
        row = conn.execute("SELECT count(*) FROM kept").fetchone()  # the idle session is fine
        assert row == (1,)
        conn.rollback()


def test_a_deadline_calls_back_once_passed_and_until_the_block_ends() -> None:
    """``on_cut`` calls back once the deadline passes and again until its block ends, never
    after; a block that ends in time is never called back; ``stop`` marks the deadline cut."""
    calls: list[float] = []
    quick = Deadline(1)
    with quick.on_cut(lambda: calls.append(time.monotonic())):
        pass
    assert (calls, quick.cut) == ([], False)

    deadline = Deadline(1)
    began = time.monotonic()
    with deadline.on_cut(lambda: calls.append(time.monotonic()), every=0.1):
        time.sleep(1.5)
    ended = len(calls)
    time.sleep(0.3)
    assert len(calls) == ended >= 3
    assert calls[0] - began >= 1
    assert not deadline.cut  # called back, but nothing said it stopped work
    assert deadline.rolled_back().message == (
        "timed out after 1 s (the schedule's timeout): its transaction was rolled back; "
        "the next run loads it whole"
    )
    assert deadline.cut
