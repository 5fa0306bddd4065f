"""Delivery over SFTP end to end: identity is content, not how the server was reached, and the
files of one run commit in order whatever the workers. A real SFTP server, real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sftp_servers import SftpServer, known_hosts_line

from tests.conftest import Cli

CASES = Path(__file__).parent / "cases"


def _setup(cli: Cli, case: str, server: SftpServer, **sftp: Any) -> tuple[Path, Path]:
    """The case's folder with its ``sftp`` block reaching ``server`` (``sftp`` overrides fields),
    its tables made, applied; its data in a new folder on the server. Returns that folder and
    the project file."""
    remote = server.folder()
    shutil.copytree(CASES / case / "data", remote, dirs_exist_ok=True)
    shutil.rmtree(cli.cwd / "schedules.d")
    shutil.copytree(CASES / case / "schedules.d", cli.cwd / "schedules.d")
    (document,) = (cli.cwd / "schedules.d").iterdir()
    _point(document, {**server.sftp_fields(remote), **sftp})
    made = cli("sql", "-f", str(CASES / case / "tables.sql"))
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    return remote, document


def _point(document: Path, fields: dict[str, Any]) -> None:
    """Set the sftp fields of the project in ``document``."""
    lines = document.read_text().splitlines()
    out = []
    for line in lines:
        key = line.strip().split(":", 1)[0]
        indented = line.startswith("    ") and key in fields
        out.append(f"    {key}: {json.dumps(fields[key])}" if indented else line)
    document.write_text("\n".join(out) + "\n")


def _run(cli: Cli, schedule: str, **env: str) -> dict[str, Any]:
    done = cli("run", schedule, "--output", "json", env=env or None, timeout=120)
    assert done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_host_alias_or_another_login_does_not_make_files_new(
    cli: Cli, database_url: str, asyncssh_server: SftpServer, tmp_path: Path
) -> None:
    """Case 39: the same server reached as localhost, then with a second login: the files are
    imported once (identity is the project and the bytes, not user@host:port)."""
    server = asyncssh_server
    known = tmp_path / "known_hosts"
    known.write_text(
        known_hosts_line("127.0.0.1", server.port, server.host_public_key)
        + known_hosts_line("localhost", server.port, server.host_public_key)
    )
    _, document = _setup(cli, "sftp-host-or-user-change", server, known_hosts_file=str(known))
    first = _run(cli, "payments")
    assert (first["status"], first["rows_imported"]) == ("succeeded", 3), first
    for change in ({"host": "localhost"}, {"username": "importer2"}):
        _point(document, change)
        assert cli("apply").returncode == 0
        job = _run(cli, "payments")
        assert (job["status"], job["rows_imported"]) == ("succeeded", 0), job
        assert job["files"] == [], job  # skipped unread: counted, not listed
        assert job["skipped_files"] > 0, job
    rows = _query(database_url, "SELECT count(*), count(DISTINCT payment_id) FROM payments")
    assert rows == [(3, 3)]


def test_two_waiting_upsert_files_commit_oldest_first(
    cli: Cli, database_url: str, asyncssh_server: SftpServer
) -> None:
    """Case 33: a big file and a small later one wait on the server; with two workers the later
    one's value wins, as with one (the files commit in name order)."""
    remote, _ = _setup(cli, "parallel-upsert-order", asyncssh_server)
    body = "".join(f"S{i},{i % 97}.00\n" for i in range(2, 300_001))
    (remote / "prices_2026-12-01.csv").write_text(f"sku,price\n{body}S1,10.00\n")
    job = _run(cli, "sku-prices", RECONCILER_IMPORT_WORKERS="2")
    assert job["status"] == "succeeded", job
    assert [f["status"] for f in job["files"]] == ["imported", "imported"]
    assert _query(database_url, "SELECT price::text FROM sku_prices WHERE sku = 'S1'") == [
        ("12.00",)
    ]


@pytest.mark.parametrize(
    ("rows", "when"), [(2, "readdir"), (100_000, "read")], ids=["after-listing", "mid-read"]
)
def test_a_file_rewritten_while_it_is_fetched_fails_then_loads_once(
    cli: Cli, database_url: str, hooked_sftp_server: SftpServer, rows: int, when: str
) -> None:
    """Case 34: the server rewrites the file in place (same size, every 1 a 7, mtime +5 s) right
    after the listing or after its first READ reply: the run sees the handle's mtime differ,
    rolls the file back; the next run loads the new version once. Never a mix, never twice."""
    remote, _ = _setup(cli, "sftp-changed-while-read", hooked_sftp_server)
    path = remote / "batch_1.csv"
    if rows > 2:
        path.write_text("id,note\n" + "".join(f"{i},row {i:06d}\n" for i in range(1, rows + 1)))
        os.utime(path, (time.time() - 60, time.time() - 60))  # settled: the rewrite's +5 s too
    hooked_sftp_server.arm(when, path)
    first = _run(cli, "batches")
    assert first["status"] == "failed", first
    assert "changed while it was read" in first["files"][0]["error"]
    assert _query(database_url, "SELECT count(*) FROM batches") == [(0,)]
    second = _run(cli, "batches")
    assert (second["status"], second["rows_imported"]) == ("succeeded", rows), second
    old = "SELECT count(*) FROM batches WHERE note LIKE '%1%' OR id::text LIKE '%1%'"
    assert _query(database_url, old) == [(0,)]  # the new version only: every 1 is a 7
    assert _query(database_url, "SELECT count(*) FROM batches") == [(rows,)]
