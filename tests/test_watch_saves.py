"""The daemon never acts on a half-written folder: editors' saves and re-created folders.

A real ``reconcile serve`` on ``cases/editor-saves-and-folders``, saved the ways editors and
copies do: vim's rename-then-write, an in-place truncate-then-write, the folder re-created file
by file. No schedule is ever deleted or re-created (ids, anchors, next runs, statistics and the
jobs' links stay), and a real edit still lands within a couple of seconds. The settle decision
itself is a pure function, tested here with made-up times.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, wait_until

from reconciler.model.settling import Read, digest, observe, settle

CASE = Path(__file__).parent / "cases" / "editor-saves-and-folders"
DELETE_SETTLE = 3  # seconds, in these tests: longer than any save below, short enough to wait out
SETTLE, DELETES = 1.0, 10.0


# The decision, with made-up times.


@pytest.mark.parametrize(
    ("since", "now", "deletes", "expected"),
    [
        (100.0, 100.0, False, 101.0),  # just read: read again after the settle
        (100.0, 100.9, False, 101.0),
        (100.0, 101.0, False, None),  # read the same across the settle: apply
        (100.0, 101.0, True, 110.0),  # a delete waits for the delete settle, then a new look
        (100.0, 109.9, True, 110.0),
        (100.0, 110.0, True, None),
        (100.0, 500.0, True, None),  # unchanged for long: a drift's delete goes at once
    ],
)
def test_settle_decides_from_how_long_the_folder_has_read_the_same(
    since: float, now: float, deletes: bool, expected: float | None
) -> None:
    """Apply once the folder has read the same for the settle (the delete settle for a delete);
    else the time to read it again."""
    read = Read("d", since)
    assert settle(
        read, now=now, deletes=deletes, settle_seconds=SETTLE, delete_seconds=DELETES
    ) == (expected)


def test_a_delete_settle_shorter_than_the_settle_waits_the_settle() -> None:
    """A delete never goes before a create would: a delete settle of 0 means the short one."""
    read = Read("d", 100.0)
    assert settle(read, now=100.5, deletes=True, settle_seconds=1.0, delete_seconds=0) == 101.0


@pytest.mark.parametrize(
    ("reads", "since"),
    [
        ([("a", 10.0, 0.0)], 10.0),  # the first read
        ([("a", 10.0, 0.0), ("a", 11.0, 9.5)], 10.0),  # the same, no change since: counts on
        ([("a", 10.0, 0.0), ("b", 10.3, 10.2)], 10.3),  # changed: counts from this read
        ([("a", 10.0, 0.0), ("b", 10.3, 10.2), ("a", 10.6, 10.5)], 10.6),  # changed back
        ([("a", 10.0, 0.0), ("a", 10.8, 10.5)], 10.5),  # a change reported between equal reads
        ([("a", 10.0, 0.0), ("a", 10.8, 12.0)], 10.8),  # a clock that disagrees: never ahead
    ],
)
def test_observe_counts_from_the_last_change(
    reads: list[tuple[str, float, float]], since: float
) -> None:
    """A folder reads the same since its last read with other content, or its last reported
    change if that is later (it may have changed and changed back unseen)."""
    last: Read | None = None
    for content, now, changed_at in reads:
        last = observe(last, content, now=now, changed_at=changed_at)
    assert last == Read(reads[-1][0], since)


@pytest.mark.parametrize(
    ("one_", "other", "same"),
    [
        ([("a.yaml", b"x")], [("a.yaml", b"x")], True),
        ([("a.yaml", b"x")], [("a.yaml", b"")], False),  # truncated
        ([("a.yaml", b"x")], [("b.yaml", b"x")], False),  # renamed
        ([("a.yaml", b"xb.yaml")], [("a.yaml", b"x"), ("b.yaml", b"")], False),  # no ambiguity
        ([], "schedules folder does not exist", False),
    ],
)
def test_digest_tells_every_difference(
    one_: list[tuple[str, bytes]], other: list[tuple[str, bytes]] | str, same: bool
) -> None:
    """Paths and bytes both count, and a folder that cannot be read differs from an empty one."""
    assert (digest(one_) == digest(other)) is same


# A real daemon, real saves.


def _state(url: str) -> dict[str, Any]:
    """What a delete and re-create would lose: ids, timing, statistics and the jobs' links.

    ``shipments-daily``'s anchor and next run are left out: its cron is what the saves edit.
    """
    with psycopg.connect(url) as conn:
        schedules = conn.execute(
            "SELECT name, id, project_id, total_runs, successful_runs, last_job_id, "
            "CASE WHEN name <> 'shipments-daily' THEN interval_anchor END, "
            "CASE WHEN name <> 'shipments-daily' THEN next_run_at END "
            "FROM cpi_schedules ORDER BY name"
        ).fetchall()
        projects = conn.execute("SELECT name, id FROM cpi_projects ORDER BY name").fetchall()
        jobs = conn.execute("SELECT id, schedule_id FROM cpi_jobs ORDER BY id").fetchall()
    return {"schedules": schedules, "projects": projects, "jobs": jobs}


def _cron(url: str) -> str | None:
    return one(url, "SELECT cron_expression FROM cpi_schedules WHERE name = 'shipments-daily'")


_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def _next_run(url: str) -> Any:
    return one(url, "SELECT next_run_at FROM cpi_schedules WHERE name = 'shipments-daily'")


def _write(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _vim_save(folder: Path, text: str, gap: float) -> None:
    """vim with backupcopy=no on a slow disk: probe file, rename to a backup, gap, write."""
    name = folder / "shipments.yaml"
    swap = folder / ".shipments.yaml.swp"
    swap.write_bytes(b"b0VIM 9.0")
    probe = folder / "4913"
    probe.write_bytes(b"")
    probe.unlink()
    name.rename(folder / "shipments.yaml~")
    time.sleep(gap)
    _write(name, text)
    (folder / "shipments.yaml~").unlink()
    swap.unlink()


@pytest.fixture
def case(cli: Cli) -> Path:
    """The case's folder and data, its target table, applied once."""
    folder = cli.cwd / "schedules.d"
    for sub in ("schedules.d", "data"):
        (cli.cwd / sub).mkdir(exist_ok=True)
        for source in sorted((CASE / sub).iterdir()):
            (cli.cwd / sub / source.name).write_bytes(source.read_bytes())
    made = cli("sql", "-f", str(CASE / "tables.sql"))
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    return folder


def test_editor_saves_and_a_recreated_folder_never_delete_a_schedule(
    cli: Cli, case: Path, database_url: str
) -> None:
    """vim's rename-then-write (gaps of 120 ms to 1 s), a truncate-pause-write and a folder
    re-created file by file keep every id, anchor, next run, statistic and job link; the cron
    edit in the vim save lands within a couple of seconds."""
    env = {**cli.env, "RECONCILER_DELETE_SETTLE_SECONDS": str(DELETE_SETTLE)}
    with Daemon(cli.cwd, env) as daemon:
        daemon.wait_ready()
        ran = cli("run", "shipments-2h")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        before = _state(database_url)
        assert [s[3] for s in before["schedules"]] == [0, 1, 0]  # returns, shipments-2h, -daily
        assert len(before["jobs"]) == 1
        assert before["jobs"][0][1] == before["schedules"][1][1]
        original = (case / "shipments.yaml").read_text()
        edited = original.replace('"0 6 * * *"', '"5 6 * * *"')
        assert edited != original

        for gap, text, cron in [
            (0.12, edited, "5 6 * * *"),
            (0.2, original, "0 6 * * *"),
            (0.3, edited, "5 6 * * *"),
            (1.0, original, "0 6 * * *"),
            (1.0, edited, "5 6 * * *"),
        ]:
            _vim_save(case, text, gap)
            saved = time.monotonic()
            wait_until(lambda c=cron: _cron(database_url) == c, timeout=3, what=f"{gap} s gap")
            assert time.monotonic() - saved < 3
            # The apply clears a retimed schedule's next run; the timer's resync sets it anew.
            minute = int(cron.split()[0])
            wait_until(
                lambda m=minute: (_next_run(database_url) or _NEVER).minute == m,
                timeout=10, what=f"next run at minute {minute}",
            )  # fmt: skip
            assert _state(database_url) == before, f"after vim's save with a {gap} s gap"
        time.sleep(DELETE_SETTLE + 1.5)  # a delete held back would have gone by now
        assert _state(database_url) == before

        text = (case / "shipments.yaml").read_text()
        with (case / "shipments.yaml").open("w") as handle:  # truncated, then written 0.3 s later
            handle.flush()
            time.sleep(0.3)
            handle.write(text)
        time.sleep(DELETE_SETTLE + 1.5)
        assert _state(database_url) == before, "after the truncate-pause-write"

        kept = cli.cwd / "kept"
        shutil.copytree(case, kept)
        shutil.rmtree(case)
        time.sleep(3)
        case.mkdir()
        for source in sorted(kept.iterdir()):
            shutil.copy(source, case / source.name)
            time.sleep(0.3)
        time.sleep(DELETE_SETTLE + 1.5)
        assert _state(database_url) == before, "after the folder was re-created"
        assert _cron(database_url) == "5 6 * * *"
        assert daemon.metric("reconcile_config_load_ok") == 1
        assert daemon.stop() == 0


def test_a_real_delete_waits_for_the_delete_settle_and_is_checked_again(
    cli: Cli, case: Path, database_url: str
) -> None:
    """A file removed for good is deleted once the folder has read the same for the delete
    settle, not before; one put back within it deletes nothing."""
    env = {**cli.env, "RECONCILER_DELETE_SETTLE_SECONDS": str(DELETE_SETTLE)}
    count = "SELECT count(*) FROM cpi_schedules WHERE name = 'returns'"
    with Daemon(cli.cwd, env) as daemon:
        daemon.wait_ready()
        before = _state(database_url)
        text = (case / "returns.yaml").read_bytes()
        (case / "returns.yaml").unlink()
        time.sleep(DELETE_SETTLE - 1)
        (case / "returns.yaml").write_bytes(text)
        time.sleep(DELETE_SETTLE + 1.5)
        assert _state(database_url) == before  # put back in time: nothing deleted

        (case / "returns.yaml").unlink()
        gone = time.monotonic()
        time.sleep(DELETE_SETTLE - 0.5)
        assert one(database_url, count) == 1  # still waiting
        wait_until(lambda: one(database_url, count) == 0, timeout=10, what="the delete")
        assert time.monotonic() - gone >= DELETE_SETTLE
        after = _state(database_url)
        assert after["schedules"] == [s for s in before["schedules"] if s[0] != "returns"]
        assert daemon.stop() == 0
    held = [e for e in daemon.events() if e.get("reason") == "the plan deletes 2 row(s)"]
    assert len(held) == 2, daemon.log()  # said once each time, with when it looks again
