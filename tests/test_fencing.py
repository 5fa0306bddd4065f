"""Two real ``reconcile serve`` replicas: followers ready at once, and a frozen leader fenced."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until

FENCE = 3  # RECONCILER_LEADER_FENCE_SECONDS: the lowest it may be; the leader beats every 0.5 s


def _leader(url: str) -> str | None:
    return one(url, "SELECT leader FROM cpi_daemon_state")


def _cron(url: str) -> str | None:
    return one(url, "SELECT cron_expression FROM cpi_schedules WHERE name = 'nightly'")


def _events(daemon: Daemon, event: str) -> list[dict[str, object]]:
    return [e for e in daemon.events() if e.get("event", "").startswith(event)]


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


def test_a_frozen_leader_is_fenced_and_never_applies_when_it_wakes(
    cli: Cli, database_url: str
) -> None:
    """SIGSTOP the leader: the follower ends its session after the fence bound, leads and
    applies its folder's change. SIGCONT: the old leader says it lost leadership and applies
    nothing, though its own folder changed while it slept."""
    first = sales_folder(database_url, cli.cwd, project_yaml() + schedule_yaml("nightly"))
    second = cli.cwd / "replica.d"  # a folder of its own, as a replica with a stale mount has
    shutil.copytree(first, second)
    env = {**cli.env, "RECONCILER_LEADER_FENCE_SECONDS": str(FENCE)}
    daemons = [
        Daemon(cli.cwd, {**env, "RECONCILER_SCHEDULES_DIR": str(folder)}, name=folder.name)
        for folder in (first, second)
    ]
    folders = dict(zip(daemons, (first, second), strict=True))
    try:
        for daemon in daemons:
            daemon.wait_ready()
        old_name = wait_until(lambda: _leader(database_url), what="a leader")
        old = next(d for d in daemons if old_name.endswith(f":{d.process.pid}"))
        new = next(d for d in daemons if d is not old)
        applied_before = len(_events(old, "applied"))

        old.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _write(folders[new], "1 1 * * *")  # what the folder says now
        _write(folders[old], "5 5 * * *")  # what only the frozen leader will see
        new_name = wait_until(
            lambda: (x := _leader(database_url)) != old_name and x,
            timeout=FENCE + 15, what=f"a new leader\n{new.log()}",
        )  # fmt: skip
        assert new_name.endswith(f":{new.process.pid}")
        wait_until(lambda: _cron(database_url) == "1 1 * * *", timeout=15, what="the change")
        assert time.monotonic() - stopped < FENCE + 10
        [fenced] = _events(new, "fenced the leader")
        assert fenced["leader"] == old_name

        old.process.send_signal(signal.SIGCONT)
        wait_until(lambda: _events(old, "lost leadership"), timeout=15, what=old.log())
        old.wait_ready(timeout=30)
        time.sleep(4)  # past the folder's settle: a leader would have applied its change by now
        assert _cron(database_url) == "1 1 * * *"
        assert _leader(database_url) == new_name
        assert len(_events(old, "applied")) == applied_before
        assert old.metric("reconcile_leader") == 0
        assert new.metric("reconcile_leader") == 1
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log()
    finally:
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGCONT)
            daemon.__exit__()


def _write(folder: Path, cron: str) -> None:
    (folder / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly", cron=cron))
