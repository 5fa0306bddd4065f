"""Two real ``reconcile serve`` replicas: followers ready at once."""

from __future__ import annotations

import time

from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until


def _cron(url: str) -> str | None:
    return one(url, "SELECT cron_expression FROM cpi_schedules WHERE name = 'nightly'")


def test_followers_are_ready_within_seconds_of_the_first_apply(cli: Cli, database_url: str) -> None:
    """On a fresh database, with the resync at its default minute, both replicas answer
    /readyz within seconds of the leader's first apply: the notice follows the load's record."""
    sales_folder(database_url, cli.cwd, project_yaml() + schedule_yaml("nightly"))
    daemons = [Daemon(cli.cwd, cli.env, name=f"replica{i}") for i in range(2)]
    try:
        wait_until(
            lambda: one(database_url, "SELECT loaded_at FROM cpi_daemon_state"),
            timeout=60, what="the first apply",
        )  # fmt: skip
        loaded = time.monotonic()
        for daemon in daemons:
            daemon.wait_ready(timeout=10)
        assert time.monotonic() - loaded < 10
        assert _cron(database_url) == "0 0 1 1 *"
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log()
    finally:
        for daemon in daemons:
            daemon.__exit__()
