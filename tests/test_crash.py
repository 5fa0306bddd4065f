"""A run killed with SIGKILL in the middle of a COPY, then run again: every row exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
from conftest import Cli
from import_rows import add_project, add_schedule, count, jobs

NAME = "daily-sales-import"
ROWS = 1_000_000


def _big_csv(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.write("sale_id,sold_at,amount\n")
        for start in range(0, ROWS, 100_000):
            out.write(
                "".join(f"{i},2026-11-01,{i % 997}.25\n" for i in range(start, start + 100_000))
            )


def _wait_for(conn: psycopg.Connection, query: str, *, timeout: float = 30) -> tuple[object, ...]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(query).fetchone()
        if row is not None:
            return tuple(row)
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {query}")


def test_a_killed_run_leaves_nothing_and_the_rerun_loads_once(cli: Cli, database_url: str) -> None:
    """SIGKILL mid-COPY rolls the file back; the rerun abandons the dead job and loads it once."""
    with psycopg.connect(database_url) as conn:
        # No key: a file loaded twice would show as duplicate rows instead of failing.
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
    add_project(database_url)
    add_schedule(database_url, local_files=["../data/sales_big.csv"])
    _big_csv(cli.cwd / "data/sales_big.csv")

    with psycopg.connect(database_url, autocommit=True) as watch:
        process = cli.popen("run", NAME)
        try:
            (processed,) = _wait_for(
                watch,
                "SELECT tuples_processed FROM pg_stat_progress_copy "
                "WHERE relid = 'public.sales'::regclass AND tuples_processed > 0",
            )
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=30)
            assert process.stdout is not None
            assert process.stderr is not None
            process.stdout.close()
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        assert 0 < int(processed) < ROWS  # killed while the COPY was really running
        # PostgreSQL notices the closed sockets, ends the sessions and rolls back.
        _wait_for(
            watch,
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid())",
        )
    assert count(database_url) == 0
    assert count(database_url, "cpi_imported_files") == 0
    assert [j["status"] for j in jobs(database_url)] == ["running"]

    rerun = cli("run", NAME)
    assert rerun.returncode == 0, rerun.stderr
    assert count(database_url) == ROWS
    dead, good = jobs(database_url)
    assert (dead["status"], good["status"]) == ("abandoned", "succeeded")
    assert dead["rows_imported"] == 0  # what landed, not what the heartbeat had counted
    assert dead["finished_at"] is not None
    assert good["rows_imported"] == ROWS

    again = cli("run", NAME)
    assert again.returncode == 0, again.stderr
    assert count(database_url) == ROWS
    last = jobs(database_url)[-1]
    assert (last["files"], last["skipped_files"]) == ([], 1)  # skipped unread: counted
