"""The original REST API's reads and manual run, on the daemon's HTTP address; writes point to Git.

``http.build_app`` calls ``add_api`` when ``RECONCILER_API_KEY`` is set: every route here needs
the ``X-API-Key`` header (compared in constant time) and answers JSON, errors included. The
HTTP server starts before the database answers, so the routes answer 503 until ``serving``
calls ``attach`` with a ``Backend`` (a read pool and the daemon's ``Runner``), and again once it
calls ``detach`` on shutdown.

- ``GET /schedules``, ``GET /schedules/{name}`` (a name or an id), ``GET
  /schedules/{name}/history`` and ``GET /jobs/{id}`` read through ``store.schedules``,
  ``store.history`` (the function ``reconcile history`` reads a schedule's runs with) and
  ``store.listing``.
- ``POST /schedules/{name}/run`` claims the run as ``reconcile run`` does
  (``imports.runs.running.claim_run``), answers 202 with the job id and leaves the import to the
  runner's pool; a run overlapping a live one is recorded ``skipped`` and answered 409.
- The original writes (create, update, delete, enable, disable) answer 405, naming the file and
  line that declare the schedule.

``python -m reconciler.daemon.api > schema/openapi.json`` writes the OpenAPI document kept in
the repository (a test compares the two).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from reconciler.daemon.answering import Refused, answer, error, install, unavailable
from reconciler.daemon.responses import (
    ErrorResponse,
    JobListResponse,
    JobResponse,
    ManagedInGit,
    RunAccepted,
    RunSkipped,
    ScheduleListResponse,
    ScheduleResponse,
)
from reconciler.errors import NotFound
from reconciler.logs import get_logger
from reconciler.model.scalars import excerpt
from reconciler.store import listing
from reconciler.store import schedules as stored
from reconciler.store.history import schedule_runs

if TYPE_CHECKING:
    from reconciler.daemon.working import Runner
    from reconciler.settings import Settings
    from reconciler.store.pooling import ReadPool

__all__ = ["API_KEY_HEADER", "BODY_LIMIT", "MAX_LIMIT", "Backend", "add_api", "attach", "detach"]

API_KEY_HEADER = "X-API-Key"
BODY_LIMIT = 64 * 1024  # no route reads a body; anything larger is refused before it is read
MAX_LIMIT = 1000
_MAX_OFFSET = 2**31 - 1
_log = get_logger("reconciler.api")
_Route = TypeVar("_Route", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Backend:
    """What the routes need once the database answers."""

    pool: ReadPool
    runner: Runner
    settings: Settings


def attach(app: FastAPI, backend: Backend) -> None:
    """Serve the API from ``backend`` from now on."""
    app.state.backend = backend


def detach(app: FastAPI) -> None:
    """Answer 503 again (the daemon is stopping); the caller closes the pool."""
    app.state.backend = None


_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The key in RECONCILER_API_KEY."
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "X-API-Key missing or wrong"},
    413: {"model": ErrorResponse, "description": f"A body over {BODY_LIMIT} bytes"},
    503: {"model": ErrorResponse, "description": "Starting, stopping or database unreachable"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such schedule"}
}
_WRITE: dict[int | str, dict[str, Any]] = {
    405: {"model": ManagedInGit, "description": "Managed in Git: change the YAML document"}
}
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=_MAX_OFFSET, description="rows to skip")]


def _backend(request: Request) -> Backend:
    backend: Backend | None = getattr(request.app.state, "backend", None)
    if backend is None:
        raise unavailable("the daemon is starting or stopping: its database is not ready yet")
    return backend


def _known_query(request: Request) -> None:
    """A query parameter the operation does not take is refused: a typo (``enable=true``)
    must not silently list everything. The operation's own parameters are its endpoint's."""
    from fastapi.exceptions import RequestValidationError

    dependant = getattr(request.scope.get("route"), "dependant", None)
    known = {p.alias for p in dependant.query_params} if dependant else set()
    listed = ", ".join(sorted(known)) or "none"
    unknown = [
        {"type": "extra_forbidden", "loc": ("query", name), "input": value,
         "msg": f"unknown query parameter; this operation takes: {listed}"}
        for name, value in request.query_params.multi_items()
        if name not in known
    ]  # fmt: skip
    if unknown:
        raise RequestValidationError(unknown)


def add_api(app: FastAPI, key: str) -> None:
    """Add the API's routes, the key check and the body limit to ``app``."""
    expected = key.encode()

    def authorised(given: Annotated[str | None, Security(_header)] = None) -> None:
        # Starlette decodes header values as latin-1: back to the bytes that were sent.
        sent = (given or "").encode("latin-1")
        if given is None or not hmac.compare_digest(sent, expected):
            raise error(401, f"send the key of RECONCILER_API_KEY in the {API_KEY_HEADER} header")

    app.state.backend = None
    install(app, body_limit=BODY_LIMIT)
    router = APIRouter(dependencies=[Depends(authorised), Depends(_known_query)], responses=_ERRORS)
    _reads(router)
    _runs(router)
    _writes(router)
    app.include_router(router)


def _reads(router: APIRouter) -> None:
    @router.get("/schedules", summary="List schedules", response_model=ScheduleListResponse)
    def list_schedules(
        backend: Annotated[Backend, Depends(_backend)],
        project: Annotated[str | None, Query(description="a project's name")] = None,
        enabled: bool | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> Response:
        owner = backend.settings.owner
        rows: list[stored.ScheduleRecord] = []
        total = 0
        if project is None or "\0" not in project:  # no name holds NUL; PostgreSQL rejects it
            with backend.pool.session() as conn:
                rows, total = stored.list_schedules(
                    conn, project=project, enabled=enabled, limit=limit, offset=offset
                )
        schedules = [ScheduleResponse.of(row, owner=owner) for row in rows]
        return _ok(
            ScheduleListResponse.model_construct(
                schedules=schedules, total=total, limit=limit, offset=offset
            )
        )

    @router.get(
        "/schedules/{name}", summary="A schedule, by name or id",
        response_model=ScheduleResponse, responses=_NOT_FOUND,
    )  # fmt: skip
    def get_schedule(name: str, backend: Annotated[Backend, Depends(_backend)]) -> Response:
        return _ok(ScheduleResponse.of(_schedule(backend, name), owner=backend.settings.owner))

    @router.get(
        "/schedules/{name}/history", summary="A schedule's runs, newest first",
        response_model=JobListResponse, responses=_NOT_FOUND,
    )  # fmt: skip
    def history(
        name: str,
        backend: Annotated[Backend, Depends(_backend)],
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response:
        if "\0" in name:
            raise _no_schedule(name)
        with backend.pool.session() as conn:
            row = stored.find_schedule(conn, name)
            # Jobs keep the schedule's name: a deleted schedule's runs stay readable by it.
            schedule = row.name if row else name
            try:
                jobs, total = schedule_runs(conn, schedule, limit=limit, offset=offset)
            except NotFound:  # neither a schedule by that name or id, nor runs by that name
                raise _no_schedule(name) from None
        found = [JobResponse.of(job) for job in jobs]
        return _ok(
            JobListResponse.model_construct(
                schedule=schedule, jobs=found, total=total, limit=limit, offset=offset
            )
        )

    @router.get(
        "/jobs/{job_id}", summary="A job", response_model=JobResponse,
        responses={404: {"model": ErrorResponse, "description": "No such job"}},
    )  # fmt: skip
    def get_job(job_id: str, backend: Annotated[Backend, Depends(_backend)]) -> Response:
        try:
            key = str(UUID(job_id))
        except ValueError:  # not an id at all: no such job, as for an unknown one
            raise error(404, f"no job {excerpt(job_id)}: job ids are UUIDs") from None
        with backend.pool.session() as conn:
            job = listing.fetch_job(conn, key)
        if job is None:
            raise error(404, f"no job {key}")
        return _ok(JobResponse.of(job))


def _no_schedule(name: str) -> Refused:
    return error(
        404, f"no schedule named {excerpt(name)} (nor with that id); GET /schedules lists them"
    )


def _schedule(backend: Backend, key: str) -> stored.ScheduleRecord:
    if "\0" in key:
        raise _no_schedule(key)
    with backend.pool.session() as conn:
        row = stored.find_schedule(conn, key)
    if row is None:
        raise _no_schedule(key)
    return row


def _runs(router: APIRouter) -> None:
    @router.post(
        "/schedules/{name}/run", summary="Run a schedule now (as `reconcile run`)",
        status_code=202, response_model=RunAccepted,
        responses={
            **_NOT_FOUND,
            409: {"model": RunSkipped, "description": "Overlaps a live run: recorded skipped"},
        },
    )  # fmt: skip
    def run(name: str, backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        from reconciler.imports.runs.running import claim_run

        runner = backend.runner
        if runner.stopping:
            raise unavailable("the daemon is stopping; run it on another replica")
        if runner.busy:
            raise unavailable(
                f"all {backend.settings.concurrent_runs} run slots of this daemon are busy "
                "(RECONCILER_CONCURRENT_RUNS); try again shortly"
            )
        row = _schedule(backend, name)
        try:
            claim = claim_run(row.name, settings=backend.settings, trigger="manual")
        except NotFound:
            raise _no_schedule(name) from None
        job = claim.job
        assert job.job_id is not None
        if not runner.run_claimed(claim):  # a skip still sends its callback in the pool
            claim.cancel("not run: reconcile serve was stopping when the run was asked for")
            raise unavailable("the daemon is stopping; run it on another replica")
        if job.status == "skipped":
            body: Any = RunSkipped(
                detail=job.error or "overlaps a live run", job_id=job.job_id,
                schedule=job.schedule, status=job.status,
            )  # fmt: skip
            return answer(409, body)
        _log.info("manual run accepted", schedule=job.schedule, job_id=job.job_id)
        url = f"/jobs/{job.job_id}"
        accepted = RunAccepted(
            job_id=job.job_id, schedule=job.schedule, status=job.status,
            trigger=job.trigger, started_at=job.started_at, job_url=url,
        )  # fmt: skip
        return answer(202, accepted, {"Location": url})


_VERBS = {
    "update": ("edit its document in", "GET"),
    "delete": ("delete its document from", "GET"),
    "enable": ("set `enabled: true` in its document in", ""),
    "disable": ("set `enabled: false` in its document in", ""),
}


def _writes(router: APIRouter) -> None:
    @router.post(
        "/schedules", summary="Create a schedule: managed in Git", status_code=405,
        response_model=ManagedInGit, responses=_WRITE,
    )  # fmt: skip
    def create(backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        folder = backend.settings.schedules_dir
        body = ManagedInGit(
            detail=f"schedules are managed in Git: add a document of kind: Schedule to a YAML "
            f"file in the schedules folder ({folder}) and commit it; reconcile applies it"
        )
        return answer(405, body, {"Allow": "GET"})

    def refuse(action: str, key: str, backend: Backend) -> JSONResponse:
        row = _schedule(backend, key)
        verb, allow = _VERBS[action]
        owner = backend.settings.owner
        where = "its YAML file"
        if row.source_file:
            where = f"{row.source_file}, line {row.source_line}"
        if row.owner == owner:
            detail = f"schedule {row.name!r} is managed in Git: {verb} {where} and commit"
        elif row.owner is None:
            detail = (
                f"schedule {row.name!r} was created outside reconcile (by the original API) and "
                "is read-only here: `reconcile export` writes its document; commit it and "
                "`reconcile apply --adopt` takes it over"
            )
        else:
            detail = (
                f"schedule {row.name!r} is managed in Git by another reconciler (owner "
                f"{row.owner!r}): {verb} {where} in that owner's folder and commit"
            )
        body = ManagedInGit(
            detail=detail, schedule=row.name, owner=row.owner,
            source_file=row.source_file, source_line=row.source_line,
        )  # fmt: skip
        return answer(405, body, {"Allow": allow})

    def write(method: str, path: str, summary: str) -> Callable[[_Route], _Route]:
        return router.api_route(
            path, methods=[method], summary=summary, status_code=405,
            response_model=ManagedInGit, responses=_WRITE | _NOT_FOUND,
        )  # fmt: skip

    @write("PUT", "/schedules/{name}", "Update a schedule: managed in Git")
    def update(name: str, backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        return refuse("update", name, backend)

    @write("DELETE", "/schedules/{name}", "Delete a schedule: managed in Git")
    def delete(name: str, backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        return refuse("delete", name, backend)

    @write("POST", "/schedules/{name}/enable", "Enable a schedule: managed in Git")
    def enable(name: str, backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        return refuse("enable", name, backend)

    @write("POST", "/schedules/{name}/disable", "Disable a schedule: managed in Git")
    def disable(name: str, backend: Annotated[Backend, Depends(_backend)]) -> JSONResponse:
        return refuse("disable", name, backend)


def _ok(body: BaseModel) -> Response:
    """200 with ``body`` serialised once, in Rust: FastAPI would validate it again first."""
    return Response(body.model_dump_json(), media_type="application/json")


def _main() -> None:
    """Print the OpenAPI document of an app with the API on (the key is a placeholder)."""
    from reconciler.daemon.http import build_app
    from reconciler.daemon.metrics import Metrics

    document = build_app(Metrics(), api_key="placeholder").openapi()
    print(json.dumps(document, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    _main()
