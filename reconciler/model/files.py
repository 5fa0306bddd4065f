"""What a source offers an import: ``SourceFile`` values, the ``Source`` and ``Readable`` protocols.

The source kinds (``imports.sources``) implement ``Source`` and open for ``LocalFiles`` or an
``Sftp`` (``merge_sftp``); the import engine reads files through it and ``store.ledger`` records
them. Plain values and protocols, no I/O, so that every layer can name a file without importing a
source.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import ValidationError

from reconciler.errors import SourceError
from reconciler.model.specs import Sftp, SftpOverride

__all__ = ["LocalFiles", "Opened", "Readable", "Source", "SourceFile", "merge_sftp"]


@dataclass(frozen=True, slots=True)
class LocalFiles:
    """A schedule's ``local_files``: globs relative to the schedules folder (and, for log
    lines, the schedule and the file that declares it)."""

    patterns: tuple[str, ...]
    schedule: str = ""
    declared_in: str | None = None


def merge_sftp(project: Sftp | None, override: SftpOverride | None) -> Sftp:
    """The schedule's SFTP settings: the override's given fields over the project's."""
    fields = project.model_dump(exclude_unset=True) if project else {}
    if override is not None:
        fields.update(override.model_dump(exclude_none=True))
    if not fields.get("host"):
        raise SourceError(
            "no source: the project declares no sftp host and the schedule has no "
            "sftp_override.host or local_files"
        )
    try:
        return Sftp.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'sftp'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SourceError(f"the project's sftp with the schedule's override: {problems}") from exc


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file offered by a source, as listed. What identifies an import is its content
    (``store.ledger``); ``(path, size, mtime)`` only lets an unchanged file be skipped unread."""

    path: str  # absolute: a local path, or a remote path on the SFTP server
    name: str  # the base name, for display
    size: int
    mtime: datetime  # aware, UTC
    marker: str | None = None  # the path of its ready marker, when the project asks for one


class Readable(Protocol):
    """A binary stream: ``read(n)`` returns up to ``n`` bytes (all of them unless at the end)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Opened(Readable, Protocol):
    """An open file: its bytes, and what its handle says of it now."""

    def stat(self) -> tuple[int, datetime]:
        """``(size, mtime)`` of the open file now (fstat of the handle, not of the path): one
        that differs from the listing after the last read means it changed while it was read."""
        ...


class Source(Protocol):
    """A place files are imported from; also a context manager that closes it."""

    key: str  # "local" or "sftp://user@host:port": how the files were reached, for display

    def list_files(self) -> list[SourceFile]:
        """The matching regular files, sorted by name."""
        ...

    def modified(self, path: str) -> datetime | None:
        """When ``path`` (a ready marker beside a listed file) was last modified; None if it
        does not exist."""
        ...

    def open(self, f: SourceFile) -> AbstractContextManager[Opened]:
        """``f`` as a stream read in blocks; safe to call from several threads at once. Refuses
        at once (``SourceError``) what is not a regular file when opened, never waits on it."""
        ...

    def finish(self, f: SourceFile) -> str | None:
        """Apply ``after_import`` to ``f`` (and its marker); called once its data is committed.
        Never overwrites anything: a name taken in the archive gets a unique one instead, and
        the note returned says so (None when there is nothing to say)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...
