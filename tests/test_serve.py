"""``reconcile serve`` as a real process on a real database and real file-system events."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until


@pytest.fixture
def folder(cli: Cli) -> Path:
    """schedules.d/ with a project and one schedule, data/ beside it, public.sales created."""
    documents = project_yaml() + schedule_yaml("nightly")
    return sales_folder(cli.env["RECONCILER_DATABASE_URL"], cli.cwd, documents)


def _cron(url: str, name: str = "nightly") -> str | None:
    return one(url, "SELECT cron_expression FROM cpi_schedules WHERE name = %s", (name,))


def test_serve_applies_each_edit_and_keeps_the_last_good_state_through_a_bad_one(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """Applied at start, every edit applied within seconds; a bad edit applies nothing, is
    shown by status and /metrics with file:line:col, and its fix recovers without a restart."""
    with Daemon(cli.cwd, cli.env) as daemon:
        daemon.wait_ready()
        assert daemon.get("/healthz")[0] == 200
        assert _cron(database_url) == "0 0 1 1 *"
        stored = one(database_url, "SELECT next_run_at FROM cpi_schedules")
        assert stored is not None
        assert stored.month == 1
        assert stored.day == 1

        (folder / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="0 3 * * *")
        )
        wait_until(lambda: _cron(database_url) == "0 3 * * *", timeout=10, what="the edit")
        wait_until(
            lambda: (t := one(database_url, "SELECT next_run_at FROM cpi_schedules"))
            and t.hour == 3,
            timeout=10, what="the next run recomputed",
        )  # fmt: skip

        (folder / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="0 4 * * *") + "  bogus: 1\n"
        )
        wait_until(lambda: daemon.metric("reconcile_config_load_ok") == 0, timeout=10)
        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert "sales.yaml:" in status.stdout
        assert "bogus" in status.stdout
        assert _cron(database_url) == "0 3 * * *"  # the last good state keeps running
        assert daemon.ready()

        (folder / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="0 4 * * *")
        )
        wait_until(lambda: _cron(database_url) == "0 4 * * *", timeout=10, what="the fix")
        assert daemon.metric("reconcile_config_load_ok") == 1
        assert "bogus" not in cli("status").stdout
        assert daemon.stop() == 0


def test_a_configmap_style_symlink_swap_is_applied(cli: Cli, database_url: str) -> None:
    """The kubelet's update (a new timestamped folder, ``..data`` renamed over) is noticed."""
    folder = cli.cwd / "schedules.d"
    first = folder / "..2026_12_01_00_00_00.1"
    first.mkdir()
    (first / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
    (folder / "..data").symlink_to(first.name)
    (folder / "sales.yaml").symlink_to("..data/sales.yaml")
    with Daemon(cli.cwd, cli.env) as daemon:
        daemon.wait_ready()
        assert _cron(database_url) == "0 0 1 1 *"
        second = folder / "..2026_12_01_00_05_00.2"
        second.mkdir()
        (second / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="5 5 * * *")
        )
        (folder / "..data_tmp").symlink_to(second.name)
        os.rename(folder / "..data_tmp", folder / "..data")
        for path in first.iterdir():
            path.unlink()
        first.rmdir()
        wait_until(lambda: _cron(database_url) == "5 5 * * *", timeout=10, what="the swap")
        assert daemon.stop() == 0


def test_a_replaced_folder_is_watched_anew(cli: Cli, folder: Path, database_url: str) -> None:
    """``mv new schedules.d`` swaps the folder: the swap and later edits in it are applied."""
    with Daemon(cli.cwd, cli.env) as daemon:
        daemon.wait_ready()
        new = cli.cwd / "schedules.new"
        new.mkdir()
        (new / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly", cron="2 2 * * *"))
        folder.rename(cli.cwd / "schedules.old")
        new.rename(folder)
        wait_until(lambda: _cron(database_url) == "2 2 * * *", timeout=10, what="the swap")
        (folder / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="3 3 * * *")
        )
        wait_until(lambda: _cron(database_url) == "3 3 * * *", timeout=10, what="an edit after it")
        assert daemon.stop() == 0


def test_sighup_rescans_and_sets_back_drift(cli: Cli, folder: Path, database_url: str) -> None:
    """A row changed behind the daemon's back is set back on SIGHUP (no file event needed)."""
    env = {**cli.env, "RECONCILER_RESYNC_SECONDS": "3600"}
    with Daemon(cli.cwd, env) as daemon:
        daemon.wait_ready()
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE cpi_schedules SET cron_expression = '9 9 * * *'")
        time.sleep(1)
        assert _cron(database_url) == "9 9 * * *"
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _cron(database_url) == "0 0 1 1 *", timeout=10, what="drift set back")
        assert daemon.stop() == 0


def test_occurrences_missed_while_down_are_recorded_and_the_latest_runs(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """Every-minute schedule down for ten minutes, grace 150 s: the one due within grace runs
    at start; the older ones are recorded missed, each once."""
    (folder / "sales.yaml").write_text(
        project_yaml() + schedule_yaml("minutely", cron="* * * * *", grace=150)
    )
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE cpi_schedules SET next_run_at = date_trunc('minute', now()) - interval '10 min'"
        )
    with Daemon(cli.cwd, cli.env) as daemon:
        daemon.wait_ready()
        wait_until(
            lambda: one(database_url, "SELECT count(*) FROM cpi_jobs WHERE status <> 'running'")
            >= 9,
            timeout=20, what="the catch-up",
        )  # fmt: skip
        assert daemon.stop() == 0
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT status, scheduled_for, trigger FROM cpi_jobs ORDER BY scheduled_for"
        ).fetchall()
    statuses = [r[0] for r in rows]
    assert {r[2] for r in rows} == {"schedule"}
    assert len({r[1] for r in rows}) == len(rows)  # each occurrence once
    assert statuses.count("succeeded") >= 1
    assert statuses.count("missed") >= 8
    ran = [r[1] for r in rows if r[0] == "succeeded"]
    missed = [r[1] for r in rows if r[0] == "missed"]
    assert max(missed) < min(ran)


def test_restarts_never_move_an_interval_schedules_next_run(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """An hourly interval counts from the anchor apply stored: restarting the daemon (twice)
    keeps the same next run, so frequent restarts never starve it."""
    (folder / "sales.yaml").write_text(
        project_yaml() + schedule_yaml("nightly").replace('cron: "0 0 1 1 *"', "interval: 3600")
    )
    seen = []
    for _ in range(2):
        with Daemon(cli.cwd, cli.env) as daemon:
            daemon.wait_ready()
            seen.append(
                wait_until(lambda: one(database_url, "SELECT next_run_at FROM cpi_schedules"))
            )
            assert daemon.stop() == 0
    anchor = one(database_url, "SELECT interval_anchor FROM cpi_schedules")
    assert seen[0] == seen[1] == anchor + timedelta(hours=1)
