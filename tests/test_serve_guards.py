"""``reconcile serve`` and the safety guards: the overrides are settings or serve's flags, the
refusal it shows names them, and a manual ``reconcile apply`` clears it at once. A real daemon,
real PostgreSQL."""

from __future__ import annotations

import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, schedule_yaml, wait_until


def _count(url: str, table: str) -> int:
    return int(one(url, f"SELECT count(*) FROM {table}"))  # a fixed table name


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({"RECONCILER_MAX_DELETES": "1", "RECONCILER_ALLOW_EMPTY": "true"}, ()),
        ({}, ("--max-deletes", "1", "--allow-empty")),
    ],
    ids=["settings", "flags"],
)
def test_serve_takes_the_guard_overrides(
    cli: Cli, database_url: str, env: dict[str, str], args: tuple[str, ...]
) -> None:
    """A limit of 1 refuses a plan of 2 deletes, with a message naming the daemon's override;
    `reconcile apply --max-deletes 2` applies it and clears the shown error at once; an emptied
    folder is then applied, as allowed."""
    folder = cli.cwd / "schedules.d"
    (folder / "sales.yaml").write_text(project_yaml())
    (folder / "s0.yaml").write_text(schedule_yaml("s0"))
    (folder / "s1.yaml").write_text(schedule_yaml("s1"))
    environment = {**cli.env, "RECONCILER_DELETE_SETTLE_SECONDS": "1", **env}
    with Daemon(cli.cwd, environment, args=args) as daemon:
        daemon.wait_ready()
        assert _count(database_url, "cpi_schedules") == 2

        (folder / "s0.yaml").unlink()
        (folder / "s1.yaml").unlink()
        wait_until(lambda: daemon.metric("reconcile_config_load_ok") == 0, timeout=20)
        shown = cli("status").stdout
        assert "RECONCILER_MAX_DELETES=2" in shown
        assert "`reconcile serve --max-deletes 2`" in shown
        assert "apply --max-deletes" not in shown
        assert _count(database_url, "cpi_schedules") == 2

        applied = cli("apply", "--max-deletes", "2")
        assert applied.returncode == 0, applied.stderr
        assert one(database_url, "SELECT config_error FROM cpi_daemon_state") is None
        assert "config error" not in cli("status").stdout

        (folder / "sales.yaml").unlink()
        wait_until(lambda: _count(database_url, "cpi_projects") == 0, timeout=20,
                   what="the emptied folder applied")  # fmt: skip
        assert daemon.metric("reconcile_config_load_ok") == 1
        assert daemon.stop() == 0


def test_serve_refuses_an_emptied_folder_naming_its_setting(cli: Cli, database_url: str) -> None:
    """Without the override, an emptied folder is refused and the message names
    RECONCILER_ALLOW_EMPTY, not apply's flag."""
    folder = cli.cwd / "schedules.d"
    (folder / "sales.yaml").write_text(project_yaml())
    environment = {**cli.env, "RECONCILER_DELETE_SETTLE_SECONDS": "1"}
    with Daemon(cli.cwd, environment) as daemon:
        daemon.wait_ready()
        (folder / "sales.yaml").unlink()
        wait_until(lambda: daemon.metric("reconcile_config_load_ok") == 0, timeout=20)
        error = one(database_url, "SELECT config_error FROM cpi_daemon_state")
        assert "RECONCILER_ALLOW_EMPTY=true" in error
        assert "`reconcile serve --allow-empty`" in error
        assert "apply --allow-empty" not in error
        assert _count(database_url, "cpi_projects") == 1
        assert daemon.stop() == 0
