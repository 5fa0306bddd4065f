"""Job history retention on real PostgreSQL: what is pruned, what is kept, in bounded batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, schedule_yaml, wait_until
from import_rows import add_project, add_schedule

from reconciler.errors import UsageError
from reconciler.settings import load_settings
from reconciler.store.pruning import Pruned, Retention, prune_jobs

NAME = "daily-sales-import"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit session, as the leader holds one, with a project and a schedule."""
    add_project(database_url)
    add_schedule(database_url, local_files=["data/*.csv"])
    with psycopg.connect(database_url, autocommit=True) as session:
        yield session


def _jobs(
    conn: psycopg.Connection[Any],
    n: int,
    *,
    days: float,
    name: str = NAME,
    status: str = "succeeded",
) -> list[str]:
    """``n`` jobs of schedule ``name`` that started ``days`` ago and each a second apart."""
    rows = conn.execute(
        "INSERT INTO cpi_jobs (schedule_name, status, trigger, started_at, finished_at) "
        "SELECT %s, %s, 'schedule', now() - make_interval(days => %s) - make_interval(secs => g), "
        "CASE WHEN %s = 'running' THEN NULL ELSE now() - make_interval(days => %s) END "
        "FROM generate_series(1, %s) g RETURNING id::text",
        (name, status, days, status, days, n),
    ).fetchall()
    return [r[0] for r in rows]


def _left(conn: psycopg.Connection[Any], name: str = NAME) -> int:
    row = conn.execute("SELECT count(*) FROM cpi_jobs WHERE schedule_name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _prune(conn: psycopg.Connection[Any], days: int = 30, keep: int = 0, **kw: Any) -> Pruned:
    return prune_jobs(conn, Retention(days, keep), owner="reconcile", within=30, **kw)


def test_jobs_past_the_retention_go_and_recent_ones_stay(conn: psycopg.Connection[Any]) -> None:
    """Jobs that started more than ``days`` ago are deleted; younger ones are kept."""
    _jobs(conn, 7, days=31)
    recent = set(_jobs(conn, 4, days=29))
    pruned = _prune(conn)
    assert (pruned.deleted, pruned.complete) == (7, True)
    assert {r[0] for r in conn.execute("SELECT id::text FROM cpi_jobs")} == recent


@pytest.mark.parametrize(
    ("old", "recent", "keep", "left"),
    [
        (10, 0, 3, 3),  # a schedule that stopped running keeps its last three
        (10, 2, 3, 3),  # two recent and the newest old one
        (10, 5, 3, 5),  # enough recent ones: every old one goes
        (2, 0, 3, 2),  # fewer than keep: nothing goes
        (10, 0, 0, 0),  # keep 0: age alone
    ],
)
def test_the_newest_jobs_of_each_schedule_are_kept_however_old(
    conn: psycopg.Connection[Any], old: int, recent: int, keep: int, left: int
) -> None:
    """At least the ``keep`` newest jobs of every schedule stay, old or not."""
    newest_old = _jobs(conn, old, days=60)[:1]
    _jobs(conn, recent, days=1)
    _jobs(conn, 4, days=90, name="other")  # counted per schedule: other's are not NAME's
    _prune(conn, keep=keep)
    assert _left(conn) == left
    if left > recent:
        assert conn.execute("SELECT 1 FROM cpi_jobs WHERE id = %s", (newest_old[0],)).fetchone(), (
            "the newest old job is among those kept"
        )
    assert _left(conn, "other") == min(keep, 4)


def test_running_jobs_and_a_schedules_last_job_are_never_pruned(
    conn: psycopg.Connection[Any],
) -> None:
    """A job still ``running`` and the one ``last_job_id`` points to stay, however old."""
    (running,) = _jobs(conn, 1, days=400, status="running")
    last, *_ = _jobs(conn, 3, days=400)
    conn.execute("UPDATE cpi_schedules SET last_job_id = %s WHERE name = %s", (last, NAME))
    assert _prune(conn).deleted == 2
    kept = {r[0] for r in conn.execute("SELECT id::text FROM cpi_jobs")}
    assert kept == {running, last}


def test_only_this_owners_schedules_and_deleted_schedules_are_pruned(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """Another owner's (or the original API's) history is theirs to keep; a deleted schedule's
    history, kept by name, is pruned like any other."""
    add_schedule(database_url, "theirs")
    conn.execute("UPDATE cpi_schedules SET owner = 'another' WHERE name = 'theirs'")
    add_schedule(database_url, "legacy")
    conn.execute("UPDATE cpi_schedules SET owner = NULL WHERE name = 'legacy'")
    for name in (NAME, "theirs", "legacy", "deleted-long-ago"):
        _jobs(conn, 5, days=40, name=name)
    conn.execute(
        "INSERT INTO cpi_jobs (status, started_at) VALUES ('succeeded', now() - interval '1 year')"
    )
    assert _prune(conn).deleted == 10
    left = dict(
        conn.execute("SELECT coalesce(schedule_name, '-'), count(*) FROM cpi_jobs GROUP BY 1")
    )
    assert left == {"theirs": 5, "legacy": 5, "-": 1}


def test_keep_forever_deletes_nothing(conn: psycopg.Connection[Any]) -> None:
    """``days`` 0 keeps every job."""
    _jobs(conn, 5, days=4000)
    assert _prune(conn, days=0) == Pruned((), complete=True)
    assert _left(conn) == 5


def test_references_to_a_pruned_job_are_cleared(conn: psycopg.Connection[Any]) -> None:
    """The import ledger keeps its records of a pruned job's files, without the job."""
    (old,) = _jobs(conn, 1, days=40)
    conn.execute(
        "INSERT INTO cpi_imported_files (project, source, path, size, mtime, job_id) "
        "VALUES ('sales_project', 'local', '/data/a.csv', 1, now(), %s)",
        (old,),
    )
    assert _prune(conn).deleted == 1
    assert conn.execute("SELECT path, job_id FROM cpi_imported_files").fetchall() == [
        ("/data/a.csv", None)
    ]


def test_a_large_backlog_goes_in_bounded_batches(conn: psycopg.Connection[Any]) -> None:
    """5,000 old jobs over five schedules: no statement deletes more than the batch; every one
    goes, oldest first, and the newest are kept."""
    for i in range(5):
        _jobs(conn, 1000, days=100 + i, name=f"s{i}")
    pruned = _prune(conn, keep=10, batch=700, pause=0)
    assert pruned.complete
    assert max(pruned.batches) == 700
    assert pruned.deleted == 5000 - 50
    assert len(pruned.batches) == -(-pruned.deleted // 700)
    assert [_left(conn, f"s{i}") for i in range(5)] == [10] * 5


def test_a_pass_stops_at_its_budget_and_the_next_goes_on(conn: psycopg.Connection[Any]) -> None:
    """A pass spends at most its budget (plus one batch); the next pass picks up from there."""
    _jobs(conn, 3000, days=40)
    began = time.monotonic()
    first = prune_jobs(conn, Retention(30, 0), owner="reconcile", within=0.2, batch=500, pause=0.15)
    assert time.monotonic() - began < 5
    assert not first.complete
    assert 1 <= len(first.batches) <= 2
    assert all(n == 500 for n in first.batches)
    second = _prune(conn, batch=500, pause=0)
    assert second.complete
    assert first.deleted + second.deleted == 3000


def test_a_stop_ends_the_pass_between_batches(conn: psycopg.Connection[Any]) -> None:
    """Shutting down does not wait for the pruning: it ends at the next pause."""
    _jobs(conn, 2000, days=40)
    stop = threading.Event()
    stop.set()
    pruned = _prune(conn, batch=500, pause=10, stop=stop)
    assert (pruned.batches, pruned.complete) == ((500,), False)


@pytest.mark.parametrize(
    ("env", "days", "keep"),
    [
        ({}, 30, 100),
        ({"RECONCILER_JOB_RETENTION_DAYS": "0"}, 0, 100),
        ({"RECONCILER_JOB_RETENTION_DAYS": "7", "RECONCILER_JOB_RETENTION_MIN": "0"}, 7, 0),
    ],
)
def test_retention_settings(env: dict[str, str], days: int, keep: int) -> None:
    """30 days and the newest 100 jobs of each schedule by default; 0 days keeps every job."""
    settings = load_settings(environ=env)
    assert (settings.job_retention_days, settings.job_retention_min) == (days, keep)


def test_a_negative_retention_is_refused() -> None:
    """A bad value names its variable."""
    with pytest.raises(UsageError, match="RECONCILER_JOB_RETENTION_DAYS='-1' is out of range"):
        load_settings(environ={"RECONCILER_JOB_RETENTION_DAYS": "-1"})


def test_the_leader_of_reconcile_serve_prunes(cli: Cli, database_url: str) -> None:
    """A real daemon with one day of retention and two jobs kept per schedule prunes at once:
    its own schedule's old jobs but the newest two, and a deleted schedule's; it logs what it
    deleted."""
    (cli.cwd / "data").mkdir()
    (cli.cwd / "schedules.d" / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
        _jobs(conn, 5, days=10, name="nightly")
        _jobs(conn, 4, days=10, name="deleted-schedule")
        _jobs(conn, 3, days=0, name="deleted-schedule")
    env = {**cli.env, "RECONCILER_JOB_RETENTION_DAYS": "1", "RECONCILER_JOB_RETENTION_MIN": "2"}
    with Daemon(cli.cwd, env) as daemon:
        daemon.wait_ready()
        wait_until(
            lambda: one(database_url, "SELECT count(*) FROM cpi_jobs") == 2 + 3,
            timeout=30, what=f"the pruning\n{daemon.log()}",
        )  # fmt: skip
        assert (
            one(
                database_url,
                "SELECT count(*) FROM cpi_jobs WHERE schedule_name = 'deleted-schedule'",
            )
            == 3
        )
        pruned = [e for e in daemon.events() if e.get("event") == "job history pruned"]
        assert pruned, daemon.log()
        assert sum(e["jobs"] for e in pruned) == 3 + 4
        assert daemon.stop() == 0
