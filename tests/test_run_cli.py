"""``reconcile run`` and ``reconcile history`` as real subprocesses against real PostgreSQL."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cli
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales

from reconciler.commands.running import _Bar
from reconciler.imports.engine.importing import Progress
from reconciler.store.jobs import job_lock_key

NAME = "daily-sales-import"


@pytest.fixture
def repo(cli: Cli, database_url: str) -> Path:
    """schedules.d/ beside data/ in the CLI's folder, public.sales, project and schedule rows."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    return cli.cwd


def _schedule(url: str, **target: Any) -> None:
    add_project(url, target={"table": "public.sales", **target})
    add_schedule(url, local_files=["../data/sales_*.csv"])


def test_run_prints_a_summary_and_exits_zero(cli: Cli, repo: Path, database_url: str) -> None:
    """A successful run: exit 0, a summary per file, the rows in the table, stats updated."""
    _schedule(database_url)
    write_sales(repo / "data/sales_2026-11-01.csv", range(1, 4))
    done = cli("run", NAME)
    assert done.returncode == 0, done.stderr
    head, line = done.stdout.splitlines()
    assert head.startswith(f"{NAME}: succeeded in ")
    assert "1 file(s), 3 rows" in head
    assert line.split() == ["imported", "sales_2026-11-01.csv", "3", "rows", "77", "B"]
    assert count(database_url) == 3
    with psycopg.connect(database_url) as conn:
        stats = conn.execute("SELECT total_runs, successful_runs FROM cpi_schedules").fetchone()
    assert stats == (1, 1)


def test_run_json_is_a_versioned_job_result(cli: Cli, repo: Path, database_url: str) -> None:
    """--output json prints one JobResult document with per-file results."""
    _schedule(database_url)
    write_sales(repo / "data/sales_1.csv", range(5))
    cli("run", NAME)
    done = cli("run", NAME, "--output", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["apiVersion"], document["kind"]) == ("reconciler/v1", "JobResult")
    assert (document["status"], document["trigger"], document["rows_imported"]) == (
        "succeeded",
        "manual",
        0,
    )
    assert (document["files"], document["skipped_files"]) == ([], 1)  # counted, not listed


def test_a_failed_file_exits_one_with_its_line(cli: Cli, repo: Path, database_url: str) -> None:
    """A bad row: exit 1, the file, line and PostgreSQL's message, no traceback."""
    _schedule(database_url)
    write_sales(repo / "data/sales_1.csv", range(0, 5), bad_line=4)
    done = cli("run", NAME)
    assert done.returncode == 1
    assert "failed      sales_1.csv  line 4: invalid input syntax for type numeric" in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: 1 of 1 files failed; first: {repo / 'data/sales_1.csv'} line 4: "
        'invalid input syntax for type numeric: "abc"'
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("target", "files", "error"),
    [
        ({"table": "public.missing"}, True, "table public.missing does not exist"),
        ({"table": "sales", "columns": ["sale_id", "price"]}, True, "has no column price"),
        (
            {"table": "sales", "database_url": "${SALES_DB_URL}"},
            True,
            "project sales_project: target.database_url: environment variable SALES_DB_URL "
            "is not set",
        ),
        ({"table": "sales"}, False, "sales_fixed.csv"),
    ],
)
@pytest.mark.usefixtures("repo")
def test_job_level_failures_are_one_line(
    cli: Cli, database_url: str, target: dict[str, Any], files: bool, error: str
) -> None:
    """A missing table, column, secret or file: one error line, a failed job, exit 1."""
    add_project(database_url, target=target)
    add_schedule(database_url, local_files=["../data/sales_fixed.csv"])
    if files:
        write_sales(cli.cwd / "data/sales_fixed.csv", range(3))
    done = cli("run", NAME)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert error in errors[0]
    assert "Traceback" not in done.stderr
    (row,) = jobs(database_url)
    assert row["status"] == "failed"
    assert error in row["error"]
    assert "\n" not in row["error"]


def test_an_unknown_schedule_says_to_apply(cli: Cli, repo: Path) -> None:
    """A schedule not in the database is NotFound with a hint, exit 1."""
    done = cli("run", "nope")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: schedule 'nope' not found in the database; run `reconcile apply` first"
    )


def test_an_overlapping_run_is_skipped_and_exits_one(
    cli: Cli, repo: Path, database_url: str
) -> None:
    """While another run holds the schedule, run records a skip and exits 1 with the reason."""
    _schedule(database_url)
    write_sales(repo / "data/sales_1.csv", range(3))
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (job_lock_key(NAME),))
        holder.execute(
            "INSERT INTO cpi_jobs (schedule_name, status, started_at, heartbeat_at) "
            "VALUES (%s, 'running', now(), now())",
            (NAME,),
        )
        done = cli("run", NAME)
    assert done.returncode == 1
    assert "still running" in done.stderr
    assert count(database_url) == 0
    assert sorted(r["status"] for r in jobs(database_url)) == ["running", "skipped"]


def test_history_lists_runs_newest_first(cli: Cli, repo: Path, database_url: str) -> None:
    """history shows each run's status, trigger, rows and error; JSON and --limit work."""
    _schedule(database_url)
    write_sales(repo / "data/sales_1.csv", range(0, 5), bad_line=2)
    cli("run", NAME)
    write_sales(repo / "data/sales_1.csv", range(0, 5))
    cli("run", NAME)
    done = cli("history", NAME)
    assert done.returncode == 0, done.stderr
    header, newest, oldest = done.stdout.splitlines()
    assert header.split()[:4] == ["STARTED", "STATUS", "TRIGGER", "DURATION"]
    assert newest.split()[3:7] == ["succeeded", "manual", newest.split()[5], "5"]
    assert "failed" in oldest
    assert "1 of 1 files failed" in oldest
    document = json.loads(cli("history", NAME, "--limit", "1", "--output", "json").stdout)
    assert document["kind"] == "JobHistory"
    assert [j["status"] for j in document["jobs"]] == ["succeeded"]


def test_history_of_an_unknown_schedule(cli: Cli, repo: Path) -> None:
    """A name with neither a schedule nor runs is NotFound."""
    done = cli("history", "nope")
    assert done.returncode == 1
    assert "schedule 'nope' not found" in done.stderr


def test_the_quickstart_imports_the_sample_data(cli: Cli, database_url: str) -> None:
    """The README's quickstart, command for command, on the repository's own example files."""
    root = Path(__file__).resolve().parent.parent
    shutil.rmtree(cli.cwd / "schedules.d")
    shutil.copytree(root / "schedules.d", cli.cwd / "schedules.d")
    shutil.copytree(root / "examples", cli.cwd / "examples")
    made = cli("sql", "-f", "examples/data/sales.sql")
    assert made.returncode == 0, made.stderr
    assert cli("apply").returncode == 0
    done = cli("run", "daily-sales-import")
    assert done.returncode == 0, done.stderr
    assert count(database_url) == 24
    assert "imported    sales_2026-11-01.csv  12 rows" in done.stdout
    counted = cli("sql", "-c", "SELECT count(*) AS n FROM public.sales", "-o", "json")
    assert json.loads(counted.stdout)["rows"] == [{"n": 24}]
    assert cli("sql", "-c", "SELECT 1", "-f", "x.sql").returncode == 1


def test_the_progress_line_shows_files_bytes_rows_and_rate() -> None:
    """On a terminal, one self-overwriting line: file i of n, bytes, rows, rate; cleared at end."""
    stream = io.StringIO()
    bar = _Bar(stream)
    bar(Progress(2, 1, "sales_2.csv", 3_000_000, 12_000_000, 45_000, 2.0))
    bar.close()
    shown, cleared = stream.getvalue().split("\r")[1:3]
    assert shown.split() == [
        "file", "2", "of", "2", "sales_2.csv", "3.0", "MB", "/", "12.0", "MB",
        "~45,000", "rows", "1.5", "MB/s",
    ]  # fmt: skip
    assert not cleared.strip()


@pytest.mark.usefixtures("repo")
def test_a_stored_spec_that_no_longer_validates_is_one_line(cli: Cli, database_url: str) -> None:
    """A project row whose spec an older or hand-edited write left invalid: exit 1, one line."""
    _schedule(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("""UPDATE cpi_projects SET spec = spec || '{"retired_key": 1}'""")
    for args in (("run", NAME), ("run", NAME, "-o", "json")):
        done = cli(*args)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        (error,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert "sales_project" in error
        assert "retired_key" in error
    assert json.loads(done.stdout)["kind"] == "Error"
