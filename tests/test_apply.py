"""plan and apply end to end: real processes, real files, real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Cli

PROJECT = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: {name}
spec:
  target:
    table: public.sales
  sftp:
    host: sftp.example.com
    username: importer
    password: ${{SFTP_PASSWORD}}
"""
SCHEDULE = """\
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: {name}
spec:
  project: {project}
  cron: "{cron}"
  timezone: America/New_York
"""


def write(folder: Path, relative: str, *documents: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n".join(documents))
    return path


def seed(cli: Cli, schedules: int = 2, cron: str = "0 0 * * *") -> Path:
    folder = cli.cwd / "schedules.d"
    write(folder, "project.yaml", PROJECT.format(name="sales"))
    for i in range(schedules):
        write(folder, f"s{i}.yaml", SCHEDULE.format(name=f"s{i}", project="sales", cron=cron))
    return folder


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_apply_then_plan_shows_no_changes(cli: Cli, database_url: str) -> None:
    """A fresh apply creates every row; planning again prints No changes."""
    seed(cli)
    first = cli("apply")
    assert first.returncode == 0, first.stderr
    assert "Plan: 3 to create, 0 to update, 0 to delete." in first.stdout
    assert rows(database_url, "SELECT name, owner, source_file FROM cpi_schedules ORDER BY 1") == [
        ("s0", "reconcile", "s0.yaml"),
        ("s1", "reconcile", "s1.yaml"),
    ]
    again = cli("--dry-run")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "No changes."
    assert cli("apply").stdout.strip() == "No changes."


def test_the_bare_command_applies(cli: Cli, database_url: str) -> None:
    """``reconcile`` with no arguments at all is apply, as documented."""
    seed(cli, schedules=1)
    bare = cli()
    assert bare.returncode == 0, bare.stderr
    assert "Plan: 2 to create, 0 to update, 0 to delete." in bare.stdout
    assert rows(database_url, "SELECT name FROM cpi_schedules") == [("s0",)]
    assert cli().stdout.strip() == "No changes."


def test_dry_run_changes_nothing_and_detailed_exitcode(cli: Cli, database_url: str) -> None:
    """--dry-run writes nothing; --detailed-exitcode says 2 with changes, 0 without."""
    seed(cli)
    result = cli("--dry-run", "--detailed-exitcode")
    assert result.returncode == 2, result.stderr
    assert "+ Schedule s0  (s0.yaml:1)" in result.stdout
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(0,)]
    assert cli("apply").returncode == 0
    assert cli("plan", "--detailed-exitcode").returncode == 0


def test_plan_json_is_versioned(cli: Cli) -> None:
    """--output json gives a versioned plan document."""
    seed(cli, schedules=1)
    doc = json.loads(cli("plan", "--output", "json").stdout)
    assert doc["apiVersion"] == "reconciler/v1"
    assert doc["kind"] == "Plan"
    assert doc["summary"] == {"create": 2, "update": 0, "delete": 0}
    assert {c["name"] for c in doc["changes"]} == {"sales", "s0"}


def test_secrets_stay_references(cli: Cli, database_url: str) -> None:
    """The ${VAR} reference is stored and shown; its value never reaches the database or output."""
    seed(cli, schedules=1)
    result = cli("apply", env={"SFTP_PASSWORD": "hunter2-secret"})
    assert "hunter2" not in result.stdout + result.stderr
    stored = rows(database_url, "SELECT spec::text FROM cpi_projects")[0][0]
    assert "${SFTP_PASSWORD}" in str(stored)
    assert "hunter2" not in str(stored)


def test_update_and_run_statistics_never_diff(cli: Cli, database_url: str) -> None:
    """Changing a document is an update; run statistics written by imports are not a change."""
    folder = seed(cli)
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET total_runs = 7, last_run_at = now()")
    assert cli("plan").stdout.strip() == "No changes."
    write(folder, "s0.yaml", SCHEDULE.format(name="s0", project="sales", cron="30 6 * * 1-5"))
    result = cli("apply")
    assert "~ Schedule s0" in result.stdout
    assert 'cron_expression: "0 0 * * *" -> "30 6 * * 1-5"' in result.stdout
    assert rows(database_url, "SELECT total_runs FROM cpi_schedules WHERE name = 's0'") == [(7,)]


def test_a_new_or_retimed_schedule_is_anchored_at_apply(cli: Cli, database_url: str) -> None:
    """Create or a change of timing: interval_anchor = now(), next_run_at cleared; disabling
    clears next_run_at only; any other change keeps both."""
    folder = seed(cli)
    assert cli("apply").returncode == 0
    timing = "SELECT interval_anchor, next_run_at FROM cpi_schedules WHERE name = 's0'"
    ((anchor, next_run),) = rows(database_url, timing)
    assert (anchor is not None, next_run) == (True, None)
    with psycopg.connect(database_url) as conn:  # as the scheduler leaves the row
        conn.execute("UPDATE cpi_schedules SET next_run_at = now() + interval '1 day'")
    ((_, planned),) = rows(database_url, timing)

    same = SCHEDULE.format(name="s0", project="sales", cron="0 0 * * *")
    write(folder, "s0.yaml", same + "  callback_url: https://hooks.example.com/s0\n")
    assert "~ Schedule s0" in cli("apply").stdout
    assert rows(database_url, timing) == [(anchor, planned)]

    write(folder, "s0.yaml", same + "  enabled: false\n")  # its disabled time holds no missed runs
    assert "~ Schedule s0" in cli("apply").stdout
    assert rows(database_url, timing) == [(anchor, None)]

    write(folder, "s0.yaml", SCHEDULE.format(name="s0", project="sales", cron="30 6 * * *"))
    assert "~ Schedule s0" in cli("apply").stdout
    ((moved, cleared),) = rows(database_url, timing)
    assert (moved > anchor, cleared) == (True, None)
    others = "SELECT name, next_run_at IS NOT NULL FROM cpi_schedules WHERE name <> 's0'"
    assert rows(database_url, others) == [("s1", True)]


def test_drift_is_shown_and_set_back(cli: Cli, database_url: str) -> None:
    """A managed row edited in SQL shows as drift and apply sets it back."""
    seed(cli)
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET enabled = false, timezone = 'UTC' WHERE name='s1'")
    plan = cli("plan")
    assert "~ Schedule s1" in plan.stdout
    assert "drift" in plan.stdout
    assert "enabled: false -> true" in plan.stdout
    assert cli("apply").returncode == 0
    assert rows(database_url, "SELECT enabled, timezone FROM cpi_schedules WHERE name='s1'") == [
        (True, "America/New_York")
    ]


def test_renaming_a_file_changes_nothing_renaming_a_schedule_is_delete_create(cli: Cli) -> None:
    """Moving a document to another file is no change; renaming it is a delete and a create."""
    folder = seed(cli)
    assert cli("apply").returncode == 0
    (folder / "s0.yaml").rename(folder / "moved.yaml")
    assert cli("plan").stdout.strip() == "No changes."
    write(
        folder, "moved.yaml", SCHEDULE.format(name="s0-renamed", project="sales", cron="0 0 * * *")
    )
    plan = cli("plan").stdout
    assert "- Schedule s0" in plan
    assert "+ Schedule s0-renamed" in plan
    assert "rename of s0" in plan


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("kind: Schedule\nmetadata: {name: x}\n", "problem"),
        ("apiVersion: reconciler/v1\nkind: Schedule\nmetadata: {name: x}\nspec: {crn: 1}\n", "crn"),
    ],
)
def test_invalid_folder_refuses_everything(
    cli: Cli, database_url: str, content: str, fragment: str
) -> None:
    """One invalid file refuses the whole apply with exit code 3; nothing is written."""
    folder = seed(cli)
    write(folder, "broken.yaml", content)
    result = cli("apply")
    assert result.returncode == 3
    assert fragment in result.stderr
    assert "nothing was applied" in result.stderr
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(0,)]


def test_missing_folder_is_refused(cli: Cli) -> None:
    """A missing schedules folder refuses the apply with exit code 3."""
    result = cli("apply", "--dir", "nope.d")
    assert result.returncode == 3
    assert "nope.d" in result.stderr


def test_empty_folder_guard(cli: Cli, database_url: str) -> None:
    """An empty folder with owned rows is refused unless --allow-empty."""
    folder = seed(cli)
    assert cli("apply").returncode == 0
    for path in folder.iterdir():
        path.unlink()
    refused = cli("apply")
    assert refused.returncode == 3
    assert "--allow-empty" in refused.stderr
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(2,)]
    assert cli("apply", "--allow-empty").returncode == 0
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(0,)]


def test_delete_limit_guard(cli: Cli, database_url: str) -> None:
    """Deleting more than --max-deletes rows is refused, and the flag overrides it."""
    folder = seed(cli, schedules=4)
    assert cli("apply").returncode == 0
    for i in range(4):
        (folder / f"s{i}.yaml").unlink()
    write(folder, "keep.yaml", SCHEDULE.format(name="keep", project="sales", cron="0 1 * * *"))
    refused = cli("apply", "--max-deletes", "3")
    assert refused.returncode == 3
    assert "--max-deletes 4" in refused.stderr
    assert cli("apply", "--max-deletes", "4").returncode == 0
    assert rows(database_url, "SELECT name FROM cpi_schedules") == [("keep",)]


def test_clash_with_unowned_row_needs_adopt(cli: Cli, database_url: str) -> None:
    """A row created by the old API is not touched; export then --adopt takes it over."""
    with psycopg.connect(database_url) as conn:
        (pid,) = conn.execute(
            "INSERT INTO cpi_projects (name) VALUES ('legacy') RETURNING id"
        ).fetchone() or (None,)
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, interval_seconds, "
            "sftp_override) VALUES ('old-import', %s, 'interval', 7200, "
            """'{"remote_dir": "/in", "password": "plain-text-pw"}')""",
            (pid,),
        )
    folder = cli.cwd / "schedules.d"
    exported = cli("export", "--out", str(folder))
    assert exported.returncode == 0, exported.stderr
    text = (folder / "legacy.yaml").read_text()
    assert "plain-text-pw" not in text
    assert "${OLD_IMPORT_SFTP_PASSWORD}" in text
    clash = cli("apply")
    assert clash.returncode == 1
    assert "--adopt" in clash.stderr
    adopted = cli("apply", "--adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert "adopt" in adopted.stdout
    assert rows(database_url, "SELECT owner FROM cpi_schedules") == [("reconcile",)]
    assert rows(database_url, "SELECT owner FROM cpi_projects") == [(None,)]
    assert cli("plan").stdout.strip() == "No changes."


def test_owners_share_a_database(cli: Cli, database_url: str, tmp_path: Path) -> None:
    """Two owners with two folders never touch each other's rows."""
    seed(cli)
    assert cli("apply").returncode == 0
    other = tmp_path / "other.d"
    write(other, "p.yaml", PROJECT.format(name="marketing"))
    env = {"RECONCILER_OWNER": "team-b", "RECONCILER_SCHEDULES_DIR": str(other)}
    assert cli("apply", env=env).returncode == 0
    assert cli("plan").stdout.strip() == "No changes."
    assert rows(database_url, "SELECT name, owner FROM cpi_projects ORDER BY 1") == [
        ("marketing", "team-b"),
        ("sales", "reconcile"),
    ]


def test_project_used_by_another_owner_is_not_deleted(cli: Cli, database_url: str) -> None:
    """Deleting a project would cascade to another owner's schedule: refused."""
    folder = seed(cli, schedules=0)
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, interval_seconds, owner) "
            "SELECT 'theirs', id, 'interval', 3600, 'team-b' FROM cpi_projects"
        )
    (folder / "project.yaml").unlink()
    result = cli("apply", "--allow-empty")
    assert result.returncode == 1
    assert "theirs" in result.stderr
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(1,)]


def test_two_concurrent_applies(cli: Cli, database_url: str) -> None:
    """Two applies started together end with exactly the desired rows and no error."""
    seed(cli, schedules=50)
    procs = [cli.popen("apply") for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
        assert "error" not in err.lower()
    outputs = sorted(out.strip().splitlines()[-1] for _code, out, _err in results)
    assert outputs[0] == "Apply complete." or outputs == sorted(["No changes.", "Apply complete."])
    assert rows(database_url, "SELECT count(*) FROM cpi_schedules") == [(50,)]


def test_status_lists_schedules(cli: Cli) -> None:
    """status shows each schedule with project, timing, owner and next run; JSON too."""
    seed(cli, schedules=1)
    assert cli("apply").returncode == 0
    text = cli("status").stdout
    assert "s0" in text
    assert "America/New_York" in text
    doc = json.loads(cli("status", "-o", "json").stdout)
    (entry,) = doc["schedules"]
    assert entry["project"] == "sales"
    assert entry["owner"] == "reconcile"
    assert entry["next_run_at"] is not None
    missing = cli("status", "nope")
    assert missing.returncode == 1
    assert "nope" in missing.stderr


def test_embedded_default_is_used_and_logged(cli: Cli, tmp_path: Path) -> None:
    """With no database configured, apply starts the embedded server under the state folder."""
    seed(cli, schedules=1)
    env = dict(cli.env)
    env.pop("RECONCILER_DATABASE_URL")
    embedded = Cli(env, cli.cwd)
    result = embedded("apply", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "embedded PostgreSQL" in result.stderr
    assert (tmp_path / "state" / "postgres" / "PG_VERSION").exists()
    assert embedded("plan", timeout=120).stdout.strip() == "No changes."


def test_dry_run_never_migrates(cli: Cli, empty_database_url: str) -> None:
    """A plan against a database without the schema shows creates and leaves it untouched."""
    seed(cli, schedules=1)
    result = cli("plan", env={"RECONCILER_DATABASE_URL": empty_database_url})
    assert result.returncode == 0, result.stderr
    assert "Plan: 2 to create, 0 to update, 0 to delete." in result.stdout
    assert rows(empty_database_url, "SELECT to_regclass('cpi_schedules')") == [(None,)]
