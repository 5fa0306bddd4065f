"""What a job lists: the files a run acted on, and a count of those it skipped unread."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from import_rows import SALES, add_project, add_schedule, jobs, write_sales

from reconciler.imports.runs.running import run_schedule
from reconciler.model.results import ALREADY_IMPORTED, FileResult, JobResult, fold
from reconciler.settings import load_settings

NAME = "daily-sales-import"
_WHEN = datetime(2026, 12, 1, tzinfo=UTC)


def _file(status: str, note: str | None = None) -> FileResult:
    return FileResult(f"/drop/{status}-{note}.csv", 10, _WHEN, status, note=note)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "listed"),
    [
        (_file("skipped", ALREADY_IMPORTED), False),
        (_file("skipped", "after_import failed: permission denied"), True),
        (_file("skipped", "already imported: the import ledger records it, though"), True),
        (_file("imported"), True),
        (_file("unchanged"), True),
        (_file("waiting", "not settled"), True),
        (_file("failed"), True),
        (_file("rolled_back", "the run failed"), True),
    ],
)
def test_only_files_skipped_unread_are_counted_instead_of_listed(
    result: FileResult, listed: bool
) -> None:
    """Every file the run acted on, or has something to say about, stays listed."""
    assert fold([result]) == (((result,), 0) if listed else ((), 1))


def test_the_document_lists_what_was_acted_on_in_order_and_counts_the_rest() -> None:
    """The callback body and the JSON output: ``files`` in order, ``skipped_files`` a count."""
    files = (
        _file("skipped", ALREADY_IMPORTED),
        _file("imported"),
        _file("skipped", ALREADY_IMPORTED),
        _file("failed"),
    )
    job = JobResult(None, NAME, "sales_project", "failed", "manual", files=files)
    body = job.to_json()
    assert [f["status"] for f in body["files"]] == ["imported", "failed"]
    assert body["skipped_files"] == 2
    assert json.loads(json.dumps(body)) == body


def test_a_job_over_a_folder_of_imported_files_stores_a_small_list(
    tmp_path: Path, database_url: str
) -> None:
    """A drop folder of 300 imported files and one new one: the job lists one file and counts
    300; the stored row, the run's document and ``reconcile history`` agree."""
    from reconciler.store.history import job_history

    (tmp_path / "schedules.d").mkdir()
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    for i in range(300):
        write_sales(tmp_path / f"data/sales_{i:04}.csv", range(i, i + 1))
    settings = load_settings(
        schedules_dir=str(tmp_path / "schedules.d"), database_url=database_url,
        state_dir=str(tmp_path / "state"),
        environ={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_SETTLE_SECONDS": "0"},
    )  # fmt: skip
    first = run_schedule(NAME, settings=settings)
    assert (first.status, first.rows_imported) == ("succeeded", 300)
    assert jobs(database_url)[0]["skipped_files"] == 0

    write_sales(tmp_path / "data/sales_9999.csv", range(9999, 10000))
    second = run_schedule(NAME, settings=settings)
    assert (second.status, second.rows_imported) == ("succeeded", 1)
    document = second.to_json()
    assert [Path(f["path"]).name for f in document["files"]] == ["sales_9999.csv"]
    assert document["skipped_files"] == 300

    row = jobs(database_url)[-1]
    assert (len(row["files"]), row["skipped_files"]) == (1, 300)
    assert len(json.dumps(row["files"])) < 1000  # not 300 entries of some 200 bytes each
    with psycopg.connect(database_url) as conn:
        (latest,) = job_history(conn, NAME, limit=1)
    assert (latest["files"], latest["skipped_files"]) == (row["files"], 300)
