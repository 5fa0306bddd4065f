"""SFTP imports end to end as a user runs them (``reconcile apply``, ``reconcile sql`` to create
the target table, ``reconcile run``) against the real SFTP servers, for folders and known_hosts
files met in production: a file name that is not UTF-8, a known_hosts file with a @cert-authority
line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cli
from sftp_servers import SftpServer, known_hosts_line, write_key_pair

from reconciler.model.specs import Sftp

_CASE = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: {project}
spec:
  target:
    table: public.{table}
    mode: append
  csv:
    header: true
  sftp: {sftp}
---
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: {schedule}
spec:
  project: {project}
  cron: "0 6 * * *"
"""


def _run_case(
    cli: Cli, server: SftpServer, remote: Path, *, table: str, key: str, pattern: str, **sftp: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply a project and schedule reading ``remote``, create ``table`` (``key``, amount), run it
    once: the job's JSON result (with the exit code) and the log events."""
    fields = server.sftp_fields(remote, pattern=pattern, **sftp)
    Sftp.model_validate(fields)  # the document below is what a user would write
    (cli.cwd / "schedules.d" / f"{table}.yaml").write_text(
        _CASE.format(project=table, table=table, schedule=f"{table}-run", sftp=json.dumps(fields))
    )
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    created = cli("sql", "-c", f"CREATE TABLE public.{table} ({key} int, amount numeric)")
    assert created.returncode == 0, created.stderr
    done = cli("run", f"{table}-run", "--output", "json")
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(done.stdout) if done.stdout else {}
    result["exit"] = done.returncode
    return result, events


def _rows(url: str, table: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        found = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    return [(r[0], str(r[1])) for r in found]


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(
    cli: Cli, database_url: str, sftp_server: SftpServer
) -> None:
    """A folder holding a name that is not UTF-8 imports its other files; the odd one warns."""
    remote = sftp_server.folder()
    (remote / "payments_2026-11-30.csv").write_text("payment_id,amount\n1,10.50\n2,99.00\n")
    with open(bytes(remote) + b"/x\xff.csv", "wb") as odd:
        odd.write(b"payment_id,amount\n3,1.00\n")
    result, events = _run_case(
        cli,
        sftp_server,
        remote,
        table="case04_payments",
        key="payment_id",
        pattern="payments_*.csv",
    )
    assert (result["exit"], result["status"], result["rows_imported"]) == (0, "succeeded", 2), (
        result
    )
    assert [f["status"] for f in result["files"]] == ["imported"]
    assert _rows(database_url, "case04_payments") == [(1, "10.50"), (2, "99.00")]
    (warning,) = [e for e in events if e.get("name") == "x\\xff.csv"]
    assert warning["level"] == "warning"
    assert warning["folder"] == str(remote)


def test_a_file_matching_the_pattern_beside_an_odd_name_imports(
    cli: Cli, database_url: str, asyncssh_server: SftpServer
) -> None:
    """An odd name that the pattern would match is skipped too, never imported half-decoded."""
    remote = asyncssh_server.folder()
    (remote / "payments_1.csv").write_text("payment_id,amount\n1,1.00\n")
    with open(bytes(remote) + b"/payments_\xe9.csv", "wb") as odd:
        odd.write(b"payment_id,amount\n2,2.00\n")
    result, events = _run_case(
        cli, asyncssh_server, remote, table="case04_odd", key="payment_id", pattern="payments_*.csv"
    )
    assert (result["exit"], result["status"], result["rows_imported"]) == (0, "succeeded", 1), (
        result
    )
    assert _rows(database_url, "case04_odd") == [(1, "1.00")]
    assert [e["name"] for e in events if "name" in e] == ["payments_\\xe9.csv"]


def _ca_line(tmp_path: Path) -> str:
    ca = write_key_pair(tmp_path / "host_ca")
    return f"@cert-authority *.example.com,127.0.0.1 {ca}\n"


def test_a_cert_authority_line_before_the_servers_own_line(
    cli: Cli, database_url: str, sftp_server: SftpServer, tmp_path: Path
) -> None:
    """The server is verified by its own line; the @cert-authority line before it is skipped."""
    remote = sftp_server.folder()
    (remote / "returns_2026-11-30.csv").write_text("return_id,amount\n1,5.00\n2,7.25\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        _ca_line(tmp_path)
        + known_hosts_line("127.0.0.1", sftp_server.port, sftp_server.host_public_key)
    )
    result, events = _run_case(
        cli, sftp_server, remote, table="case16_returns", key="return_id", pattern="returns_*.csv",
        known_hosts_file=str(known_hosts),
    )  # fmt: skip
    assert (result["exit"], result["status"], result["rows_imported"]) == (0, "succeeded", 2), (
        result
    )
    assert _rows(database_url, "case16_returns") == [(1, "5.00"), (2, "7.25")]
    (skipped,) = [e for e in events if e.get("event") == "known_hosts line skipped"]
    assert (skipped["file"], skipped["line"]) == (str(known_hosts), 1)
    assert "@cert-authority" in skipped["reason"]


@pytest.mark.usefixtures("database_url")
def test_a_cert_authority_line_alone_fails_the_job_in_one_line(
    cli: Cli, asyncssh_server: SftpServer, tmp_path: Path
) -> None:
    """Without the server's own line the job fails with one error line, and no traceback."""
    remote = asyncssh_server.folder()
    (remote / "returns_1.csv").write_text("return_id,amount\n1,5.00\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(_ca_line(tmp_path))
    result, _ = _run_case(
        cli, asyncssh_server, remote, table="case16_alone", key="return_id",
        pattern="returns_*.csv", known_hosts_file=str(known_hosts),
    )  # fmt: skip
    assert (result["exit"], result["status"]) == (1, "failed")
    error = result["error"]
    assert error.startswith(f"unknown host key for [127.0.0.1]:{asyncssh_server.port}: ")
    assert "\n" not in error
    assert "(skipped line 1: @cert-authority is not supported" in error
