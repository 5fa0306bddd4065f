"""A run with nothing to load, on real PostgreSQL: it reaches the target only for what it needs.

Nothing listed: no session to the target at all. Files listed but all imported before: the
import ledger is read, the table is not checked. The first run with a file to load checks the
table and reports what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import database_url_for
from import_rows import SALES, add_project, add_schedule, count, jobs, write_sales

from reconciler.imports.runs.running import run_schedule
from reconciler.settings import Settings, load_settings

NAME = "daily-sales-import"


def _settings(folder: Path, url: str, target_url: str | None = None) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"),
        database_url=url,
        state_dir=str(folder / "state"),
        environ={
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_SETTLE_SECONDS": "0",
            **({"SALES_DB": target_url} if target_url else {}),
        },
    )


def test_nothing_listed_never_reaches_the_target(tmp_path: Path, database_url: str) -> None:
    """A target database that does not exist: a run whose glob matches nothing succeeds without
    trying it; the first run with a file says the target cannot be reached."""
    add_project(database_url, target={"table": "public.sales", "database_url": "${SALES_DB}"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    nowhere = database_url_for(database_url, "no_such_database")
    settings = _settings(tmp_path, database_url, nowhere)

    idle = run_schedule(NAME, settings=settings)
    assert (idle.status, idle.error, idle.files) == ("succeeded", None, ())

    write_sales(tmp_path / "data/sales_1.csv", range(3))
    failed = run_schedule(NAME, settings=settings)
    assert failed.status == "failed"
    assert failed.error is not None
    assert "no_such_database" in failed.error, failed.error
    assert [j["status"] for j in jobs(database_url)] == ["succeeded", "failed"]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        pytest.param(
            {"table": "public.missing"}, "table public.missing does not exist", id="missing"
        ),
        pytest.param(
            {"table": "sales", "columns": ["sale_id", "price"]}, "has no column price", id="column"
        ),
        pytest.param(
            {"table": "sales", "mode": "upsert", "key": ["sold_at"]},
            "has no unique constraint",
            id="key",
        ),
    ],
)
def test_the_first_run_with_a_file_reports_the_table(
    tmp_path: Path, database_url: str, target: dict[str, object], problem: str
) -> None:
    """A table that is missing or does not fit: runs with nothing listed succeed, the first
    run with a file fails saying what is wrong, and loads nothing."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target=target)
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    settings = _settings(tmp_path, database_url)
    assert run_schedule(NAME, settings=settings).status == "succeeded"

    write_sales(tmp_path / "data/sales_1.csv", range(3))
    failed = run_schedule(NAME, settings=settings)
    assert failed.status == "failed"
    assert failed.error is not None
    assert problem in failed.error, failed.error
    assert count(database_url) == 0


def test_files_imported_before_are_skipped_without_checking_the_table(
    tmp_path: Path, database_url: str
) -> None:
    """Files kept in place after their import are skipped on the ledger's word, even once the
    table is gone; a new file then finds the table missing, and nothing is lost: once the
    table is back it loads."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    settings = _settings(tmp_path, database_url)
    write_sales(tmp_path / "data/sales_1.csv", range(3))
    assert run_schedule(NAME, settings=settings).rows_imported == 3
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE sales RENAME TO sales_away")

    kept = run_schedule(NAME, settings=settings)
    assert (kept.status, kept.error, kept.rows_imported) == ("succeeded", None, 0)

    write_sales(tmp_path / "data/sales_2.csv", range(3, 5))
    failed = run_schedule(NAME, settings=settings)
    assert failed.status == "failed"
    assert failed.error is not None
    assert "table public.sales does not exist in the target" in failed.error, failed.error

    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE sales_away RENAME TO sales")
    again = run_schedule(NAME, settings=settings)
    assert (again.status, again.rows_imported, count(database_url)) == ("succeeded", 2, 5)
