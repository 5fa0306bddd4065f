"""``reconcile serve``: wire the daemon's parts, run until SIGTERM, shut down within the grace.

The order: serve ``/healthz`` at once (probes answer while the rest starts; the REST API answers
503), wait for the management database with backoff (saying so), migrate, then start the runner
pool, the REST API (with ``RECONCILER_API_KEY``), the timer (every replica) and the leader
election (one replica applies). The main thread only waits for a
signal: SIGTERM or SIGINT stops, SIGHUP forces a rescan of the folder and the rows.

Shutdown: the timer stops firing and the pool takes no new claims; running imports get
``RECONCILER_SHUTDOWN_GRACE`` seconds to finish. Imports still running then are recorded as
failed (``interrupted``) and the process exits at once: their sessions close, so each file's
transaction rolls back and no partial data or ledger entry stays behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from reconciler.backoff import Backoff
from reconciler.daemon.metrics import Metrics
from reconciler.errors import EXIT_ERROR, EXIT_OK, EmbeddedServerError, StoreError
from reconciler.logs import get_logger

if TYPE_CHECKING:
    from fastapi import FastAPI

    from reconciler.daemon.working import Runner
    from reconciler.settings import Settings
    from reconciler.store.pooling import ReadPool

__all__ = ["serve"]

_WAIT_FIRST, _WAIT_LAST = 0.5, 15.0  # seconds between attempts to reach the database
_log = get_logger("reconciler.daemon")


def serve(arguments: object, settings: Settings) -> int:
    """Run the daemon in this process until it is stopped; 0 after a clean shutdown."""
    from reconciler.daemon.connections import connection_cap, raise_descriptor_limit
    from reconciler.daemon.http import HttpServer, build_app
    from reconciler.store.connecting import set_role

    set_role("serve")  # its sessions show as reconcile/serve/..., its threads' by their role
    stop, rescan = threading.Event(), threading.Event()
    _signals(stop, rescan)  # first: a signal during the start-up below is handled, not fatal
    raise_descriptor_limit()
    metrics = Metrics()
    app = build_app(metrics, api_key=settings.api_key)
    cap = connection_cap(settings.concurrent_runs)
    http = HttpServer(app, settings.http_address, connections=cap)
    http.start()
    try:
        url = _wait_for_database(settings, stop, metrics)
        if url is None:
            return EXIT_OK
        return _run(settings, metrics, app, url=url, stop=stop, rescan=rescan)
    finally:
        http.stop()


def _signals(stop: threading.Event, rescan: threading.Event) -> None:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: the operator insists
            _log.warning("stopping now", signal=signal.Signals(signum).name)
            os._exit(EXIT_ERROR)
        _log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        _log.info("SIGHUP: reading the folder and the schedules again")
        rescan.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hangup)


def _wait_for_database(settings: Settings, stop: threading.Event, metrics: Metrics) -> str | None:
    """The management database's URL once it answers and is migrated; ``None`` if stopped."""
    from reconciler.store.connecting import connect, database_url
    from reconciler.store.migrating import migrate

    backoff = Backoff(_WAIT_FIRST, _WAIT_LAST)
    while not stop.is_set():
        try:
            url = database_url(settings)  # starts the embedded server when none is configured
            with connect(url) as conn:
                migrate(conn)
        except EmbeddedServerError:  # not installed, or cannot start: waiting will not help
            raise
        except StoreError as exc:
            delay = backoff.next()
            _log.warning("waiting for PostgreSQL", error=exc.message, retry_in=delay)
            stop.wait(delay)
            continue
        metrics.database_up.set(1)
        metrics.readiness.set(database=True)
        return url
    return None


def _run(
    settings: Settings,
    metrics: Metrics,
    app: FastAPI,
    *,
    url: str,
    stop: threading.Event,
    rescan: threading.Event,
) -> int:
    from reconciler.daemon.api import detach
    from reconciler.daemon.leading import Leader
    from reconciler.daemon.timing import Timer
    from reconciler.daemon.working import Runner

    runner = Runner(settings, metrics, url=url, workers=settings.concurrent_runs)
    timer = Timer(
        metrics, runner, url=url, owner=settings.owner,
        resync_seconds=settings.resync_seconds, stop=stop,
    )  # fmt: skip
    reload = threading.Event()
    leader = Leader(
        settings, metrics, url=url, rescan=reload, stop=stop,
        resync_seconds=settings.resync_seconds, applied=timer.resync,
    )  # fmt: skip
    pool = _serve_api(app, settings, url, runner)
    timer.start()
    leader.start()
    _log.info(
        "serving", folder=str(settings.schedules_dir), owner=settings.owner,
        concurrent_runs=settings.concurrent_runs, resync_seconds=settings.resync_seconds,
    )  # fmt: skip
    while not stop.wait(0.5):
        if rescan.is_set():  # SIGHUP: the leader reads the folder, every replica the rows
            rescan.clear()
            reload.set()
            timer.resync()
    began = time.monotonic()
    if pool is not None:  # no new manual runs; the ones running get the grace like the others
        detach(app)
        pool.close()
    runner.refuse()  # first: nothing new starts while the timer and the leader wind down
    timer.stop()
    leader.join()
    if runner.stop(settings.shutdown_grace - (time.monotonic() - began)):
        _log.info("stopped", seconds=round(time.monotonic() - began, 3))
        return EXIT_OK
    try:
        runner.end_unfinished(settings.shutdown_grace)
    except StoreError as exc:  # the next run marks them abandoned instead
        _log.error("cannot record the interrupted imports", error=exc.message)
    sys.stderr.flush()
    os._exit(EXIT_ERROR)  # running imports hold threads that cannot be joined; end them with us


def _serve_api(app: FastAPI, settings: Settings, url: str, runner: Runner) -> ReadPool | None:
    """Let the REST API (when a key is set) answer from now on; its read pool, to close."""
    if not settings.api_key:
        return None
    from reconciler.daemon.api import Backend, attach
    from reconciler.store.pooling import ReadPool

    pool = ReadPool(url)
    attach(app, Backend(pool, runner, settings))
    _log.info("serving the REST API", header="X-API-Key")
    return pool
