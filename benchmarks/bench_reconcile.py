"""Benchmark: plan and apply with many schedules against real PostgreSQL.

Targets (10,000 schedules): a first apply creating all of them under 15 s; a plan against a
database holding them under 3 s; a no-change apply under 3 s with a constant number of SQL round
trips (the same count for 1,000 and 10,000 schedules).

    python benchmarks/bench_reconcile.py [--schedules 10000] [--database-url URL]

Without --database-url an embedded server is started in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from embedded import database

from reconciler.settings import load_settings
from reconciler.store.applying import apply_plan
from reconciler.store.migrating import migrate

PROJECT = """apiVersion: reconciler/v1
kind: Project
metadata: {{name: project-{i}}}
spec:
  target: {{table: public.sales_{i}}}
"""
SCHEDULE = """apiVersion: reconciler/v1
kind: Schedule
metadata: {{name: schedule-{i}}}
spec:
  project: project-{p}
  cron: "{m} {h} * * *"
  timezone: Europe/Berlin
  callback_url: https://hooks.example.com/{i}
"""


class CountingConnection(psycopg.Connection[Any]):
    """A connection that counts the statements it sends (each one is a round trip here)."""

    statements = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        type(self).statements += 1
        return super().execute(*args, **kwargs)


def write_folder(folder: Path, schedules: int, files: int) -> None:
    folder.mkdir(parents=True)
    per_file = max(1, schedules // files)
    projects = max(1, files // 10)
    for p in range(projects):
        (folder / f"project-{p}.yaml").write_text(PROJECT.format(i=p))
    for f in range(files):
        docs = [
            SCHEDULE.format(i=i, p=i % projects, m=i % 60, h=i % 24)
            for i in range(f * per_file, min(schedules, (f + 1) * per_file))
        ]
        (folder / f"schedules-{f:04}.yaml").write_text("---\n".join(docs))


def cli(url: str, folder: Path, *args: str) -> float:
    env = {
        **os.environ,
        "RECONCILER_DATABASE_URL": url,
        "RECONCILER_SCHEDULES_DIR": str(folder),
        "RECONCILER_LOG_LEVEL": "warning",
    }
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "reconciler", *args], env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def no_change_round_trips(url: str, folder: Path) -> int:
    from reconciler.reading import load_desired

    settings = load_settings(schedules_dir=str(folder), environ={})
    desired = load_desired(settings.schedules_dir, owner=settings.owner)
    with CountingConnection.connect(url) as conn:
        CountingConnection.statements = 0
        plan = apply_plan(conn, desired, owner=settings.owner)
        assert plan.empty, "expected a no-change apply"
        return CountingConnection.statements


def run(url: str, schedules: int, work: Path) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS cpi_imported_files, cpi_jobs, cpi_schedules, cpi_projects CASCADE"
        )
    with psycopg.connect(url) as conn:
        migrate(conn)
        conn.commit()
    folder = work / f"s{schedules}"
    write_folder(folder, schedules, max(1, schedules // 10))
    return {
        "validate_s": cli(url, folder, "validate", str(folder)),
        "first_apply_s": cli(url, folder, "apply", "--max-deletes", "0"),
        "plan_s": cli(url, folder, "plan"),
        "no_change_apply_s": cli(url, folder, "apply"),
        "round_trips": no_change_round_trips(url, folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.database_url, Path(tmp)) as url:
        work = Path(tmp)
        small = run(url, max(1, args.schedules // 10), work)
        big = run(url, args.schedules, work)
        print(f"{'':24}{args.schedules // 10:>10}{args.schedules:>10}   target")
        targets = {
            "first_apply_s": "< 15 s",
            "plan_s": "< 3 s",
            "no_change_apply_s": "< 3 s",
            "round_trips": "constant",
            "validate_s": "",
        }
        for key in small:
            print(f"{key:24}{small[key]:>10.2f}{big[key]:>10.2f}   {targets[key]}")


if __name__ == "__main__":
    main()
