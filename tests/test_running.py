"""run_schedule in-process against real PostgreSQL and real files: modes, exactly once, targets."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from conftest import database_url_for
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales
from sftp_servers import PASSWORD, SftpServer

from reconciler.imports.engine.importing import Progress
from reconciler.imports.runs.running import run_schedule
from reconciler.settings import Settings, load_settings

NAME = "daily-sales-import"


@pytest.fixture
def folder(tmp_path: Path, database_url: str) -> Path:
    """A repository folder: schedules.d/ beside data/, and public.sales in the database."""
    (tmp_path / "schedules.d").mkdir()
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    return tmp_path


def _settings(folder: Path, url: str, **env: str) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"),
        database_url=url,
        state_dir=str(folder / "state"),
        environ={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_SETTLE_SECONDS": "0", **env},
    )


def _setup(url: str, mode: str = "append", **target: Any) -> None:
    target = {"table": "public.sales", "mode": mode, **target}
    add_project(url, target=target)
    add_schedule(url, local_files=["../data/sales_*.csv"])


def _sales(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT sale_id, amount::text FROM sales ORDER BY 1").fetchall()
    return [(r[0], r[1]) for r in rows]


def test_files_load_once_and_reruns_skip_them(folder: Path, database_url: str) -> None:
    """A run loads every file; the next run finds them already imported and loads nothing."""
    _setup(database_url)
    write_sales(folder / "data/sales_1.csv", range(0, 100))
    write_sales(folder / "data/sales_2.csv", range(100, 250))
    settings = _settings(folder, database_url)
    first = run_schedule(NAME, settings=settings)
    assert (first.status, first.rows_imported, first.error) == ("succeeded", 250, None)
    assert [f.status for f in first.files] == ["imported", "imported"]
    second = run_schedule(NAME, settings=settings)
    assert second.status == "succeeded"
    assert [(f.status, f.note) for f in second.files] == [("skipped", "already imported")] * 2
    assert count(database_url) == 250
    write_sales(folder / "data/sales_2.csv", range(250, 260))  # changed: new content
    third = run_schedule(NAME, settings=settings)
    assert [f.status for f in third.files] == ["skipped", "imported"]
    assert count(database_url) == 260


def test_a_bad_file_fails_alone_with_its_line(folder: Path, database_url: str) -> None:
    """The bad file rolls back with its line and message; the others still load; job failed."""
    _setup(database_url)
    write_sales(folder / "data/sales_1.csv", range(0, 10))
    write_sales(folder / "data/sales_2.csv", range(10, 20), bad_line=3)
    write_sales(folder / "data/sales_3.csv", range(20, 30))
    result = run_schedule(NAME, settings=_settings(folder, database_url))
    assert result.status == "failed"
    assert [f.status for f in result.files] == ["imported", "failed", "imported"]
    bad = result.files[1]
    assert (bad.line, bad.column) == (3, "amount")
    assert bad.error is not None
    assert "invalid input syntax for type numeric" in bad.error
    assert result.error is not None
    assert result.error.startswith("1 of 3 files failed; first: ")
    assert "sales_2.csv line 3" in result.error
    assert count(database_url) == 20
    (row,) = jobs(database_url)
    assert row["status"] == "failed"
    assert row["files"][1]["line"] == 3


@pytest.mark.parametrize("workers", ["1", "3"])
def test_parallel_workers_load_every_file(folder: Path, database_url: str, workers: str) -> None:
    """With one or several sessions, every file lands once and progress is reported."""
    _setup(database_url)
    for i in range(5):
        write_sales(folder / f"data/sales_{i}.csv", range(i * 1000, (i + 1) * 1000))
    seen: list[Progress] = []
    settings = _settings(folder, database_url, RECONCILER_IMPORT_WORKERS=workers)
    result = run_schedule(NAME, settings=settings, progress=seen.append)
    assert (result.status, result.rows_imported) == ("succeeded", 5000)
    assert count(database_url) == 5000
    assert seen[-1].files_done == seen[-1].files_total == 5
    assert seen[-1].bytes_read == seen[-1].bytes_total == result.bytes_read


def test_replace_swaps_the_content_or_leaves_it(folder: Path, database_url: str) -> None:
    """Replace: new files replace the table in one transaction; any bad file undoes it all."""
    _setup(database_url, mode="replace")
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO sales VALUES (999, '2020-01-01', 1)")
    write_sales(folder / "data/sales_1.csv", range(0, 3))
    write_sales(folder / "data/sales_2.csv", range(3, 5))
    settings = _settings(folder, database_url)
    assert run_schedule(NAME, settings=settings).status == "succeeded"
    assert [r[0] for r in _sales(database_url)] == [0, 1, 2, 3, 4]
    write_sales(folder / "data/sales_3.csv", range(10, 12))
    write_sales(folder / "data/sales_4.csv", range(12, 14), bad_line=2)
    result = run_schedule(NAME, settings=settings)
    assert result.status == "failed"
    assert [f.status for f in result.files] == ["skipped", "skipped", "rolled_back", "failed"]
    assert [r[0] for r in _sales(database_url)] == [0, 1, 2, 3, 4]
    (folder / "data/sales_4.csv").unlink()
    assert run_schedule(NAME, settings=settings).status == "succeeded"
    assert [r[0] for r in _sales(database_url)] == [10, 11]


def test_upsert_merges_each_file(folder: Path, database_url: str) -> None:
    """Upsert on the key: later files update earlier rows."""
    _setup(database_url, mode="upsert", key=["sale_id"])
    write_sales(folder / "data/sales_1.csv", range(0, 5))
    (folder / "data/sales_2.csv").write_text("sale_id,sold_at,amount\n4,2026-11-02,44\n5,,5\n")
    settings = _settings(folder, database_url, RECONCILER_IMPORT_WORKERS="1")
    assert run_schedule(NAME, settings=settings).status == "succeeded"
    assert _sales(database_url)[-2:] == [(4, "44"), (5, "5")]


@pytest.fixture
def other_database(pg_server: str) -> Iterator[str]:
    """A second database on the same server: another import target."""
    name = f"x_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = database_url_for(pg_server, name)
    with psycopg.connect(url) as conn:
        conn.execute(SALES)
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_another_target_database_keeps_its_own_ledger(
    folder: Path, database_url: str, other_database: str
) -> None:
    """Data and its ledger row commit together in the target; the job stays in management."""
    _setup(database_url, database_url="${SALES_DATABASE_URL}")
    write_sales(folder / "data/sales_1.csv", range(0, 7))
    settings = _settings(folder, database_url, SALES_DATABASE_URL=other_database)
    assert run_schedule(NAME, settings=settings).status == "succeeded"
    assert run_schedule(NAME, settings=settings).files[0].status == "skipped"
    assert count(other_database) == 7
    assert count(other_database, "public.reconcile_imported_files") == 1
    assert count(database_url) == 0
    assert count(database_url, "cpi_imported_files") == 1
    assert [r["status"] for r in jobs(database_url)] == ["succeeded", "succeeded"]


class _Hook(BaseHTTPRequestHandler):
    status = 200
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [200, 404])
def test_the_callback_is_recorded_and_never_fails_the_run(
    folder: Path, database_url: str, status: int
) -> None:
    """The job's outcome is posted; delivery is stored on the job, the import status unchanged."""
    handler = type("Hook", (_Hook,), {"status": status, "bodies": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        add_project(database_url)
        url = f"http://127.0.0.1:{server.server_address[1]}/notify"
        add_schedule(database_url, local_files=["../data/sales_*.csv"], callback_url=url)
        write_sales(folder / "data/sales_1.csv", range(3))
        settings = _settings(folder, database_url, RECONCILER_CALLBACK_ALLOW="loopback")
        result = run_schedule(NAME, settings=settings)
    finally:
        server.shutdown()
        server.server_close()
    assert result.status == "succeeded"
    assert result.callback == {
        "delivered": status == 200, "attempts": 1, "status_code": status,
        "error": None if status == 200 else f"HTTP {status}",
    }  # fmt: skip
    (body,) = handler.bodies
    sent = json.loads(body)
    assert sent["job_id"] == result.job_id
    assert (sent["schedule"], sent["project"], sent["status"]) == (
        NAME,
        "sales_project",
        "succeeded",
    )
    assert (sent["trigger"], sent["rows_imported"]) == ("manual", 3)
    assert set(sent) == {
        "job_id", "schedule", "project", "status", "trigger", "rows_imported", "bytes_read",
        "files", "skipped_files", "error", "scheduled_for", "started_at", "finished_at",
    }  # fmt: skip
    assert jobs(database_url)[0]["callback"] == result.callback


def _sftp_project(url: str, server: SftpServer, remote: Path, **fields: Any) -> None:
    sftp = server.sftp_fields(remote, pattern="sales_*.csv", **fields)
    add_project(url, target={"table": "public.sales"}, sftp=sftp)


def test_an_sftp_run_loads_then_moves_each_file(
    folder: Path, database_url: str, sftp_server: SftpServer
) -> None:
    """Files stream from a real SFTP server; after the commit they move to the archive."""
    remote = sftp_server.folder()
    archive = remote / "done"
    archive.mkdir()
    write_sales(remote / "sales_1.csv", range(0, 40))
    write_sales(remote / "sales_2.csv", range(40, 100))
    _sftp_project(database_url, sftp_server, remote, after_import="move", archive_dir=str(archive))
    add_schedule(database_url, sftp_override={"pattern": "sales_*"})
    result = run_schedule(NAME, settings=_settings(folder, database_url))
    assert (result.status, result.rows_imported) == ("succeeded", 100), result.error
    assert sorted(p.name for p in archive.iterdir()) == ["sales_1.csv", "sales_2.csv"]
    assert not list(remote.glob("sales_*.csv"))
    assert count(database_url) == 100
    with psycopg.connect(database_url) as conn:
        (source,) = {r[0] for r in conn.execute("SELECT source FROM cpi_imported_files")}
    assert source == f"sftp://{sftp_server.username}@{sftp_server.host}:{sftp_server.port}"


@pytest.mark.parametrize(
    ("password", "error"),
    [("wrong", "authentication failed"), (None, "refused")],
)
def test_sftp_failures_fail_the_job_in_one_line(
    folder: Path, database_url: str, asyncssh_server: SftpServer, password: str | None, error: str
) -> None:
    """A wrong password or an unreachable server: a failed job with a one-line error."""
    server, remote = asyncssh_server, asyncssh_server.folder()
    if password is None:  # the right password, but nothing listens on the port any more
        with socket.create_server(("127.0.0.1", 0)) as closed:
            server = replace(server, port=closed.getsockname()[1])
    _sftp_project(database_url, server, remote, password="${SFTP_PASSWORD}", private_key_file=None)
    add_schedule(database_url)
    secret = password or PASSWORD
    result = run_schedule(NAME, settings=_settings(folder, database_url, SFTP_PASSWORD=secret))
    assert result.status == "failed"
    assert result.error is not None
    assert error in result.error.lower()
    assert "\n" not in result.error
    assert secret not in result.error
    assert jobs(database_url)[0]["error"] == result.error
