"""``reconcile export --output json``: one ``Export`` document on stdout, printed or written."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import yaml

from tests.conftest import Cli


def _legacy_row(database_url: str, project: str = "legacy") -> None:
    """A project and its schedule as the original API wrote them (no owner, a literal password)."""
    with psycopg.connect(database_url) as conn:
        (pid,) = conn.execute(
            "INSERT INTO cpi_projects (name) VALUES (%s) RETURNING id", (project,)
        ).fetchone() or (None,)
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, interval_seconds, "
            "sftp_override) VALUES ('old-import', %s, 'interval', 7200, "
            """'{"remote_dir": "/in", "password": "plain-text-pw"}')""",
            (pid,),
        )


def _export(cli: Cli, *args: str) -> dict[str, Any]:
    done = cli("export", "--output", "json", *args)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)  # the whole of stdout: one document
    assert (document["apiVersion"], document["kind"]) == ("reconciler/v1", "Export")
    return document


def test_printed_export_is_json_with_the_yaml_documents(cli: Cli, database_url: str) -> None:
    """Printed, the documents are in the JSON (never YAML), the password replaced and reported."""
    cli("apply")  # creates the tables
    _legacy_row(database_url)
    document = _export(cli)
    (project,) = document["projects"]
    assert (project["project"], project["file"]) == ("legacy", None)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in project["documents"]]
    assert kinds == [("Project", "legacy"), ("Schedule", "old-import")]
    override = project["documents"][1]["spec"]["sftp_override"]
    assert override["password"] == "${OLD_IMPORT_SFTP_PASSWORD}"
    assert "plain-text-pw" not in json.dumps(document)
    assert document["warnings"] == [
        "schedule old-import: its SFTP password is now ${OLD_IMPORT_SFTP_PASSWORD}; set it"
    ]


def test_written_export_names_its_files(cli: Cli, database_url: str) -> None:
    """With --out the YAML goes to the files and the JSON names them, with the same documents."""
    cli("apply")
    _legacy_row(database_url)
    out = cli.cwd / "exported"
    document = _export(cli, "--out", str(out))
    (project,) = document["projects"]
    assert project["file"] == str(out / "legacy.yaml")
    assert list(yaml.safe_load_all((out / "legacy.yaml").read_text())) == project["documents"]


def test_nothing_to_export_is_still_a_document(cli: Cli) -> None:
    """With every row owned, the document lists no project (stdout is never empty)."""
    cli("apply")
    assert _export(cli)["projects"] == []


def test_a_project_name_from_elsewhere_never_writes_outside_the_folder(
    cli: Cli, database_url: str
) -> None:
    """A name the old API stored with '/' and '..' gives a file inside --out, never beside it."""
    cli("apply")
    _legacy_row(database_url, project="../../escaped")
    out = cli.cwd / "exported"
    document = _export(cli, "--out", str(out))
    (project,) = document["projects"]
    assert project["file"] == str(out / "_.._escaped.yaml")
    assert [p.name for p in out.iterdir()] == ["_.._escaped.yaml"]
    assert not (cli.cwd.parent / "escaped.yaml").exists()
