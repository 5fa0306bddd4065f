"""``/metrics``: counters at 0 from the start, per-schedule gauges read from the database (the
same on every replica, gone with their schedule), process metrics, a config error's start kept
across reloads, and a flat cardinality with a fast scrape at 10,000 schedules."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until
from prometheus_client.parser import text_string_to_metric_families

from reconciler.daemon.metrics import RESULTS, TRIGGERS, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PER_SCHEDULE = (
    "reconcile_last_success_timestamp_seconds",
    "reconcile_last_run_status",
    "reconcile_schedule_period_seconds",
    "reconcile_next_run_timestamp_seconds",
)


def samples(body: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def of(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def per_schedule(found: Samples) -> Samples:
    return {key: value for key, value in found.items() if key[0] in PER_SCHEDULE}


def _env(cli: Cli) -> dict[str, str]:
    # A follower learns of the leader's first load at a resync: the apply's notice is sent at
    # its commit, before the load is on record.
    return {**cli.env, "RECONCILER_RESYNC_SECONDS": "2"}


def scrape(daemon: Daemon) -> Samples:
    status, body = daemon.get("/metrics")
    assert status == 200, body
    return samples(body)


def test_every_known_label_combination_is_exported_at_zero_from_the_start() -> None:
    """Before any run: each trigger and result, each folder load result, at 0; the per-schedule
    families are declared (empty without a database) and the process metrics are there."""
    found = samples(Metrics().render().decode())
    for trigger in TRIGGERS:
        for result in RESULTS:
            expected = None if (trigger, result) == ("manual", "missed") else 0.0
            assert of(found, "reconcile_runs_total", trigger=trigger, result=result) == expected
    for result in ("succeeded", "failed"):
        assert of(found, "reconcile_reconcile_passes_total", result=result) == 0.0
    assert of(found, "reconcile_rows_imported_total") == 0.0
    assert of(found, "reconcile_run_duration_seconds_count") == 0.0
    assert (of(found, "process_resident_memory_bytes") or 0) > 0
    assert of(found, "process_open_fds") is not None
    assert not per_schedule(found)


@pytest.fixture
def folder(cli: Cli) -> Path:
    """A project, a daily cron and an hourly interval; data/ beside, public.sales created."""
    hourly = schedule_yaml("hourly").replace('cron: "0 0 1 1 *"', "interval: 3600")
    documents = project_yaml() + schedule_yaml("nightly", cron="0 3 * * *") + hourly
    return sales_folder(cli.env["RECONCILER_DATABASE_URL"], cli.cwd, documents)


def _history(url: str) -> datetime:
    """nightly: a success two days ago, then a failure; the success's end."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO cpi_jobs (schedule_name, trigger, status, scheduled_for, started_at, "
            "finished_at) VALUES "
            "('nightly', 'schedule', 'succeeded', now() - interval '2 days', "
            " now() - interval '2 days', now() - interval '2 days' + interval '3 s'), "
            "('nightly', 'schedule', 'failed', now() - interval '1 day', "
            " now() - interval '1 day', now() - interval '1 day' + interval '1 s') "
            "RETURNING finished_at"
        ).fetchall()
    finished: datetime = row[0][0]
    return finished


def test_replicas_export_the_schedules_as_the_database_holds_them(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """Two replicas: counters at 0 before any run, the same per-schedule values (from the rows,
    not from what each ran), run slots and process metrics; a deleted schedule's series go."""
    succeeded = _history(database_url)
    with Daemon(cli.cwd, _env(cli), name="a") as a, Daemon(cli.cwd, _env(cli), name="b") as b:
        a.wait_ready()
        b.wait_ready()
        for daemon in (a, b):
            wait_until(
                lambda d=daemon: len(  # type: ignore[misc]
                    [k for k in scrape(d) if k[0] == "reconcile_next_run_timestamp_seconds"]
                ) == 2,
                timeout=20, what="both schedules' next runs",
            )  # fmt: skip
        first, second = scrape(a), scrape(b)
        assert per_schedule(first) == per_schedule(second)
        values = per_schedule(first)
        assert values == {
            ("reconcile_last_success_timestamp_seconds", frozenset({("schedule", "nightly")})):
                succeeded.timestamp(),
            ("reconcile_last_run_status",
             frozenset({("schedule", "nightly"), ("status", "failed")})): 1.0,
            ("reconcile_schedule_period_seconds", frozenset({("schedule", "nightly")})): 86400.0,
            ("reconcile_schedule_period_seconds", frozenset({("schedule", "hourly")})): 3600.0,
            ("reconcile_next_run_timestamp_seconds", frozenset({("schedule", "nightly")})):
                one(database_url, "SELECT next_run_at FROM cpi_schedules WHERE name = 'nightly'")
                .timestamp(),
            ("reconcile_next_run_timestamp_seconds", frozenset({("schedule", "hourly")})):
                one(database_url, "SELECT next_run_at FROM cpi_schedules WHERE name = 'hourly'")
                .timestamp(),
        }  # fmt: skip
        for found in (first, second):
            runs = {k: v for k, v in found.items() if k[0] == "reconcile_runs_total"}
            assert len(runs) == 7
            assert set(runs.values()) == {0.0}
            assert of(found, "reconcile_run_slots") == 8
            assert of(found, "reconcile_run_slots_busy") == 0
            assert of(found, "reconcile_runs_queued") == 0
            assert (of(found, "process_resident_memory_bytes") or 0) > 0
            assert (of(found, "process_open_fds") or 0) > 0
            assert (of(found, "process_cpu_seconds_total") or 0) > 0

        (folder / "sales.yaml").write_text(
            project_yaml() + schedule_yaml("nightly", cron="0 3 * * *")
        )
        for daemon in (a, b):
            wait_until(
                lambda d=daemon: not any(  # type: ignore[misc]
                    ("schedule", "hourly") in k[1] for k in scrape(d)
                ),
                timeout=30, what="the deleted schedule's series gone",
            )  # fmt: skip
        assert per_schedule(scrape(a)) == per_schedule(scrape(b))
        assert a.stop() == 0
        assert b.stop() == 0


def test_a_config_error_keeps_the_time_it_began_across_reloads(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """A folder that fails to load: every replica exports since when, unchanged by the failed
    reloads that follow; the series goes once the folder applies again."""
    since = "reconcile_config_error_since_timestamp_seconds"
    failed = ("reconcile_reconcile_passes_total", frozenset({("result", "failed")}))
    with Daemon(cli.cwd, _env(cli), name="a") as a, Daemon(cli.cwd, _env(cli), name="b") as b:
        a.wait_ready()
        b.wait_ready()
        assert of(scrape(a), since) is None
        good = (folder / "sales.yaml").read_text()
        (folder / "sales.yaml").write_text(good + "  bogus: 1\n")
        began = wait_until(lambda: of(scrape(a), since), timeout=20, what="the error's start")
        assert wait_until(lambda: of(scrape(b), since), timeout=20) == began
        loads = sum(scrape(d).get(failed, 0) for d in (a, b))
        for _ in range(2):
            time.sleep(1.1)  # a later reload would record a later time
            for daemon in (a, b):
                daemon.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda n=loads: sum(scrape(d).get(failed, 0) for d in (a, b)) > n,  # type: ignore[misc]
                timeout=20, what="a failed reload",
            )  # fmt: skip
            loads = sum(scrape(d).get(failed, 0) for d in (a, b))
        assert of(scrape(a), since) == of(scrape(b), since) == began
        assert began <= datetime.now(UTC).timestamp() - 2
        (folder / "sales.yaml").write_text(good)
        for daemon in (a, b):
            wait_until(
                lambda d=daemon: of(scrape(d), since) is None,  # type: ignore[misc]
                timeout=20, what="the error cleared",
            )  # fmt: skip
        assert a.stop() == 0
        assert b.stop() == 0


def test_ten_thousand_schedules_keep_a_few_series_each_and_a_fast_scrape(
    database_url: str,
) -> None:
    """10,000 schedules with three runs each: at most four series per schedule (no histogram
    or counter per schedule) and a scrape that does not grow out of bounds (a query per
    schedule would take many seconds). The half-second target is bench_metrics.py's, measured
    on a real daemon: a test shares the machine with the rest of the suite."""
    from import_rows import add_project

    add_project(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, cron_expression, "
            "interval_seconds, owner, next_run_at) "
            "SELECT format('s%s', i), p.id, CASE WHEN i % 2 = 0 THEN 'cron' ELSE 'interval' END, "
            "  format('%s %s * * *', i % 60, i / 60 % 24), 3600 * (1 + i % 24), 'reconcile', "
            "  now() + interval '1 hour' "
            "FROM generate_series(0, 9999) i, cpi_projects p"
        )
        conn.execute(
            "INSERT INTO cpi_jobs (schedule_name, trigger, status, scheduled_for, started_at, "
            "finished_at) "
            "SELECT format('s%s', i), 'schedule', (ARRAY['succeeded', 'failed', 'missed'])[k], "
            "  now() - k * interval '1 hour', now() - k * interval '1 hour', "
            "  now() - k * interval '1 hour' + interval '1 s' "
            "FROM generate_series(0, 9999) i, generate_series(1, 3) k"
        )
    metrics = Metrics()
    metrics.watch_schedules(url=database_url, owner="reconcile")
    elapsed = []
    try:
        metrics.render()  # the first: connects, and computes each cron's period once
        for _ in range(3):  # the best of three: a shared machine's hiccup is not its cost
            time.sleep(1.1)  # past the reading that scrapes within a second share
            began = time.perf_counter()
            body = metrics.render()
            elapsed.append(time.perf_counter() - began)
    finally:
        metrics.close()
    found = samples(body.decode())
    counts = {n: sum(1 for k in found if k[0] == n) for n in PER_SCHEDULE}
    assert counts == dict.fromkeys(PER_SCHEDULE, 10_000)
    assert len(found) - 40_000 < 120  # the fixed series: counters, histograms, process
    assert min(elapsed) < 2.0, f"a scrape of 10,000 schedules took {min(elapsed):.3f} s"
