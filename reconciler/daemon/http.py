"""The daemon's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics``, on FastAPI and uvicorn.

``serving`` calls ``build_app`` and runs it with ``HttpServer`` in a thread of its own, started
before anything else so that probes answer while the daemon waits for its database. The socket
is bound here first: a port in use is a ``UsageError`` naming the address, not a traceback in a
thread. With an API key, ``daemon.api`` adds the REST API's routes to the same app.

No client can exhaust the server (``daemon.connections``): connections are capped below the open
files limit, idle and slow ones are closed, and the event loop's errors are logged once per kind
with a count, not once each.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING

from reconciler.daemon.connections import (
    HEADER_LIMIT,
    KEEP_ALIVE_SECONDS,
    Throttle,
    protocol_class,
)
from reconciler.errors import UsageError
from reconciler.logs import get_logger

if TYPE_CHECKING:
    from fastapi import FastAPI

    from reconciler.daemon.metrics import Metrics

__all__ = ["HttpServer", "build_app"]

_log = get_logger("reconciler.http")
_ACCEPT_BATCH = 16  # connections accepted per wake-up of the event loop
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_DESCRIPTION = (
    "The health, metrics and REST API of `reconcile serve`. Schedules are declared in YAML "
    "documents in Git: the API reads them and runs them now; its writes answer 405 and name "
    "the file to change. The API needs the X-API-Key header (RECONCILER_API_KEY)."
)


def build_app(metrics: Metrics, *, api_key: str | None = None) -> FastAPI:
    """The app: liveness, readiness from ``metrics.readiness``, and the metrics themselves; with
    ``api_key``, the REST API too (``daemon.api``; it answers 503 until ``api.attach``)."""
    from fastapi import FastAPI, Response
    from fastapi.responses import JSONResponse

    from reconciler import __version__

    app = FastAPI(
        title="reconcile",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Probes that send HEAD get the same answer without a body (out of the documented API).
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    # response_model=None: the return annotations name classes imported here, not at the top.
    @app.get(
        "/readyz",
        summary="Database reachable, scheduler running, configuration loaded",
        response_model=None,
        responses={503: {"description": "Not ready: the reasons are listed"}},
    )
    def readyz() -> JSONResponse:
        problems = metrics.readiness.problems()
        status = "ready" if not problems else "not ready"
        body = {"status": status, "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_model=None,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=_PROMETHEUS_TEXT)

    if api_key:
        from reconciler.daemon.api import add_api

        add_api(app, api_key)
    return app


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HttpServer:
    """uvicorn serving ``app`` on ``address`` from a daemon thread until ``stop``, with at most
    ``connections`` connections open (``connections.connection_cap``)."""

    def __init__(self, app: FastAPI, address: str, *, connections: int = 256) -> None:
        import uvicorn

        host, port = _split(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every accepted connection (Linux): without it, a keep-alive client's next
        # request waits out the delayed ACK of a small response, 40 ms per request.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise UsageError(
                f"cannot listen on {address}: {exc.strerror}; set RECONCILER_HTTP_ADDRESS "
                "(or --http-address) to a free host:port"
            ) from None
        self._socket.listen(128)
        self._socket.set_inheritable(True)
        self._throttle = Throttle()
        self._throttle.install()
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
            http=protocol_class(connections, self._throttle),
            timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=HEADER_LIMIT,
            # Requests in flight: connections are capped and idle ones evicted before this.
            limit_concurrency=connections + 1,
            # asyncio accepts up to this many connections per wake-up before any protocol runs:
            # kept small, a burst cannot open more sockets than the cap's headroom holds.
            backlog=_ACCEPT_BATCH,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def address(self) -> str:
        """``host:port`` as bound (the port chosen by the system when 0 was asked for)."""
        host, port = self._socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        _log.info("serving HTTP", address=self.address)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the daemon goes on without HTTP; say why
            _log.error("the HTTP server stopped", error=str(exc))

    async def _main(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self._throttle.loop_errors)
        await self._server.serve(sockets=[self._socket])

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
