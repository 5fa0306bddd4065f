"""``reconcile status``: a count of every schedule by state, and ``--project`` and ``--failing``
to list the few that matter among a thousand."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import psycopg
import pytest

from reconciler.commands.reporting import StatusEntry, render_summary, select, tally
from tests.conftest import Cli
from tests.test_apply import seed


def entry(
    name: str, project: str = "sales", result: str | None = None, *, enabled: bool = True
) -> StatusEntry:
    """A status entry with only what the summary and the filters read."""
    return StatusEntry(
        name=name,
        project=project,
        timing="0 0 * * *",
        timezone="UTC",
        enabled=enabled,
        owner="reconcile",
        last_run_at=datetime(2026, 1, 1, tzinfo=UTC) if result else None,
        last_result=result,
        next_run_at=None,
        source=None,
    )


ENTRIES = [
    entry("a", result="succeeded"),
    entry("b", result="failed"),
    entry("c", project="hr", result="abandoned"),
    entry("d", project="hr"),
    entry("e", result="failed", enabled=False),
    entry("f", result="succeeded"),
]

SELECTIONS = [
    # (id, project, failing, names listed)
    ("everything", None, False, "abcdef"),
    ("one project", "hr", False, "cd"),
    ("failing: failed or abandoned, enabled", None, True, "bc"),
    ("failing in one project", "sales", True, "b"),
    ("a project with none", "nope", False, ""),
]


@pytest.mark.parametrize(
    ("project", "failing", "names"), [c[1:] for c in SELECTIONS], ids=[c[0] for c in SELECTIONS]
)
def test_select(project: str | None, failing: bool, names: str) -> None:
    """--project keeps one project's schedules; --failing those enabled whose last run failed."""
    chosen = select(ENTRIES, project=project, failing=failing)
    assert "".join(e.name for e in chosen) == names


def test_tally_counts_states_in_a_fixed_order() -> None:
    """Disabled wins over the last result; never run before a first run; zeros are left out."""
    assert tally(ENTRIES) == {
        "succeeded": 2,
        "failed": 1,
        "abandoned": 1,
        "never run": 1,
        "disabled": 1,
    }
    assert tally([entry("x", result="odd")]) == {"odd": 1}  # a status another program wrote


SUMMARIES = [
    ("none", 0, {}, None, "0 schedules"),
    ("one", 1, {"never run": 1}, None, "1 schedule: 1 never run"),
    ("thousands", 1200, {"succeeded": 1190, "failed": 10}, None,
     "1,200 schedules: 1,190 succeeded, 10 failed"),
    ("filtered", 3, {"succeeded": 2, "failed": 1}, 1,
     "3 schedules: 2 succeeded, 1 failed; 1 listed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("total", "states", "listed", "line"), [c[1:] for c in SUMMARIES], ids=[c[0] for c in SUMMARIES]
)
def test_render_summary(total: int, states: dict[str, int], listed: int | None, line: str) -> None:
    """One line: the total, each state's count, and how many are listed under a filter."""
    assert render_summary(total, states, listed) == line


def test_a_thousand_schedules_summarised_and_filtered(cli: Cli, database_url: str) -> None:
    """With 1,000 schedules, status counts them all in one line and --failing lists the two
    failing ones, in text and JSON, in a few seconds."""
    seed(cli, schedules=0)
    assert cli("apply").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, interval_seconds, owner) "
            "SELECT format('s%s', lpad(i::text, 4, '0')), p.id, 'interval', 3600, 'reconcile' "
            "FROM generate_series(1, 1000) AS i, cpi_projects AS p"
        )
        for name, status in (("s0007", "failed"), ("s0500", "abandoned"), ("s0900", "succeeded")):
            conn.execute(
                "WITH job AS (INSERT INTO cpi_jobs (schedule_name, status) VALUES (%s, %s) "
                "RETURNING id) UPDATE cpi_schedules SET last_job_id = (SELECT id FROM job) "
                "WHERE name = %s",
                (name, status, name),
            )
    started = time.monotonic()
    text = cli("status", "--failing")
    assert text.returncode == 0, text.stderr
    assert time.monotonic() - started < 30
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["s0007", "s0500"]
    assert (
        "1,000 schedules: 1 succeeded, 1 failed, 1 abandoned, 997 never run; 2 listed"
        in text.stdout
    )
    document = json.loads(cli("status", "--project", "sales", "-o", "json").stdout)
    assert len(document["schedules"]) == 1000
    assert document["summary"] == {
        "schedules": 1000,
        "listed": 1000,
        "states": {"succeeded": 1, "failed": 1, "abandoned": 1, "never run": 997},
    }
    none = cli("status", "--project", "marketing")
    assert none.returncode == 0
    assert none.stdout.startswith("No schedule matches.\n\n1,000 schedules:")
