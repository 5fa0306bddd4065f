"""Benchmark: ``/metrics`` of a real ``reconcile serve`` with 10,000 schedules.

The folder holds 10,000 schedules (100 files x 100, 5 projects): 9,900 daily crons spread over
the day and 100 every-minute ones whose local files match nothing, so a hundred runs start at
every minute mark, the moment scrapes used to be slowest. Before the daemon starts, each
schedule gets three jobs of history (succeeded, failed, succeeded). Once every schedule shows a
next run, ``/metrics`` is scraped once a second across two minute marks (``--seconds``). Printed:
the number of series (sample lines) and of those per schedule, the body's size, and the scrape
time (median, p95, max overall; max within 3 s after a minute mark). Target: every scrape
< 0.5 s.

    python benchmarks/bench_metrics.py [--schedules N] [--seconds S] [--database-url URL]

Without --database-url an embedded server is started in a temporary folder. With it, the role
needs CREATEDB: the benchmark runs in a database of its own (``bench_metrics``), dropped
afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from bench_serve import PROJECT, SCHEDULE, Serve, fresh_database, percentile, wait_for
from embedded import database

TARGET = 0.5
EVERY_MINUTE = 100
FILES = 100


def write_folder(work: Path, count: int) -> Path:
    """``count`` schedules in ``FILES`` files; the first ``EVERY_MINUTE`` fire every minute."""
    folder = work / "schedules.d"
    folder.mkdir()
    (work / "data").mkdir()
    per_file = max(count // FILES, 1)
    for f in range(FILES):
        project = f"p{f % 5}"
        parts = [PROJECT.format(name=project, table=f"public.{project}")] if f < 5 else []
        for i in range(f * per_file, min((f + 1) * per_file, count)):
            cron = "* * * * *" if i < EVERY_MINUTE else f"{i % 60} {i // 60 % 24} * * *"
            parts.append(SCHEDULE.format(name=f"s{i:05d}", project=project, cron=cron))
        if parts:
            (folder / f"f{f:03d}.yaml").write_text("---\n".join(parts))
    return folder


def add_history(url: str, count: int) -> None:
    """Three ended jobs per schedule, the newest a success, as runs leave them."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO cpi_jobs (schedule_name, trigger, status, scheduled_for, started_at, "
            "finished_at) "
            "SELECT format('s%%s', lpad(i::text, 5, '0')), 'schedule', "
            "  (ARRAY['succeeded', 'failed', 'succeeded'])[k], now() - k * interval '1 day', "
            "  now() - k * interval '1 day', now() - k * interval '1 day' + interval '2 s' "
            "FROM generate_series(0, %s - 1) i, generate_series(1, 3) k",
            (count,),
        )


def scrape(serve: Serve) -> tuple[float, str]:
    began = time.perf_counter()
    status, body = serve.get("/metrics")
    elapsed = time.perf_counter() - began
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return elapsed, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=130)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        work = Path(tmp)
        with (
            database(args.database_url, work) as admin,
            fresh_database(admin, "bench_metrics") as url,
        ):
            return run(work, url, args.schedules, args.seconds)


def run(work: Path, url: str, count: int, seconds: float) -> int:
    folder = write_folder(work, count)
    with psycopg.connect(url) as conn:
        for p in range(5):
            conn.execute(f"CREATE TABLE public.p{p} (id int)")
    serve = Serve(work, url, folder, "serve")
    try:
        wait_for(serve.ready, timeout=120, every=0.5, what="/readyz")
        add_history(url, count)
        wait_for(lambda: len(serve.next_runs()) >= count, timeout=120, every=1,
                 what="every schedule's next run")  # fmt: skip
        times: list[tuple[float, float]] = []  # (seconds after the minute mark, scrape time)
        body = ""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            mark = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
            elapsed, body = scrape(serve)
            times.append((mark, elapsed))
            time.sleep(max(0.0, 1.0 - elapsed))
        samples = [line for line in body.splitlines() if line and not line.startswith("#")]
        per_schedule = [s for s in samples if 'schedule="' in s]
        jobs = psycopg.connect(url).execute("SELECT count(*) FROM cpi_jobs").fetchone()
        code, _ = serve.stop()
    finally:
        if serve.process.poll() is None:
            serve.stop()
    values = [t for _, t in times]
    at_mark = [t for m, t in times if m < 3.0]
    print(f"schedules                      {count:>9,}")
    print(f"jobs in cpi_jobs at the end    {jobs[0] if jobs else 0:>9,}")
    print(f"series (sample lines)          {len(samples):>9,}")
    print(f"  of them per schedule         {len(per_schedule):>9,}  "
          f"({len(per_schedule) / count:.2f} per schedule)")  # fmt: skip
    print(f"body                           {len(body) / 1e6:>9.2f} MB")
    print(f"scrapes                        {len(values):>9}  ({len(at_mark)} within 3 s after a "
          "minute mark)")  # fmt: skip
    print(f"scrape time median             {statistics.median(values):>9.3f} s")
    print(f"scrape time p95                {percentile(values, 95):>9.3f} s")
    worst = max(values)
    print(f"scrape time max                {worst:>9.3f} s  target < {TARGET} s  "
          f"{'PASS' if worst < TARGET else 'FAIL'}")  # fmt: skip
    if at_mark:
        print(f"scrape time max at a minute    {max(at_mark):>9.3f} s")
    print(f"serve exited                   {code:>9}")
    return 0 if worst < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
