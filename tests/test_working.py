"""The daemon's run pool in-process: an occurrence that cannot be claimed is handed back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemons import wait_until

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.working import Occurrence, Runner
from reconciler.settings import load_settings

NOWHERE = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"


def test_an_occurrence_that_cannot_be_claimed_is_handed_back(tmp_path: Path) -> None:
    """With the database down, the claim fails: the timer is told, so the occurrence stays due
    (next_run_at is not moved) and a resync runs it within its grace."""
    settings = load_settings(
        database_url=NOWHERE, state_dir=str(tmp_path), environ={"RECONCILER_LOG_LEVEL": "error"}
    )
    runner = Runner(settings, Metrics(), url=NOWHERE, workers=1)
    handed_back: list[tuple[str, datetime]] = []
    runner.unclaimed = lambda name, at: handed_back.append((name, at))
    at = datetime.now(UTC).replace(microsecond=0)
    runner.submit(Occurrence("nightly", at, timedelta(seconds=300), at + timedelta(minutes=1)))
    wait_until(lambda: handed_back, timeout=30, what="the occurrence handed back")
    assert runner.stop(30)
    assert handed_back == [("nightly", at)]


def test_a_schedule_disabled_after_it_was_armed_is_not_run(
    tmp_path: Path, database_url: str
) -> None:
    """The timer fires before the resync that follows a disabling apply: no job is recorded."""
    from import_rows import add_project, add_schedule, jobs

    add_project(database_url)
    add_schedule(database_url, "nightly", enabled=False)
    add_schedule(database_url, "hourly")  # the control: enabled, so its occurrence runs
    settings = load_settings(
        database_url=database_url, state_dir=str(tmp_path),
        environ={"RECONCILER_LOG_LEVEL": "error"},
    )  # fmt: skip
    runner = Runner(settings, Metrics(), url=database_url, workers=1)
    at = datetime.now(UTC).replace(microsecond=0)
    for name in ("nightly", "hourly"):
        runner.submit(Occurrence(name, at, timedelta(seconds=300), None))
    wait_until(lambda: jobs(database_url, "hourly"), timeout=30, what="the control's job")
    wait_until(lambda: not runner.busy, timeout=30, what="the pool to drain")
    assert runner.stop(30)
    assert jobs(database_url, "nightly") == []
