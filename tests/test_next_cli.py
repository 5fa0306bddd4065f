"""``reconcile next NAME``: a real subprocess against documents on disk, with no database."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Cli

_DOCUMENTS = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: sales_project
spec:
  target:
    table: public.sales
---
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: daily-sales-import
spec:
  project: sales_project
  cron: "0   0 * * *"
  timezone: America/New_York
  local_files: ["data/*.csv"]
---
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: sunday-report
spec:
  project: sales_project
  cron: "30 6 * * SUN"
  timezone: Europe/Berlin
  enabled: false
  local_files: ["data/*.csv"]
---
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: every-two-hours
spec:
  project: sales_project
  interval: 2h
  local_files: ["data/*.csv"]
"""

_RUN_LINE = re.compile(
    r"^  (\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)?) (?:\S+ )?\(([+-]\d\d:\d\d)\)"
    r"   (\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)?) UTC$"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A schedules folder with one project and three schedules."""
    path = tmp_path / "schedules.d"
    path.mkdir()
    (path / "sales.yaml").write_text(_DOCUMENTS)
    return path


def _next(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return Cli(env, cwd)("next", *args)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_text_lists_local_and_utc_times(cli_env: dict[str, str], folder: Path) -> None:
    """Each run is shown in the schedule's zone and in UTC, under the cron and its words."""
    before = datetime.now(UTC)
    done = _next(cli_env, folder.parent, "daily-sales-import", "-n", "3", "--dir", str(folder))
    assert done.returncode == 0, done.stderr
    header, *runs = done.stdout.splitlines()
    assert header == "daily-sales-import  0 0 * * *  (At 00:00) America/New_York"
    assert len(runs) == 3
    for line in runs:
        match = _RUN_LINE.match(line)
        assert match, line
        local, offset, utc = match.groups()
        assert local.endswith(" 00:00")
        local_instant = datetime.fromisoformat(f"{local}{offset}")
        assert local_instant == datetime.fromisoformat(f"{utc}+00:00")
        assert local_instant > before


def test_json_has_the_versioned_shape(cli_env: dict[str, str], folder: Path) -> None:
    """--output json gives NextRuns with the canonical cron, words and increasing runs."""
    before = datetime.now(UTC).replace(microsecond=0)
    done = _next(cli_env, folder.parent, "sunday-report", "--dir", str(folder), "-o", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["apiVersion"] == "reconciler/v1"
    assert result["kind"] == "NextRuns"
    assert {k: result[k] for k in ("name", "cron", "interval_seconds", "timezone")} == {
        "name": "sunday-report",
        "cron": "30 6 * * 0",
        "interval_seconds": None,
        "timezone": "Europe/Berlin",
    }
    assert result["description"] == "At 06:30, only on Sunday"
    assert result["enabled"] is False
    runs = [(_parse(run["local"]), _parse(run["utc"])) for run in result["runs"]]
    assert len(runs) == 5
    for local, utc in runs:
        assert local == utc
        assert utc.utcoffset() == timedelta(0)
        assert (local.weekday(), local.hour, local.minute) == (6, 6, 30)
    assert before < runs[0][1]
    assert all(a[1] < b[1] for a, b in itertools.pairwise(runs))


def test_interval_runs_are_spaced_by_the_interval(cli_env: dict[str, str], folder: Path) -> None:
    """An interval schedule's runs are the interval apart, counted from now."""
    done = _next(cli_env, folder.parent, "every-two-hours", "--dir", str(folder), "-o", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["cron"], result["interval_seconds"]) == (None, 7200)
    assert result["description"] == "every 2 hours"
    utc = [_parse(run["utc"]) for run in result["runs"]]
    assert utc[0] == _parse(result["now"]) + timedelta(hours=2)
    assert {b - a for a, b in itertools.pairwise(utc)} == {timedelta(hours=2)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "error: schedule 'nope' not found in"),
        (("sales_project",), "error: schedule 'sales_project' not found in"),
        (("daily-sales-import", "-n", "0"), "error: --count must be between 1 and 1000, not 0"),
    ],
)
def test_unknown_names_and_bad_counts_fail_clearly(
    cli_env: dict[str, str], folder: Path, args: tuple[str, ...], message: str
) -> None:
    """An unknown schedule (a project is not one) or a bad count exits 1 with a clear message."""
    done = _next(cli_env, folder.parent, *args, "--dir", str(folder))
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stdout == ""


def test_a_folder_with_findings_is_refused(cli_env: dict[str, str], folder: Path) -> None:
    """Any finding in the folder is reported as path:line:col and nothing is computed."""
    (folder / "broken.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Schedule\nmetadata:\n  name: broken\n"
        "spec:\n  project: sales_project\n  cron: '0 0 31 2 *'\n  local_files: [a.csv]\n"
    )
    done = _next(cli_env, folder.parent, "daily-sales-import", "--dir", str(folder))
    assert done.returncode == 1
    assert "broken.yaml:7:" in done.stderr
    assert "never fires (February has no 31st)" in done.stderr


def test_next_imports_no_database_or_scheduler(cli_env: dict[str, str], folder: Path) -> None:
    """`next` is offline: psycopg, APScheduler, paramiko and watchfiles are never imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", "next", "daily-sales-import"],
        cwd=folder.parent,
        env={**cli_env, "RECONCILER_SCHEDULES_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "reconciler.model.timing" in imported
    heavy = {name.split(".")[0] for name in imported} & {
        "psycopg",
        "apscheduler",
        "paramiko",
        "watchfiles",
    }
    assert heavy == set()


_LONGEST = """\
apiVersion: reconciler/v1
kind: Project
metadata: {name: p}
spec: {target: {table: t}}
---
apiVersion: reconciler/v1
kind: Schedule
metadata: {name: longest}
spec: {project: p, interval: 2147483647, timezone: Pacific/Kiritimati, local_files: [a.csv]}
"""


@pytest.mark.parametrize("output", ["text", "json"])
def test_runs_past_year_9999_end_the_list_without_a_traceback(
    cli_env: dict[str, str], tmp_path: Path, output: str
) -> None:
    """The longest interval, 1000 times, in UTC+14: the runs before year 10000, and a note."""
    (tmp_path / "schedules.d").mkdir()
    (tmp_path / "schedules.d" / "s.yaml").write_text(_LONGEST)
    done = _next(cli_env, tmp_path, "longest", "-n", "1000", "-o", output)
    assert (done.returncode, done.stderr) == (0, "")
    if output == "json":
        runs = json.loads(done.stdout)["runs"]
        assert 100 < len(runs) < 1000
        assert all(run["local"] < "9999-12-31T23:59:59" for run in runs)
        return
    *runs, last = done.stdout.splitlines()[2:]
    assert 100 < len(runs) < 1000
    assert all(_RUN_LINE.match(line) for line in runs), runs[-1]
    assert last == "  no further runs before the end of year 9999"


def test_a_huge_count_is_a_one_line_error(cli_env: dict[str, str], folder: Path) -> None:
    """A count past any limit is refused in one line, never quoted whole."""
    count = "9" * 4000
    done = _next(cli_env, folder.parent, "daily-sales-import", "-n", count, "--dir", str(folder))
    assert done.returncode == 1
    assert done.stderr == ("error: --count must be between 1 and 1000, not a number that large\n")
