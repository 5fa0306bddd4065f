"""Real-world SFTP cases end to end against misbehaving servers: apply the case's folder, create
its tables, put its data on the server, ``reconcile run``. Each case folder under ``tests/cases``
holds the user's ``schedules.d`` (its ``sftp`` is pointed at the test's server), the server's
``data`` and the tables; its README states the right result, which the tests check.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sftp_servers import SftpServer, fifo_in_place

from tests.conftest import Cli

CASES = Path(__file__).parent / "cases"
_REACHING = ("host", "port", "username", "private_key_file", "known_hosts_file", "remote_dir")


def _setup(cli: Cli, case: str, server: SftpServer) -> Path:
    """The case's schedules reaching ``server``, its tables made and applied; its data in a new
    folder on the server, which is returned."""
    remote = server.folder()
    shutil.copytree(CASES / case / "data", remote, dirs_exist_ok=True)
    fields = server.sftp_fields(remote)
    shutil.rmtree(cli.cwd / "schedules.d")
    shutil.copytree(CASES / case / "schedules.d", cli.cwd / "schedules.d")
    for document in (cli.cwd / "schedules.d").iterdir():
        text = re.sub(
            rf"(?m)^(\s+)({'|'.join(_REACHING)}): .*$",
            lambda m: f"{m[1]}{m[2]}: {json.dumps(fields[m[2]])}",
            document.read_text(),
        )
        document.write_text(text)
    made = cli("sql", "-f", str(CASES / case / "tables.sql"))
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    return remote


def _run(cli: Cli, schedule: str, **env: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's JSON result and the run's log events."""
    done = cli("run", schedule, "--output", "json", env=env, timeout=120)
    assert done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    document: dict[str, Any] = json.loads(done.stdout)
    return document, events


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_an_idle_drop_while_a_file_commits_reconnects_for_the_next(
    cli: Cli, database_url: str, idle_sftp_server: SftpServer
) -> None:
    """Case 37: the server drops the connection while the first file commits (5 s trigger, 3 s
    idle limit); the second file is read over a new connection: 4 rows, the job succeeds."""
    _setup(cli, "sftp-idle-disconnect", idle_sftp_server)
    job, events = _run(cli, "nightly-batches", RECONCILER_IMPORT_WORKERS="1")
    assert (job["status"], job["rows_imported"]) == ("succeeded", 4), job
    assert [f["status"] for f in job["files"]] == ["imported", "imported"]
    rows = _query(database_url, "SELECT id, note FROM nightly_batches ORDER BY id")
    assert rows == [(1, "first file"), (2, "first file"), (3, "second file"), (4, "second file")]
    assert sum(e.get("event") == "sftp connection lost: reconnected" for e in events) == 1


@pytest.mark.parametrize("kind", ["plain_rename", "openssh"])
def test_an_archive_that_holds_the_name_is_never_overwritten(
    cli: Cli, database_url: str, request: pytest.FixtureRequest, kind: str
) -> None:
    """Case 36: yesterday's done/export.csv stays as it was; today's file is archived under a
    unique name; its 2 rows are imported once, and a second run finds nothing to do."""
    server: SftpServer = request.getfixturevalue(f"{kind}_server")
    remote = _setup(cli, "sftp-archive-target-exists", server)
    job, events = _run(cli, "exports")
    assert (job["status"], job["rows_imported"]) == ("succeeded", 2), job
    assert "after_import failed" not in (job["files"][0].get("note") or "")
    again, _ = _run(cli, "exports")
    assert (again["status"], again["rows_imported"], again["files"]) == ("succeeded", 0, []), again
    assert _query(database_url, "SELECT day::text, amount FROM exports ORDER BY amount") == [
        ("2026-12-02", 20),
        ("2026-12-02", 21),
    ]
    assert sorted(p.name for p in remote.iterdir()) == ["done"]
    assert (remote / "done" / "export.csv").read_text() == "day,amount\n2026-12-01,10\n"
    (unique,) = {p.name for p in (remote / "done").iterdir()} - {"export.csv"}
    assert re.fullmatch(r"export\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\.csv", unique)
    assert (remote / "done" / unique).read_text() == (
        CASES / "sftp-archive-target-exists" / "data" / "export.csv"
    ).read_text()
    (logged,) = [e for e in events if e.get("archived")]
    assert logged["archived"] == str(remote / "done" / unique)
    # shown on the run that did it, not only in the log
    assert (
        job["files"][0]["note"]
        == f"archived as {remote / 'done' / unique}: export.csv was taken in archive_dir"
    )


@pytest.mark.timeout(60)
def test_a_fifo_put_in_place_of_a_listed_file_fails_it_at_once(
    cli: Cli, database_url: str, hooked_sftp_server: SftpServer
) -> None:
    """A FIFO swapped in for a listed file fails that file at once; the other one imports."""
    remote = _setup(cli, "sftp-idle-disconnect", hooked_sftp_server)
    hooked_sftp_server.arm("readdir", remote / "batch_1.csv", fifo_in_place)
    cli("sql", "-c", "DROP TRIGGER slow_commit ON nightly_batches")
    job, _ = _run(cli, "nightly-batches")
    assert job["status"] == "failed", job
    first, second = job["files"]
    assert first["status"] == "failed"
    assert "batch_1.csv is no longer a regular file (a FIFO was put there" in first["error"]
    assert second["status"] == "imported"
    assert _query(database_url, "SELECT id FROM nightly_batches ORDER BY id") == [(3,), (4,)]
