"""Callbacks of real runs on real PostgreSQL: never holding a run slot, always an outcome."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from daemons import wait_until
from import_rows import SALES, add_project, add_schedule, jobs, write_sales

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.working import Runner
from reconciler.imports.runs import callbacks
from reconciler.imports.runs.callbacks import Callback, Courier
from reconciler.imports.runs.running import run_schedule
from reconciler.settings import Settings, load_settings
from reconciler.store.claiming import claim_due
from reconciler.store.connecting import process_name


@pytest.fixture
def folder(tmp_path: Path, database_url: str) -> Path:
    """schedules.d/ beside data/sales_1.csv, and public.sales in the database."""
    (tmp_path / "schedules.d").mkdir()
    write_sales(tmp_path / "data/sales_1.csv", range(3))
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    return tmp_path


def _settings(folder: Path, url: str) -> Settings:
    return load_settings(
        schedules_dir=str(folder / "schedules.d"), database_url=url,
        state_dir=str(folder / "state"),
        environ={"RECONCILER_LOG_LEVEL": "error", "RECONCILER_SETTLE_SECONDS": "0",
                 "RECONCILER_CALLBACK_ALLOW": "loopback"},
    )  # fmt: skip


@pytest.fixture
def trickler() -> Iterator[str]:
    """A receiver that reads the request and answers one byte a second, for a minute."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" * 4:
                if stop.wait(1.0):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    server.close()


def _callback(url: str, name: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT j.callback FROM cpi_jobs j JOIN cpi_schedules s ON s.id = j.schedule_id "
            "WHERE s.name = %s",
            (name,),
        ).fetchone()
    return row[0] if row else None


def test_a_trickling_receiver_holds_no_run_slot(
    folder: Path, database_url: str, trickler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one worker, two schedules whose receiver trickles both run at once after another;
    each callback is cut at its deadline and recorded on its job."""
    monkeypatch.setattr(callbacks, "TIMEOUT", 2.0)
    monkeypatch.setattr(callbacks, "ATTEMPTS", 1)
    add_project(database_url)
    for name in ("first", "second"):
        add_schedule(database_url, name, local_files=["../data/sales_*.csv"], callback_url=trickler)
    runner = Runner(_settings(folder, database_url), Metrics(), url=database_url, workers=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(  # due now: this minute's occurrence of an every-minute cron
            "UPDATE cpi_schedules SET cron_expression = '* * * * *', "
            "next_run_at = date_trunc('minute', now())"
        )
        claimed = claim_due(
            conn, owner="reconcile", worker=process_name(), now=datetime.now(UTC), limit=2
        )
    assert len(claimed.runs) == 2
    began = time.monotonic()
    for run in claimed.runs:
        runner.start(run)
    wait_until(
        lambda: [j["status"] for n in ("first", "second") for j in jobs(database_url, n)]
        == ["succeeded", "succeeded"],
        timeout=30, what="both runs final",
    )  # fmt: skip
    wait_until(lambda: not runner.busy, timeout=5, what="the run slot free")
    assert time.monotonic() - began < 2.0 + 1.5  # the second did not wait for the first's hook
    for name in ("first", "second"):
        outcome = wait_until(lambda n=name: _callback(database_url, n), timeout=15)
        assert outcome == {
            "delivered": False, "attempts": 1, "status_code": None, "error": "timed out"
        }  # fmt: skip
    assert runner.stop(5)


def test_a_full_queue_records_the_callback_as_dropped(
    folder: Path, database_url: str, trickler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One callback in flight, one waiting: a third finds the queue full and is dropped, and
    stopping records the waiting one as not sent."""
    monkeypatch.setattr(callbacks, "TIMEOUT", 30.0)
    add_project(database_url)
    add_schedule(database_url, "s", local_files=["../data/sales_*.csv"])
    courier = Courier(_settings(folder, database_url), url=database_url, capacity=1)
    ids = []
    for _ in range(3):
        result = run_schedule("s", settings=_settings(folder, database_url))
        assert result.job_id is not None
        ids.append(result.job_id)
    assert courier.send(Callback(trickler, {}, ids[0])) is None
    wait_until(courier._queue.empty, timeout=5, what="the first taken")
    assert courier.send(Callback(trickler, {}, ids[1])) is None
    dropped = courier.send(Callback(trickler, {}, ids[2]))
    assert dropped is not None
    assert dropped["error"].startswith("dropped: 1 callbacks were already waiting")
    courier.stop(0.1)
    stored = {str(j["id"]): j["callback"] for j in jobs(database_url, "s")}
    assert stored[ids[1]]["error"] == "not sent: reconcile serve stopped first"


@pytest.mark.parametrize("url", ["http://[::1/", "http://h.example:99999/x", "gopher://h/"])
def test_a_stored_url_that_no_longer_parses_records_its_outcome(
    folder: Path, database_url: str, url: str
) -> None:
    """A callback_url the old API stored: the run succeeds and the refusal is its outcome."""
    add_project(database_url)
    add_schedule(database_url, "old", local_files=["../data/sales_*.csv"], callback_url=url)
    result = run_schedule("old", settings=_settings(folder, database_url))
    assert result.status == "succeeded"
    assert result.callback is not None
    assert result.callback["error"].startswith("refused: the callback_url ")
    (job,) = jobs(database_url, "old")
    assert job["callback"] == result.callback
