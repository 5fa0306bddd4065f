"""``local_files`` end to end: what is stored is what the run reads, wherever the YAML file sits.

A schedule's globs are written relative to its YAML file's folder and stored relative to the
schedules folder, so moving the file shows as the change it is and the next run reads the right
files. Real processes, real files, real PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Cli

CASE = Path(__file__).parent / "cases" / "yaml-moved-to-subfolder"
NAME = "case11-orders"
TABLE = "CREATE TABLE public.case11_orders (order_id int PRIMARY KEY, item text)"
WRITTEN = '["../data/orders_*.csv"]'


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM public.case11_orders").fetchone()
    assert row is not None
    return int(row[0])


def stored(url: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT local_files, source_file FROM cpi_schedules WHERE name = %s", (NAME,)
        ).fetchone()
    assert row is not None
    return tuple(row)


def ok(cli: Cli, *args: str) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def warnings_of(stderr: str) -> list[dict[str, object]]:
    """The JSON log lines at level warning."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "warning"]


@pytest.fixture
def before(cli: Cli, database_url: str) -> Path:
    """The case's first state, applied and run once: imports.yaml at the top, orders_1.csv."""
    root = cli.cwd
    shutil.copy(CASE / "before" / "imports.yaml", root / "schedules.d" / "imports.yaml")
    (root / "data").mkdir()
    shutil.copy(CASE / "data" / "orders_1.csv", root / "data")
    ok(cli, "sql", "-c", TABLE)
    ok(cli, "apply")
    ok(cli, "run", NAME)
    assert count(database_url) == 2
    assert stored(database_url) == (["../data/orders_*.csv"], "imports.yaml")
    shutil.copy(CASE / "data" / "orders_2.csv", root / "data")
    return root


def move(root: Path, text: str) -> None:
    (root / "schedules.d" / "imports.yaml").unlink()
    (root / "schedules.d" / "team").mkdir()
    (root / "schedules.d" / "team" / "imports.yaml").write_text(text)


def test_a_moved_file_with_its_glob_adjusted_imports_the_new_file(
    cli: Cli, database_url: str, before: Path
) -> None:
    """Moved into team/ with ../../data: nothing to change, and the next run reads data/ still."""
    move(before, (CASE / "after" / "imports.yaml").read_text())
    assert ok(cli, "plan").strip() == "No changes."
    ok(cli, "apply")
    assert stored(database_url) == (["../data/orders_*.csv"], "team/imports.yaml")
    done = cli("run", NAME)
    assert done.returncode == 0, done.stderr
    assert "1 file(s) (1 already imported, not read), 2 rows" in done.stdout  # orders_1
    assert "imported    orders_2.csv" in done.stdout
    assert "orders_1.csv" not in done.stdout
    assert count(database_url) == 4
    assert warnings_of(done.stderr) == []


def test_a_moved_file_with_its_glob_not_adjusted_shows_the_change_and_warns(
    cli: Cli, database_url: str, before: Path
) -> None:
    """Moved without adjusting: the plan shows the new glob, the run says it matches nothing."""
    move(before, (CASE / "before" / "imports.yaml").read_text())
    plan = ok(cli, "plan")
    assert f"~ Schedule {NAME}" in plan
    assert 'local_files: ["../data/orders_*.csv"] -> ["data/orders_*.csv"]' in plan
    ok(cli, "apply")
    done = cli("run", NAME)
    assert done.returncode == 0, done.stderr
    assert count(database_url) == 2
    (warning,) = warnings_of(done.stderr)
    assert warning["event"] == "local_files pattern matches no file"
    assert warning["pattern"] == str(before / "schedules.d" / "data" / "orders_*.csv")
    assert warning["schedule"] == NAME
    move_back = (CASE / "after" / "imports.yaml").read_text()
    (before / "schedules.d" / "team" / "imports.yaml").write_text(move_back)
    assert 'local_files: ["data/orders_*.csv"] -> ["../data/orders_*.csv"]' in ok(cli, "apply")
    ok(cli, "run", NAME)
    assert count(database_url) == 4


def test_rows_stored_as_written_by_the_previous_version_are_updated(
    cli: Cli, database_url: str, before: Path
) -> None:
    """A glob stored as written beside a file in a subfolder plans as an update, not drift."""
    move(before, (CASE / "after" / "imports.yaml").read_text())
    ok(cli, "apply")
    with psycopg.connect(database_url) as conn:  # how the previous version stored it
        conn.execute(
            "UPDATE cpi_schedules SET local_files = '[\"../../data/orders_*.csv\"]' "
            "WHERE name = %s",
            (NAME,),
        )
    plan = ok(cli, "plan")
    assert 'local_files: ["../../data/orders_*.csv"] -> ["../data/orders_*.csv"]' in plan
    assert "drift" not in plan
    ok(cli, "apply")
    assert ok(cli, "plan").strip() == "No changes."
    ok(cli, "run", NAME)
    assert count(database_url) == 4


def test_a_hand_edited_local_files_value_plans_without_crashing(
    cli: Cli, database_url: str, before: Path
) -> None:
    """A column that is no list of globs shows as drift and apply sets it back."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET local_files = '\"data/*.csv\"'")
    plan = ok(cli, "plan")
    assert 'local_files: "data/*.csv" -> ["../data/orders_*.csv"]' in plan
    ok(cli, "apply")
    assert stored(database_url)[0] == ["../data/orders_*.csv"]


@pytest.mark.parametrize(
    ("out", "written"),
    [
        ("schedules.d", "../data/orders_*.csv"),
        ("schedules.d/team", "../../data/orders_*.csv"),
        ("elsewhere/deeper", "../../data/orders_*.csv"),
    ],
)
def test_export_writes_globs_relative_to_the_written_file(
    cli: Cli, database_url: str, before: Path, out: str, written: str
) -> None:
    """An exported document's globs read the same files from wherever it is written."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET owner = 'team-b'")
    ok(cli, "export", "--out", out)
    text = (before / out / "case11_orders.yaml").read_text()
    assert f"- {written}\n" in text


def test_status_shows_the_stored_globs(cli: Cli, before: Path) -> None:
    """status --output json lists a schedule's globs as stored: relative to the schedules folder."""
    move(before, (CASE / "after" / "imports.yaml").read_text())
    ok(cli, "apply")
    (entry,) = json.loads(ok(cli, "status", "-o", "json"))["schedules"]
    assert entry["local_files"] == ["../data/orders_*.csv"]
    assert entry["source"] == "team/imports.yaml:12"


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        (
            'UPDATE cpi_projects SET spec = spec || \'{"target": {"table": "a.b.c"}}\'',
            "project 'case11_orders': its row in cpi_projects no longer validates "
            "(spec.target.table",
        ),
        (
            'UPDATE cpi_schedules SET local_files = NULL, sftp_override = \'{"port": "many"}\'',
            "schedule 'case11-orders': its row in cpi_schedules no longer validates "
            "(sftp_override.port",
        ),
        (
            "UPDATE cpi_schedules SET local_files = '[1]'",
            "schedule 'case11-orders': its row in cpi_schedules no longer validates (local_files",
        ),
    ],
)
def test_a_stored_row_that_no_longer_validates_is_one_error_line(
    cli: Cli, database_url: str, before: Path, sql: str, fragment: str
) -> None:
    """run on a hand-edited row: one error line naming the row and `reconcile apply`, exit 1."""
    with psycopg.connect(database_url) as conn:
        conn.execute(sql)
    done = cli("run", NAME)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert fragment in error
    assert error.endswith("run `reconcile apply` to set it back")
