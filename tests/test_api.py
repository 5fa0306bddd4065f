"""The daemon's REST API in process, on real PostgreSQL and real files: reads, runs, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from import_rows import SALES, add_project, add_schedule, count, write_sales

from reconciler.daemon.api import Backend, attach
from reconciler.daemon.http import HttpServer, build_app
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.working import Runner
from reconciler.imports.runs.running import claim_run
from reconciler.settings import Settings, load_settings
from reconciler.store.pooling import ReadPool

KEY = "test-key-0123456789"
AUTH: dict[str, Any] = {"X-API-Key": KEY}
NAME = "daily-sales-import"
ZERO = "00000000-0000-0000-0000-000000000000"
OPENAPI = Path(__file__).parent.parent / "schema" / "openapi.json"

if TYPE_CHECKING:
    from fastapi import FastAPI


@contextmanager
def serving(app: FastAPI) -> Iterator[httpx.Client]:
    """``app`` on uvicorn on a free loopback port, as the daemon serves it, and a client."""
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    try:
        with httpx.Client(base_url=f"http://{server.address}", timeout=30) as client:
            yield client
    finally:
        server.stop()


def _settings(folder: Path, url: str) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"),
        database_url=url,
        state_dir=str(folder / "state"),
        environ={
            "RECONCILER_LOG_FORMAT": "json",
            "RECONCILER_API_KEY": KEY,
            "RECONCILER_SETTLE_SECONDS": "0",
        },
    )


@pytest.fixture
def folder(tmp_path: Path, database_url: str) -> Path:
    """Two projects, three schedules (one written by the original API), one CSV file."""
    (tmp_path / "schedules.d").mkdir()
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url)
    add_project(database_url, "customer_project", target={"table": "public.customers"})
    add_schedule(database_url, NAME, local_files=["../data/sales_*.csv"])
    add_schedule(database_url, "hourly-customers", project="customer_project", enabled=False)
    add_schedule(database_url, "legacy-import", project="customer_project")
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET source_line = 12 WHERE name = %s", (NAME,))
        conn.execute("UPDATE cpi_schedules SET owner = NULL, source_file = NULL, "
                     "sftp_override = '{\"password\": \"hunter2\", \"host\": \"h\"}' "
                     "WHERE name = 'legacy-import'")  # fmt: skip
    write_sales(tmp_path / "data" / "sales_1.csv", range(100))
    return tmp_path


@pytest.fixture
def served(folder: Path, database_url: str) -> Iterator[tuple[httpx.Client, Runner]]:
    """The app with the API attached to the test's database and a runner of two workers."""
    settings = _settings(folder, database_url)
    metrics = Metrics()
    runner = Runner(settings, metrics, url=database_url, workers=2)
    pool = ReadPool(database_url, size=2)
    app = build_app(metrics, api_key=KEY)
    attach(app, Backend(pool, runner, settings))
    try:
        with serving(app) as client:
            yield client, runner
    finally:
        runner.stop(30)
        pool.close()


@pytest.fixture
def client(served: tuple[httpx.Client, Runner]) -> httpx.Client:
    return served[0]


def _wait_for_end(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running")


def test_without_a_key_the_api_is_off_and_health_stays_open() -> None:
    """No RECONCILER_API_KEY: /schedules does not exist; /healthz answers."""
    with serving(build_app(Metrics())) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/schedules", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": "test-key-"},
        {"X-API-Key": KEY + "0"},
        {"X-API-Key": b"\xff" * 20},
    ],
)
def test_a_missing_or_wrong_key_is_401(client: httpx.Client, headers: dict[str, Any]) -> None:
    """Every API route needs the key; the answer is JSON saying which header to send."""
    for method, path in [("GET", "/schedules"), ("POST", f"/schedules/{NAME}/run")]:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert "X-API-Key" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_before_the_database_is_ready_the_api_answers_503() -> None:
    """The server starts before the database answers: 503 with Retry-After, in JSON."""
    with serving(build_app(Metrics(), api_key=KEY)) as client:
        response = client.get("/schedules", headers=AUTH)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "not ready" in response.json()["detail"]
        assert client.get("/schedules").status_code == 401  # the key is still checked first


def test_list_in_the_original_shape_with_filters_and_pages(client: httpx.Client) -> None:
    """GET /schedules: the original ScheduleListResponse shape, plus the reconciler's fields."""
    body = client.get("/schedules", headers=AUTH).json()
    assert [s["name"] for s in body["schedules"]] == [NAME, "hourly-customers", "legacy-import"]
    assert (body["total"], body["limit"], body["offset"]) == (3, 100, 0)
    first = body["schedules"][0]
    assert first["project_name"] == "sales_project"
    assert (first["total_runs"], first["successful_runs"], first["failed_runs"]) == (0, 0, 0)
    where = (first["source_file"], first["source_line"], first["owner"])
    assert where == ("sales.yaml", 12, "reconcile")
    assert first["managed"] is True
    assert first["local_files"] == ["../data/sales_*.csv"]
    for key in ("id", "schedule_type", "cron_expression", "interval_seconds", "timezone",
                "enabled", "callback_url", "sftp_override", "last_run_at", "next_run_at",
                "last_job_id", "created_at", "updated_at", "misfire_grace_seconds",
                "timeout_seconds", "retries", "retry_backoff_seconds"):  # fmt: skip
        assert key in first

    def names(query: str) -> list[str]:
        response = client.get(f"/schedules?{query}", headers=AUTH)
        assert response.status_code == 200, response.text
        return [s["name"] for s in response.json()["schedules"]]

    assert names("project=customer_project&enabled=true") == ["legacy-import"]
    assert names("project=customer_project&enabled=false") == ["hourly-customers"]
    assert names("project=nobody") == []
    assert names("project=x%00y") == []
    assert names("project=' OR '1'='1") == []
    page = client.get("/schedules?limit=1&offset=1", headers=AUTH).json()
    assert ([s["name"] for s in page["schedules"]], page["total"]) == (["hourly-customers"], 3)
    assert client.get("/schedules?offset=10", headers=AUTH).json()["total"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "offset=-1",
        "offset=99999999999",
        "enabled=maybe",
        "enable=true",  # a typo is refused rather than ignored (which would list everything)
    ],
)
def test_bad_query_values_are_422_in_json(client: httpx.Client, query: str) -> None:
    """A bad filter or page value is refused naming it, never a 500."""
    response = client.get(f"/schedules?{query}", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_a_literal_secret_of_a_legacy_row_is_never_served(client: httpx.Client) -> None:
    """A password the original API stored in clear is masked; other values are as stored."""
    response = client.get("/schedules/legacy-import", headers=AUTH)
    assert response.json()["sftp_override"] == {"password": "***", "host": "h"}
    assert "hunter2" not in client.get("/schedules", headers=AUTH).text


def test_get_by_name_or_id_and_unknown_names(client: httpx.Client) -> None:
    """A schedule by its name or its id; unknown, odd or hostile names are 404 in JSON."""
    by_name = client.get(f"/schedules/{NAME}", headers=AUTH).json()
    by_id = client.get(f"/schedules/{by_name['id']}", headers=AUTH).json()
    assert by_id == by_name
    for key in ["nope", "x'; DROP TABLE cpi_jobs; --", "%00", "a%00b", "00000000-0000-0000-0000-"
                "000000000000", "\u00e9" * 300]:  # fmt: skip
        response = client.get(f"/schedules/{key}", headers=AUTH)
        assert response.status_code == 404, key
        assert "no schedule" in response.json()["detail"]
    assert client.get("/jobs/not-a-uuid", headers=AUTH).status_code == 404
    missing = client.get("/jobs/00000000-0000-0000-0000-000000000000", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("no job")


def test_a_manual_run_answers_202_at_once_and_its_job_ends(
    client: httpx.Client, database_url: str
) -> None:
    """POST run: 202 with the job id and a Location; the import runs in the runner; the job
    and the schedule's statistics show it, and so does the history."""
    response = client.post(f"/schedules/{NAME}/run", headers=AUTH)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["status"], accepted["trigger"]) == ("running", "manual")
    assert response.headers["location"] == accepted["job_url"] == f"/jobs/{accepted['job_id']}"
    job = _wait_for_end(client, accepted["job_id"])
    assert (job["status"], job["rows_imported"], job["trigger"]) == ("succeeded", 100, "manual")
    assert count(database_url) == 100
    schedule = client.get(f"/schedules/{NAME}", headers=AUTH).json()
    assert (schedule["total_runs"], schedule["successful_runs"]) == (1, 1)
    assert (schedule["last_job_id"], schedule["last_status"]) == (job["id"], "succeeded")
    history = client.get(f"/schedules/{schedule['id']}/history", headers=AUTH).json()
    assert (history["schedule"], history["total"]) == (NAME, 1)
    assert history["jobs"][0]["id"] == job["id"]
    assert client.get("/schedules/nope/history", headers=AUTH).status_code == 404
    assert client.post("/schedules/nope/run", headers=AUTH).status_code == 404


def test_a_run_overlapping_a_live_one_is_recorded_skipped_and_answered_409(
    client: httpx.Client, folder: Path, database_url: str
) -> None:
    """While another process runs the schedule, a manual run is a skipped job: 409 names it."""
    live = claim_run(NAME, settings=_settings(folder, database_url))  # holds the run's lock
    try:
        response = client.post(f"/schedules/{NAME}/run", headers=AUTH)
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["status"] == "skipped"
        assert live.job.job_id is not None
        assert live.job.job_id in body["detail"]
        job = client.get(f"/jobs/{body['job_id']}", headers=AUTH).json()
        assert (job["status"], job["trigger"]) == ("skipped", "manual")
        assert job["error"] == body["detail"]
    finally:
        live.cancel("test over")


def test_a_stopping_daemon_takes_no_manual_run(served: tuple[httpx.Client, Runner]) -> None:
    """Once the runner stops, a manual run is 503: nothing is claimed."""
    client, runner = served
    runner.stop(5)
    response = client.post(f"/schedules/{NAME}/run", headers=AUTH)
    assert response.status_code == 503
    assert "stopping" in response.json()["detail"]
    assert client.get(f"/schedules/{NAME}/history", headers=AUTH).json()["total"] == 0


@pytest.mark.parametrize(
    ("method", "path", "allow", "says"),
    [
        ("PUT", f"/schedules/{NAME}", "GET", "edit its document in sales.yaml, line 12"),
        ("DELETE", f"/schedules/{NAME}", "GET", "delete its document from sales.yaml, line 12"),
        ("POST", f"/schedules/{NAME}/enable", "", "set `enabled: true` in its document in sales"),
        ("POST", f"/schedules/{NAME}/disable", "", "set `enabled: false` in its document in"),
        ("POST", "/schedules/legacy-import/disable", "", "created outside reconcile"),
    ],
)
def test_writes_answer_405_naming_the_file_and_line(
    client: httpx.Client, method: str, path: str, allow: str, says: str
) -> None:
    """The original writes are refused with Allow and a body saying where the change goes."""
    response = client.request(method, path, headers=AUTH, json={"enabled": False})
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    body = response.json()
    assert says in body["detail"]
    if "legacy" not in path:
        where = (body["source_file"], body["source_line"], body["owner"])
        assert where == ("sales.yaml", 12, "reconcile")


def test_create_answers_405_with_the_folder_and_unknown_targets_404(client: httpx.Client) -> None:
    """POST /schedules says to add a document to the schedules folder; a write to a schedule
    that does not exist is 404."""
    response = client.post("/schedules", headers=AUTH, json={"name": "new"})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert "schedules folder" in response.json()["detail"]
    assert client.put("/schedules/nope", headers=AUTH).status_code == 404
    assert client.patch(f"/schedules/{NAME}", headers=AUTH).status_code == 405


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", f"/schedules/{NAME}/run", "POST"),
        ("PUT", "/schedules", "GET, POST"),
        ("PATCH", f"/schedules/{NAME}", "DELETE, GET, PUT"),
        ("DELETE", f"/jobs/{ZERO}", "GET"),
    ],
)
def test_a_method_the_path_lacks_is_405_allowing_what_it_has(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    """``Allow`` lists every method the path documents (the writes answer 405 themselves)."""
    response = client.request(method, path, headers=AUTH)
    assert (response.status_code, response.headers["allow"]) == (405, allow)
    assert method in response.json()["detail"]


def test_a_job_id_that_is_no_uuid_is_404(client: httpx.Client) -> None:
    """``GET /jobs/job-id`` is an unknown job (404 with a string detail), not a 422."""
    response = client.get("/jobs/job-id", headers=AUTH)
    assert response.status_code == 404
    assert "job ids are UUIDs" in response.json()["detail"]


def test_oversized_bodies_are_413_before_they_are_read(client: httpx.Client) -> None:
    """Over 64 KiB, by Content-Length or streamed in chunks, is refused with JSON."""
    big = b"x" * (64 * 1024 + 1)
    response = client.post("/schedules", headers=AUTH, content=big)
    assert response.status_code == 413
    assert "limited to 65536 bytes" in response.json()["detail"]
    chunked = client.post("/schedules", headers=AUTH, content=iter([big[:40000], big[40000:]]))
    assert chunked.status_code in (405, 413)  # no route reads a body: it is never taken in


def test_a_database_that_does_not_answer_is_503_not_500(folder: Path) -> None:
    """Reads through a pool whose server is gone answer 503 in JSON, with Retry-After."""
    url = "postgresql://nobody@127.0.0.1:1/none"
    settings = _settings(folder, url)
    pool = ReadPool(url, size=1, timeout=0.5)
    app = build_app(Metrics(), api_key=KEY)
    attach(app, Backend(pool, Runner(settings, Metrics(), url=url, workers=1), settings))
    try:
        with serving(app) as client:
            for path in ["/schedules", f"/schedules/{NAME}", f"/jobs/{ZERO}"]:
                response = client.get(path, headers=AUTH)
                assert response.status_code == 503, path
                assert "not answering" in response.json()["detail"]
    finally:
        pool.close()


def test_the_openapi_document_in_the_repository_is_current() -> None:
    """schema/openapi.json is what the app serves; regenerate it when the API changes."""
    served = build_app(Metrics(), api_key="placeholder").openapi()
    kept = json.loads(OPENAPI.read_text(encoding="utf-8"))
    assert kept == served, (
        "schema/openapi.json is out of date: run "
        "`python -m reconciler.daemon.api > schema/openapi.json` and commit it"
    )
    with serving(build_app(Metrics())) as client:
        assert client.get("/openapi.json").status_code == 200


def test_a_row_broken_by_hand_is_named_in_json(client: httpx.Client, database_url: str) -> None:
    """A run of a schedule whose row no longer validates answers with the row and the fix."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cpi_schedules SET local_files = '42' WHERE name = %s", (NAME,))
    response = client.post(f"/schedules/{NAME}/run", headers=AUTH)
    assert response.status_code == 500
    assert "reconcile apply" in response.json()["detail"]
    assert client.get(f"/schedules/{NAME}/history", headers=AUTH).json()["total"] == 0
