"""The REST API of a real ``reconcile serve`` process with ``RECONCILER_API_KEY`` set."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import psycopg
from conftest import Cli
from daemons import Daemon, project_yaml, schedule_yaml, wait_until

KEY = "serve-key-0123456789"


def _call(daemon: Daemon, method: str, path: str, key: str | None = KEY) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", method=method)
    if key is not None:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_the_api_and_runs_a_manual_import(cli: Cli, database_url: str) -> None:
    """With a key: the schedules the folder declares, a manual run answered 202 whose job
    ends succeeded in the daemon, 405 naming the file for a write, 401 without the key."""
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
    (cli.cwd / "data").mkdir()
    (cli.cwd / "data" / "sales.csv").write_text("sale_id,sold_at,amount\n1,2026-11-01,2.5\n")
    (cli.cwd / "schedules.d" / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
    env = {**cli.env, "RECONCILER_API_KEY": KEY}
    with Daemon(cli.cwd, env) as daemon:
        daemon.wait_ready()
        status, listed = _call(daemon, "GET", "/schedules?project=sales_project")
        assert status == 200
        assert [s["name"] for s in listed["schedules"]] == ["nightly"]
        schedule = listed["schedules"][0]
        assert (schedule["source_file"], schedule["source_line"]) == (
            "sales.yaml",
            11,
        )  # its document starts there
        assert schedule["managed"] is True
        assert schedule["next_run_at"] is not None

        status, accepted = _call(daemon, "POST", "/schedules/nightly/run")
        assert status == 202, accepted
        job = wait_until(
            lambda: (j := _call(daemon, "GET", accepted["job_url"])[1])["status"] != "running"
            and j,
            timeout=30, what="the manual run",
        )  # fmt: skip
        assert (job["status"], job["rows_imported"], job["trigger"]) == ("succeeded", 1, "manual")
        assert job["worker"].endswith(f":{daemon.process.pid}")  # run by the daemon

        status, refused = _call(daemon, "DELETE", "/schedules/nightly")
        assert status == 405
        assert "sales.yaml, line 11" in refused["detail"]
        assert _call(daemon, "GET", "/schedules", key=None)[0] == 401
        assert daemon.get("/healthz")[0] == 200
        assert daemon.stop() == 0
