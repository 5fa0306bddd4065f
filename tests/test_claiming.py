"""The scheduler's claim (``store.claiming``) in-process on real PostgreSQL, with an injected clock.

Each test moves a clock of its own through minutes of occurrences and claims as one or several
replicas would; no test waits for a real minute.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemons import wait_until
from import_rows import SALES, add_project, add_schedule, jobs, write_sales

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.timing import Timer
from reconciler.daemon.working import Runner
from reconciler.settings import load_settings
from reconciler.store.claimed import hand_back, schedule_retry, start_claimed
from reconciler.store.claiming import Claimed, claim_due
from reconciler.store.connecting import process_name
from reconciler.store.liveness import job_lock_key

OWNER = "reconcile"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _minute(n: int, seconds: float = 0.0) -> datetime:
    return T0 + timedelta(minutes=n, seconds=seconds)


def _claim(url: str, now: datetime, *, limit: int = 8, worker: str = "a:1", **kw: Any) -> Claimed:
    with psycopg.connect(url, autocommit=True) as conn:
        return claim_due(conn, owner=OWNER, worker=worker, now=now, limit=limit, **kw)


def _every_minute(url: str, *names: str, grace: int = 300, enabled: bool = True) -> None:
    add_project(url)
    for name in names:
        add_schedule(url, name, enabled=enabled)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE cpi_schedules SET cron_expression = '* * * * *', misfire_grace_seconds = %s "
            "WHERE name = ANY(%s)",
            (grace, list(names)),
        )


def _next_run(url: str, name: str) -> datetime | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT next_run_at FROM cpi_schedules WHERE name = %s", (name,))
        value = row.fetchone()
    assert value is not None
    result: datetime | None = value[0]
    return result


def _by_time(url: str, name: str) -> list[dict[str, Any]]:
    """The schedule's jobs by the occurrence they are for (one claim writes several at once)."""
    return sorted(jobs(url, name), key=lambda j: j["scheduled_for"])


def _statuses(url: str, name: str) -> list[tuple[datetime, str]]:
    return [(j["scheduled_for"], j["status"]) for j in _by_time(url, name)]


def test_a_new_schedule_gets_its_first_run_and_nothing_runs(database_url: str) -> None:
    _every_minute(database_url, "s")
    claimed = _claim(database_url, _minute(0, 20))
    assert claimed.runs == ()
    assert _next_run(database_url, "s") == _minute(1)
    assert claimed.next_due == _minute(1)
    assert jobs(database_url, "s") == []


def test_a_due_occurrence_is_recorded_claimed_then_started(database_url: str) -> None:
    """The claim writes the job unstarted and moves the next run on; the start stamps it."""
    _every_minute(database_url, "s")
    _claim(database_url, _minute(0, 20))
    assert _claim(database_url, _minute(0, 59)).runs == ()  # not yet due
    (run,) = _claim(database_url, _minute(1, 0.2)).runs
    assert (run.schedule.name, run.scheduled_for, run.status) == ("s", _minute(1), "running")
    assert _next_run(database_url, "s") == _minute(2)
    (job,) = jobs(database_url, "s")
    assert (job["status"], job["started_at"], job["worker"]) == ("running", None, "a:1")
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = start_claimed(conn, run, "a:1")
        assert started is not None
        assert started.status == "running"
        (job,) = jobs(database_url, "s")
        assert job["started_at"] == started.started_at
        key = job_lock_key("s") & 0xFFFFFFFFFFFFFFFF
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
            (key >> 32, key & 0xFFFFFFFF),
        ).fetchone()
        assert held == (1,)  # the schedule's run lock, held by the session that runs it


def test_a_claim_takes_no_more_than_its_free_slots(database_url: str) -> None:
    names = [f"s{i}" for i in range(5)]
    _every_minute(database_url, *names)
    _claim(database_url, _minute(0, 20))
    first = _claim(database_url, _minute(1, 1), limit=2)
    assert (len(first.runs), first.full) == (2, True)
    assert _claim(database_url, _minute(1, 2), limit=0).runs == ()
    rest = _claim(database_url, _minute(1, 3), limit=8)
    assert (len(rest.runs), rest.full) == (3, False)
    claimed = sorted(r.schedule.name for r in (*first.runs, *rest.runs))
    assert claimed == names
    assert all(r.scheduled_for == _minute(1) for r in (*first.runs, *rest.runs))


def test_replicas_claiming_at_once_take_disjoint_batches(database_url: str) -> None:
    """Three replicas claim 60 due schedules at the same instant, four slots at a time, until
    none is left: every occurrence is claimed exactly once, and each replica takes a share."""
    names = [f"s{i:02}" for i in range(60)]
    _every_minute(database_url, *names)
    _claim(database_url, _minute(0, 20))
    taken: dict[str, list[str]] = {w: [] for w in ("a:1", "b:2", "c:3")}
    start = threading.Barrier(3)

    def replica(worker: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            start.wait()
            while True:
                claimed = claim_due(conn, owner=OWNER, worker=worker, now=_minute(1, 1), limit=4)
                taken[worker] += [r.schedule.name for r in claimed.runs]
                if not claimed.runs:
                    return

    threads = [threading.Thread(target=replica, args=(w,)) for w in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = Counter(name for names_ in taken.values() for name in names_)
    assert sorted(every) == names
    assert set(every.values()) == {1}
    assert all(taken.values())  # each replica claimed some
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT worker) FROM cpi_jobs").fetchone()
    assert rows is not None
    assert rows[0] == 60


def test_occurrences_due_at_once_run_the_latest_and_say_the_rest_were_superseded(
    database_url: str,
) -> None:
    """Down for three minutes: the latest within grace runs, the earlier ones are recorded
    missed as superseded by it, not as past a grace they were within."""
    _every_minute(database_url, "s", grace=300)
    _claim(database_url, _minute(0, 20))
    (run,) = _claim(database_url, _minute(3, 31)).runs
    assert run.scheduled_for == _minute(3)
    statuses = _statuses(database_url, "s")
    assert statuses == [
        (_minute(1), "missed"), (_minute(2), "missed"), (_minute(3), "running")
    ]  # fmt: skip
    errors = [j["error"] for j in _by_time(database_url, "s")[:2]]
    assert (
        errors
        == [
            "not run: superseded by 12:03 UTC, which ran instead (of the occurrences due at once, "
            "only the latest within the misfire_grace runs)"
        ]
        * 2
    )
    assert _next_run(database_url, "s") == _minute(4)


def test_occurrences_past_their_grace_say_so(database_url: str) -> None:
    _every_minute(database_url, "s", grace=10)
    _claim(database_url, _minute(0, 20))
    assert _claim(database_url, _minute(2, 30)).runs == ()
    errors = [(j["status"], j["error"]) for j in _by_time(database_url, "s")]
    assert errors == [
        ("missed", "not run: 90 s after its time, past the schedule's misfire_grace of 10 s "
                   "(the daemon was down or busy)"),
        ("missed", "not run: 30 s after its time, past the schedule's misfire_grace of 10 s "
                   "(the daemon was down or busy)"),
    ]  # fmt: skip


def test_a_disabled_schedule_is_not_claimed(database_url: str) -> None:
    _every_minute(database_url, "off", enabled=False)
    _claim(database_url, _minute(0, 20))
    assert _claim(database_url, _minute(5)).runs == ()
    assert jobs(database_url, "off") == []


def test_an_occurrence_overlapping_a_live_run_is_skipped(database_url: str) -> None:
    _every_minute(database_url, "s")
    _claim(database_url, _minute(0, 20))
    (first,) = _claim(database_url, _minute(1, 0.1)).runs
    with psycopg.connect(database_url, autocommit=True) as running:
        assert start_claimed(running, first, "a:1") is not None
        (second,) = _claim(database_url, _minute(2, 0.1)).runs
        assert second.status == "skipped"
        assert second.error is not None
        assert second.error.startswith(
            f"job {first.job_id} of this schedule is still running (since "
        )
    # the run's session ended without recording an end: the next claim abandons it and runs
    (third,) = _claim(database_url, _minute(3, 0.1)).runs
    assert third.status == "running"
    assert [j["status"] for j in _by_time(database_url, "s")] == [
        "abandoned", "skipped", "running"
    ]  # fmt: skip


def test_a_claim_never_started_is_taken_over_within_grace(database_url: str) -> None:
    """Replica a claims and dies before the start; replica b takes the claim over and starts
    it; a, waking, finds it is no longer its own and does nothing."""
    _every_minute(database_url, "s")
    _claim(database_url, _minute(0, 20))
    (claimed,) = _claim(database_url, _minute(1, 0.1), worker="a:1").runs
    assert _claim(database_url, _minute(1, 5), worker="b:2").runs == ()  # a is not late yet
    (taken,) = _claim(database_url, _minute(1, 20), worker="b:2", handoff=timedelta(0)).runs
    assert taken.job_id == claimed.job_id
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert start_claimed(conn, claimed, "a:1") is None
        started = start_claimed(conn, taken, "b:2")
    assert started is not None
    (job,) = jobs(database_url, "s")
    assert job["worker"] == "b:2"


def test_a_claim_never_started_past_its_grace_is_recorded_with_the_reason(
    database_url: str,
) -> None:
    _every_minute(database_url, "s", grace=30)
    _claim(database_url, _minute(0, 20))
    _claim(database_url, _minute(1, 0.1), worker="a:1")
    assert _claim(database_url, _minute(1, 45), worker="b:2", handoff=timedelta(0)).runs == ()
    (job,) = jobs(database_url, "s")
    assert job["status"] == "missed"
    assert job["error"] == (
        "not run: claimed by a:1, which stopped before starting it; by 45 s after its time it "
        "was past the schedule's misfire_grace of 30 s"
    )


def test_claims_handed_back_are_taken_over_at_once(database_url: str) -> None:
    _every_minute(database_url, "s")
    _claim(database_url, _minute(0, 20))
    _claim(database_url, _minute(1, 0.1), worker="a:1")
    assert _claim(database_url, _minute(1, 1), worker="b:2").runs == ()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert hand_back(conn, "a:1") == 1
    (taken,) = _claim(database_url, _minute(1, 1.5), worker="b:2").runs
    assert taken.scheduled_for == _minute(1)


def test_an_hour_of_minutes_over_three_replicas_claims_each_occurrence_once(
    database_url: str,
) -> None:
    """Sixty simulated minutes, ten schedules, three replicas claiming each minute in turn with
    two slots each and starting what they claim: 600 occurrences, each run exactly once."""
    names = [f"s{i}" for i in range(10)]
    _every_minute(database_url, *names)
    _claim(database_url, _minute(0, 20))
    workers = ["a:1", "b:2", "c:3"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for minute in range(1, 61):
            for step, worker in enumerate(workers * 2):
                now = _minute(minute, 0.5 + step)
                for run in claim_due(conn, owner=OWNER, worker=worker, now=now, limit=2).runs:
                    started = start_claimed(conn, run, worker)
                    assert started is not None
                    conn.execute(
                        "UPDATE cpi_jobs SET status = 'succeeded', finished_at = now() "
                        "WHERE id = %s",
                        (run.job_id,),
                    )
                    conn.execute("SELECT pg_advisory_unlock_all()")
        counts = conn.execute(
            "SELECT status, count(*), count(DISTINCT (schedule_name, scheduled_for)) "
            "FROM cpi_jobs GROUP BY status"
        ).fetchall()
    assert counts == [("succeeded", 600, 600)]


@pytest.fixture
def sales_folder(tmp_path: Path, database_url: str) -> Path:
    (tmp_path / "schedules.d").mkdir()
    write_sales(tmp_path / "data/sales_1.csv", range(3))
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    return tmp_path


@contextmanager
def _serving(folder: Path, url: str, offset: timedelta) -> Iterator[None]:
    """The timer and runner of one replica in-process, on the clock ``now + offset``."""
    settings = load_settings(
        schedules_dir=str(folder / "schedules.d"), database_url=url,
        state_dir=str(folder / "state"),
        environ={"RECONCILER_LOG_LEVEL": "error", "RECONCILER_SETTLE_SECONDS": "0"},
    )  # fmt: skip
    metrics = Metrics()
    runner = Runner(settings, metrics, url=url, workers=2)
    stop = threading.Event()
    timer = Timer(
        metrics, runner, url=url, owner=OWNER, resync_seconds=60, stop=stop,
        clock=lambda: datetime.now(UTC) + offset,
    )  # fmt: skip
    timer.start()
    try:
        yield
    finally:
        stop.set()
        runner.refuse()
        timer.stop()
        runner.stop(10)


def _second_before_a_minute() -> tuple[datetime, timedelta]:
    """A clock offset that puts the next minute one second away, and that minute."""
    real = datetime.now(UTC)
    minute = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return minute, minute - timedelta(seconds=1) - real


def test_the_timer_claims_at_the_minute_and_the_runner_imports(
    sales_folder: Path, database_url: str
) -> None:
    """The timer and runner in-process, on a clock a second before a minute: the schedule's
    first occurrence is claimed at the minute, run, and its file's rows land."""
    add_project(database_url)
    add_schedule(database_url, "s", local_files=["../data/sales_*.csv"])
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET cron_expression = '* * * * *'")
    minute, offset = _second_before_a_minute()
    with _serving(sales_folder, database_url, offset):
        wait_until(
            lambda: [j["status"] for j in jobs(database_url, "s")] == ["succeeded"], timeout=20,
            what="the run to succeed",
        )  # fmt: skip
    (job,) = jobs(database_url, "s")
    assert job["trigger"] == "schedule"
    assert job["rows_imported"] == 3
    assert job["scheduled_for"] == minute
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.sales").fetchone() == (3,)


def test_the_runner_retries_a_failed_run_after_its_backoff(
    sales_folder: Path, database_url: str
) -> None:
    """The target table is missing: the run fails, its retry a second later is a job of its
    own for the same occurrence; once the table exists, the retry loads the file."""
    add_project(database_url, target={"table": "public.later"})
    add_schedule(database_url, "s", local_files=["../data/sales_*.csv"])
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE cpi_schedules SET cron_expression = '* * * * *', retries = 3, "
            "retry_backoff_seconds = 1"
        )
    minute, offset = _second_before_a_minute()
    with _serving(sales_folder, database_url, offset):
        wait_until(
            lambda: "failed" in [j["status"] for j in jobs(database_url, "s")], timeout=20,
            what="the first try to fail",
        )  # fmt: skip
        with psycopg.connect(database_url) as conn:
            conn.execute("CREATE TABLE public.later (LIKE public.sales)")
        wait_until(
            lambda: "succeeded" in [j["status"] for j in jobs(database_url, "s")], timeout=20,
            what="a retry to succeed",
        )  # fmt: skip
    tries = sorted(jobs(database_url, "s"), key=lambda j: j["attempt"])
    assert {j["scheduled_for"] for j in tries} == {minute}
    assert [j["status"] for j in tries][-1] == "succeeded"
    assert all(j["status"] == "failed" for j in tries[:-1])
    assert [j["retry_of"] for j in tries[1:]] == [j["id"] for j in tries[:-1]]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.later").fetchone() == (3,)


def _fail(url: str, job_id: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE cpi_jobs SET status = 'failed', finished_at = now(), error = 'boom' "
            "WHERE id = %s",
            (job_id,),
        )


def _failed_once(
    url: str, *, retries: int, backoff: int, grace: int = 300
) -> tuple[str, str, datetime]:
    """An every-minute schedule with ``retries`` whose 12:01 run started and failed: that job's
    id, and the retry it is followed by (recorded, waiting ``backoff`` s) with its ``retry_at``."""
    _every_minute(url, "s", grace=grace)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE cpi_schedules SET retries = %s, retry_backoff_seconds = %s", (retries, backoff)
        )
    _claim(url, _minute(0, 20))
    (run,) = _claim(url, _minute(1, 0.1)).runs
    with psycopg.connect(url, autocommit=True) as conn:
        assert start_claimed(conn, run, "a:1") is not None
        conn.execute("SELECT pg_advisory_unlock_all()")
        _fail(url, run.job_id)
        retry = schedule_retry(conn, run.job_id)
    assert retry is not None
    return run.job_id, *retry


def test_a_failed_run_is_retried_after_its_backoff_until_its_retries_are_used(
    database_url: str,
) -> None:
    """retries: 2, retry_backoff: 1s. Each retry is a job of its own for the same occurrence,
    with the next attempt and a link to the try it follows; a new occurrence that comes while
    a retry waits is skipped, saying so; after the last try no retry is recorded."""
    first, retry, retry_at = _failed_once(database_url, retries=2, backoff=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        waiting = _claim(database_url, _minute(2, 0.1))  # the retry waits; the new one is skipped
        assert [(r.status, r.scheduled_for) for r in waiting.runs] == [("skipped", _minute(2))]
        assert waiting.runs[0].error is not None
        assert "a retry of this schedule, waits until" in waiting.runs[0].error
        assert waiting.retry_in is not None
        assert 0 < waiting.retry_in <= 1
        (second,) = wait_until(
            lambda: _claim(database_url, _minute(2, 2)).runs, timeout=5, what="the retry"
        )
        assert (second.job_id, second.attempt, second.scheduled_for) == (retry, 2, _minute(1))
        assert start_claimed(conn, second, "a:1") is not None
        conn.execute("SELECT pg_advisory_unlock_all()")
        _fail(database_url, second.job_id)
        third = schedule_retry(conn, second.job_id)
        assert third is not None
        assert third[1] - retry_at >= timedelta(seconds=1)  # the backoff doubled: 2 s
        conn.execute("UPDATE cpi_jobs SET retry_at = now() WHERE id = %s", (third[0],))
        (last,) = _claim(database_url, _minute(2, 3)).runs
        assert last.attempt == 3
        assert start_claimed(conn, last, "a:1") is not None
        _fail(database_url, last.job_id)
        assert schedule_retry(conn, last.job_id) is None  # two retries: used up
    chain = [
        (j["attempt"], j["status"], str(j["retry_of"]) if j["retry_of"] else None)
        for j in _by_time(database_url, "s")
        if j["scheduled_for"] == _minute(1)
    ]
    assert sorted(chain, key=lambda c: c[0]) == [
        (1, "failed", None), (2, "failed", first), (3, "failed", second.job_id)
    ]  # fmt: skip


def test_a_manual_run_that_fails_is_not_retried(database_url: str) -> None:
    from reconciler.store.jobs import ScheduleRef, start_job

    _every_minute(database_url, "s")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE cpi_schedules SET retries = 3")
        sid = conn.execute("SELECT id::text FROM cpi_schedules").fetchone()
        assert sid is not None
        started = start_job(conn, ScheduleRef(sid[0], "s", None, None), trigger="manual")
        _fail(database_url, started.id)
        assert schedule_retry(conn, started.id) is None


def test_a_waiting_retry_of_a_schedule_disabled_meanwhile_is_not_run(database_url: str) -> None:
    _, retry, _ = _failed_once(database_url, retries=2, backoff=1)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET enabled = false")
        conn.execute("UPDATE cpi_jobs SET retry_at = now() WHERE id = %s", (retry,))
    assert _claim(database_url, _minute(1, 5)).runs == ()
    waiting = next(j for j in jobs(database_url, "s") if str(j["id"]) == retry)
    assert (waiting["status"], waiting["error"]) == (
        "skipped", "not run: its schedule was disabled or deleted before this retry was due"
    )  # fmt: skip


def test_a_retry_taken_over_counts_its_grace_from_when_it_was_due(database_url: str) -> None:
    """A retry claimed long after its occurrence (its backoff) and left unstarted is taken over
    when its own due time is within the grace, though the occurrence's is not."""
    _, retry, _ = _failed_once(database_url, retries=1, backoff=60, grace=10)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_jobs SET retry_at = %s WHERE id = %s", (_minute(2), retry))
    runs = _claim(database_url, _minute(2, 1), worker="a:1").runs  # a claims, then dies
    (claimed,) = [r for r in runs if r.attempt == 2]  # beside the 12:02 occurrence, skipped
    assert claimed.job_id == retry
    (taken,) = _claim(database_url, _minute(2, 5), worker="b:2", handoff=timedelta(0)).runs
    assert (taken.job_id, taken.attempt) == (retry, 2)


def test_a_worker_whose_kept_session_died_starts_its_next_claim_at_once(
    sales_folder: Path, database_url: str
) -> None:
    """The database ended the run slot's session (a restart) between two runs: the next claim
    starts on a new session at once, not after another replica's takeover."""
    add_project(database_url)
    for name in ("first", "second"):
        add_schedule(database_url, name, local_files=["../data/sales_*.csv"])
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE cpi_schedules SET cron_expression = '* * * * *', "
            "next_run_at = date_trunc('minute', now())"
        )
    settings = load_settings(
        schedules_dir=str(sales_folder / "schedules.d"), database_url=database_url,
        state_dir=str(sales_folder / "state"),
        environ={"RECONCILER_LOG_LEVEL": "error", "RECONCILER_SETTLE_SECONDS": "0"},
    )  # fmt: skip
    runner = Runner(settings, Metrics(), url=database_url, workers=1)
    now = datetime.now(UTC)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            first, second = claim_due(
                conn, owner=OWNER, worker=process_name(), now=now, limit=2
            ).runs
            runner.start(first)
            wait_until(
                lambda: jobs(database_url, first.schedule.name)[0]["status"] == "succeeded",
                timeout=20, what="the first run",
            )  # fmt: skip
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'reconcile/run/%%' AND pid <> pg_backend_pid()"
            )
            runner.start(second)
            wait_until(
                lambda: jobs(database_url, second.schedule.name)[0]["status"] == "succeeded",
                timeout=10, what="the second run, on a new session",
            )  # fmt: skip
    finally:
        runner.stop(10)
