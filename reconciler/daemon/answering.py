"""How the daemon's HTTP API answers what goes wrong: JSON errors, 405's ``Allow``, body limits.

``daemon.api`` raises ``Refused`` (through ``error`` and ``unavailable``) from its routes and
calls ``install`` once: the exception handlers turn our errors and the framework's into JSON
(503 with ``Retry-After`` for a database that does not answer, never a bare 500 for bad input),
and ``BodyLimit`` refuses a body over the limit before it is read.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from reconciler.daemon.responses import ErrorResponse
from reconciler.errors import ReconcileError, StoreError
from reconciler.logs import get_logger

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RETRY_AFTER", "BodyLimit", "Refused", "answer", "error", "install", "unavailable"]

RETRY_AFTER = "5"
_log = get_logger("reconciler.api")


class Refused(Exception):
    """Answer ``status`` with ``body`` (and ``headers``) from anywhere in a route."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> Refused:
    return Refused(status, ErrorResponse(detail=detail), headers)


def unavailable(detail: str) -> Refused:
    return error(503, detail, {"Retry-After": RETRY_AFTER})


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


async def _refused(request: Request, exc: Refused) -> JSONResponse:
    return answer(exc.status, exc.body, exc.headers)


async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
    _log.warning("API request failed: database unreachable", path=request.url.path, error=str(exc))
    body = ErrorResponse(detail="the management database is not answering; try again shortly")
    return answer(503, body, {"Retry-After": RETRY_AFTER})


async def _stored_state(request: Request, exc: ReconcileError) -> JSONResponse:
    """A row the reconciler cannot use (edited by hand into something no document says): the
    message names it and the fix (``reconcile apply``)."""
    _log.error("API request failed", path=request.url.path, error=exc.message)
    return answer(500, ErrorResponse(detail=exc.message))


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """A method no route of the path has: ``Allow`` lists every method the path's routes have.

    Starlette lists only the first matching route's methods (``GET`` for ``/schedules``,
    whose ``POST`` is another route).
    """
    from starlette.routing import Match

    scope = {**request.scope, "method": "GET"}
    allowed: set[str] = set()
    for route in _flat(request.app.routes):
        if route.matches(scope)[0] != Match.NONE:  # the refused writes too: they are documented
            allowed |= getattr(route, "methods", None) or set()
    body = ErrorResponse(detail=f"{request.method} is not a method of {request.url.path}")
    return answer(405, body, {"Allow": ", ".join(sorted(allowed))})


def _flat(routes: Any) -> list[Any]:
    """Every route, those of included routers too (FastAPI keeps them behind a wrapper)."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        out += _flat(inner) if inner is not None else [route]
    return out


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("API request failed", path=request.url.path, error=str(exc))
    body = ErrorResponse(detail="internal error; the daemon's log has the details")
    return answer(500, body)


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, from its Content-Length (before
    anything is read) or, for a chunked body, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send(send, 400, "Content-Length is not a number")
                return
            if int(length) > self.limit:
                await _send(send, 413, f"request bodies are limited to {self.limit} bytes")
                return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise error(413, f"request bodies are limited to {self.limit} bytes")
            return message

        await self.app(scope, bounded, send)


async def _send(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, *, body_limit: int) -> None:
    """The body limit and every error handler of the API on ``app``."""
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _store_error)  # type: ignore[arg-type]
    app.add_exception_handler(ReconcileError, _stored_state)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(405, _method_not_allowed)
