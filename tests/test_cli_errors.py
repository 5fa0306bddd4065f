"""How a failing command ends: one ``error:`` line, its exit code, and with ``--output json`` an
``Error`` document on stdout; text a terminal cannot encode degrades instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cli
from psycopg.conninfo import conninfo_to_dict, make_conninfo

INVALID = """\
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: nightly
spec:
  project: nowhere
  cron: "0 0 * * *"
  horaire: été
"""
PROJECT = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: legacy
spec:
  target: {table: public.sales}
"""


def _error_document(stdout: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stdout)  # exactly one document, nothing else
    assert (document["apiVersion"], document["kind"]) == ("reconciler/v1", "Error")
    return document


def test_a_usage_error_is_an_error_document(cli: Cli) -> None:
    """A bad setting: exit 1, the error line on stderr, the same message as JSON on stdout."""
    done = cli("-o", "json", "status", env={"RECONCILER_IMPORT_WORKERS": "abc"})
    assert done.returncode == 1
    document = _error_document(done.stdout)
    assert document == {
        "apiVersion": "reconciler/v1",
        "kind": "Error",
        "message": "RECONCILER_IMPORT_WORKERS='abc' is not a whole number",
        "exit_code": 1,
        "retryable": False,
        "findings": [],
    }
    assert done.stderr == f"error: {document['message']}\n"


def test_not_found_after_the_subcommand_flag(cli: Cli) -> None:
    """``run NAME --output json`` of an unknown schedule, against the real database."""
    done = cli("run", "nope", "--output", "json")
    assert done.returncode == 1
    document = _error_document(done.stdout)
    assert document["message"].startswith("schedule 'nope' not found in the database")
    assert document["exit_code"] == 1


def test_an_unreachable_database_is_retryable(cli: Cli, pg_server: str) -> None:
    """A connection failure says a retry may help; its URL is masked in the document too."""
    params: dict[str, Any] = conninfo_to_dict(pg_server)
    url = make_conninfo(**{**params, "dbname": "no_such_db", "password": "hunter22"})
    done = cli("status", "-o", "json", env={"RECONCILER_DATABASE_URL": url})
    assert done.returncode == 1
    document = _error_document(done.stdout)
    assert document["retryable"] is True
    assert "hunter22" not in done.stdout
    assert "password=***" in document["message"]


def test_invalid_documents_list_their_findings(cli: Cli) -> None:
    """``next`` on an invalid folder: each finding in the ValidationResult shape."""
    (cli.cwd / "schedules.d" / "nightly.yaml").write_text(INVALID, encoding="utf-8")
    done = cli("next", "nightly", "-o", "json")
    assert done.returncode == 1
    findings = _error_document(done.stdout)["findings"]
    assert {"path", "line", "column", "message"} == set(findings[0])
    assert [(f["path"], f["line"]) for f in findings] == [
        ("schedules.d/nightly.yaml", 6),
        ("schedules.d/nightly.yaml", 8),
    ]


def test_a_guard_keeps_its_exit_code(cli: Cli) -> None:
    """A refused apply (missing folder) exits 3 and says so in the document."""
    (cli.cwd / "schedules.d").rmdir()
    done = cli("apply", "-o", "json")
    assert done.returncode == 3
    assert _error_document(done.stdout)["exit_code"] == 3


def test_a_bad_flag_is_an_error_document(cli: Cli) -> None:
    """argparse's complaint is ours: exit 1 (2 means changes present), JSON when asked."""
    done = cli("--output", "json", "plan", "--max-deletes", "many")
    assert done.returncode == 1
    assert "invalid int value: 'many'" in _error_document(done.stdout)["message"]
    assert done.stderr.startswith("error: argument --max-deletes")


def test_a_plan_printed_then_refused_stays_one_document(cli: Cli, database_url: str) -> None:
    """When the command printed its own document before failing, no second one follows."""
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO cpi_projects (name) VALUES ('legacy')")
    (cli.cwd / "schedules.d" / "legacy.yaml").write_text(PROJECT, encoding="utf-8")
    done = cli("plan", "-o", "json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["kind"] == "Plan"
    assert "--adopt" in done.stderr


def test_text_errors_print_nothing_on_stdout(cli: Cli) -> None:
    """Without --output json, stdout stays empty on failure."""
    done = cli("run", "nope")
    assert (done.returncode, done.stdout) == (1, "")


@pytest.mark.parametrize(
    "env",
    [
        {"PYTHONIOENCODING": "ascii"},
        {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
    ],
    ids=["PYTHONIOENCODING=ascii", "LANG=C"],
)
def test_an_ascii_terminal_gets_escapes_not_a_crash(
    cli: Cli, tmp_path: Path, env: dict[str, str]
) -> None:
    """Findings with non-ASCII text print with backslash escapes on an ASCII-only stdout."""
    text = INVALID.replace("name: nightly", "name: ventes-été")
    (tmp_path / "schedules.d" / "nightly.yaml").write_text(text, encoding="utf-8")
    done = cli("validate", env={"PYTHONIOENCODING": "", **env})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "metadata.name: 'ventes-\\xe9t\\xe9' is not a valid name" in done.stdout
    assert "unknown key 'horaire'" in done.stdout
