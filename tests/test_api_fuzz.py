"""The REST API fuzzed from its own OpenAPI document with schemathesis, on real PostgreSQL.

Every operation gets generated valid and invalid requests (paths, filters, pages, headers,
bodies, methods the document does not list); every answer must be documented, JSON where the
document says so, never a 500, and 401 without the key. Bounded to keep the run short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from import_rows import SALES, add_project, add_schedule, write_sales
from schemathesis.specs.openapi.checks import positive_data_acceptance

from reconciler.daemon.api import Backend, attach
from reconciler.daemon.http import build_app
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.working import Runner
from reconciler.settings import load_settings
from reconciler.store.pooling import ReadPool

KEY = "fuzz-key-0123456789"


@pytest.fixture
def api_schema(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """The app over the test's database (a few schedules and jobs), loaded as schemathesis sees
    it: from its own ``/openapi.json``."""
    (tmp_path / "schedules.d").mkdir()
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url)
    add_schedule(database_url, "daily-sales-import", local_files=["../data/sales_*.csv"])
    add_schedule(database_url, "legacy", enabled=False)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO cpi_jobs (schedule_name, trigger, status, started_at, finished_at) "
            "SELECT 'daily-sales-import', 'schedule', s, now(), now() "
            "FROM unnest(ARRAY['succeeded', 'failed', 'missed']) s"
        )
    write_sales(tmp_path / "data" / "sales_1.csv", range(10))
    config = load_settings(
        schedules_dir=str(tmp_path / "schedules.d"),
        database_url=database_url,
        state_dir=str(tmp_path / "state"),
        environ={
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_API_KEY": KEY,
            "RECONCILER_SETTLE_SECONDS": "0",
        },
    )
    metrics = Metrics()
    metrics.readiness.set(database=True, scheduler=True, config_known=True)  # a running daemon
    runner = Runner(config, metrics, url=database_url, workers=2)
    pool = ReadPool(database_url, size=2)
    app = build_app(metrics, api_key=KEY)
    attach(app, Backend(pool, runner, config))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        runner.stop(30)
        pool.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_document(case: Any) -> None:
    """Each operation's answers conform to the document: statuses, content types, bodies."""
    excluded = []
    if case.operation.method.upper() in ("PUT", "DELETE") or case.path in (
        "/schedules/{name}/enable",
        "/schedules/{name}/disable",
    ):
        excluded.append(positive_data_acceptance)  # a valid write is refused: managed in Git
    if case.method.upper() == "POST" and case.path == "/schedules":
        excluded.append(positive_data_acceptance)
    case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=excluded)
