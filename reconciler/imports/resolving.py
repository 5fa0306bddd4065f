"""From a schedule's name to what one run needs: its rows, its source and its target database.

``imports.running`` calls ``load_import`` (reading ``cpi_schedules`` and ``cpi_projects`` as the
apply left them), then ``open_source`` and ``target_url`` once the job row exists, so that an
unreachable SFTP server or an unset ``${VAR}`` is recorded on the job rather than lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from reconciler.errors import NotFound, TargetError
from reconciler.imports.jobs import ScheduleRef
from reconciler.model.specs import ProjectSpec, SftpOverride, Target

if TYPE_CHECKING:
    import psycopg

    from reconciler.imports.sources import Source
    from reconciler.settings import Settings

__all__ = ["ImportSpec", "load_import", "open_source", "target_url"]


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """A schedule row and its project's spec, parsed back into the document models."""

    schedule: ScheduleRef
    project_spec: ProjectSpec | None
    enabled: bool
    callback_url: str | None
    sftp_override: SftpOverride | None
    local_files: tuple[str, ...] | None
    source_file: str | None

    @property
    def target(self) -> Target:
        """The project's target; ``TargetError`` for a project reconcile cannot import into."""
        spec = self.project_spec
        if spec is None or spec.target is None:
            raise TargetError(
                f"project {self.schedule.project!r} is managed elsewhere (no target declared "
                "here); declare it as a Project with a target to import with reconcile"
            )
        return spec.target


def load_import(conn: psycopg.Connection[Any], name: str) -> ImportSpec:
    """The schedule ``name`` and its project; ``NotFound`` if the schedule is not in the DB."""
    row = conn.execute(
        "SELECT s.id::text, s.name, p.id::text, p.name, p.spec, coalesce(s.enabled, true), "
        "s.callback_url, s.sftp_override, s.local_files, s.source_file "
        "FROM cpi_schedules s LEFT JOIN cpi_projects p ON p.id = s.project_id WHERE s.name = %s",
        (name,),
    ).fetchone()
    conn.rollback()
    if row is None:
        raise NotFound("schedule", name, "the database; run `reconcile apply` first")
    sid, sname, pid, pname, spec, enabled, callback, override, local, source_file = row
    return ImportSpec(
        schedule=ScheduleRef(id=sid, name=sname, project_id=pid, project=pname),
        project_spec=ProjectSpec.model_validate(spec) if spec else None,
        enabled=bool(enabled),
        callback_url=callback,
        sftp_override=SftpOverride.model_validate(override) if override else None,
        local_files=tuple(local) if local else None,
        source_file=source_file,
    )


def open_source(spec: ImportSpec, settings: Settings) -> Source:
    """The schedule's source: its ``local_files``, else the project's SFTP with the override."""
    from reconciler.imports import sources

    if spec.local_files:
        # Globs are relative to the folder of the YAML file that declared the schedule.
        folder = PurePosixPath(spec.source_file).parent if spec.source_file else PurePosixPath()
        return sources.local_source(
            spec.local_files,
            base_dir=settings.schedules_dir / folder,
            roots=settings.local_roots,
        )
    project_sftp = spec.project_spec.sftp if spec.project_spec else None
    config = sources.merge_sftp(project_sftp, spec.sftp_override)
    return sources.sftp_source(config, environ=settings.environ)


def target_url(spec: ImportSpec, settings: Settings, management_url: str) -> tuple[str, bool]:
    """The target database's URL, and whether it is another database than the management one."""
    from reconciler.imports.secrets import resolve

    url = resolve(
        spec.target.database_url,
        environ=settings.environ,
        where=f"project {spec.schedule.project}: target.database_url",
    )
    return (url, True) if url else (management_url, False)
