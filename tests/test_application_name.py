"""Every session says who opened it: ``application_name`` is ``reconcile/<role>/<host:pid>``."""

from __future__ import annotations

import os
import re
import socket
import threading

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until

from reconciler.store.connecting import session_name

HOST = socket.gethostname()


def _named_in(thread: str, role: str | None = None) -> str:
    names: list[str] = []
    worker = threading.Thread(target=lambda: names.append(session_name(role)), name=thread)
    worker.start()
    worker.join()
    return names[0]


@pytest.mark.parametrize(
    ("thread", "role", "shown"),
    [
        ("leader", None, "leader"),
        ("leader-heartbeat", None, "leader"),
        ("timer-sync", None, "timer"),
        ("timer-claim", None, "timer"),
        ("run_3", None, "run"),
        ("callbacks", None, "callback"),
        ("AnyIO worker thread", None, "api"),
        ("some-other-thread", None, "cli"),
        ("run_0", "api", "api"),
    ],
)
def test_a_session_is_named_after_its_role_thread_or_process(
    thread: str, role: str | None, shown: str
) -> None:
    """The caller's role wins, then the thread's (by its name), then the process's."""
    assert _named_in(thread, role) == f"reconcile/{shown}/{HOST}:{os.getpid()}"


def test_a_name_is_cut_as_postgresql_cuts_it(database_url: str) -> None:
    """A long host name is cut to 63 bytes, so the name equals what pg_stat_activity shows."""
    name = session_name("leader", process="h" * 80 + ":4242")
    assert len(name.encode()) == 63
    with psycopg.connect(database_url, application_name=name) as conn:
        shown = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert shown == (name,)


def _sessions(url: str) -> list[str]:
    """The application names of the other sessions on the test's database."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sorted(r[0] for r in rows)


def test_a_running_serve_names_each_of_its_sessions_by_role(cli: Cli, database_url: str) -> None:
    """A real serve, having run an import and answered /metrics, its API on: each of its
    sessions is reconcile/<role>/<host>:<pid> (leader, timer, run, api), and no other."""
    documents = project_yaml() + schedule_yaml("nightly", cron="* * * * *", grace=3600)
    sales_folder(database_url, cli.cwd, documents)
    (cli.cwd / "data" / "sales.csv").write_text("sale_id,sold_at,amount\n1,2026-11-01,9.5\n")
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:  # due now: the daemon runs it at start
        conn.execute("UPDATE cpi_schedules SET next_run_at = date_trunc('minute', now())")
    with Daemon(cli.cwd, {**cli.env, "RECONCILER_API_KEY": "names-key-0123456789"}) as daemon:
        daemon.wait_ready()
        wait_until(
            lambda: one(database_url, "SELECT status FROM cpi_jobs") == "succeeded",
            timeout=30, what="the run",
        )  # fmt: skip
        assert daemon.get("/metrics")[0] == 200
        process = f"{HOST}:{daemon.process.pid}"
        expected = {f"reconcile/{role}/{process}" for role in ("leader", "timer", "run", "api")}
        leader = f"reconcile/leader/{process}"  # the lock's session, and the heartbeat's
        names = wait_until(
            lambda: (n := _sessions(database_url)) and expected <= set(n)
            and n.count(leader) == 2 and n,
            timeout=20, what="sessions of every role",
        )  # fmt: skip
        pattern = re.compile(
            rf"reconcile/(leader|timer|run|api|callback|serve)/{re.escape(process)}"
        )
        assert [n for n in names if not pattern.fullmatch(n)] == []
        assert daemon.stop() == 0


def test_a_command_names_its_session(cli: Cli) -> None:
    """A CLI command's session shows as reconcile/<command>/<host>:<pid> (its own process)."""
    done = cli(
        "sql", "-c", "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    )
    assert done.returncode == 0, done.stderr
    assert re.search(rf"reconcile/sql/{re.escape(HOST)}:\d+", done.stdout), done.stdout
