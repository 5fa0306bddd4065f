"""What a source offers an import: ``SourceFile`` values, the ``Source`` and ``Readable`` protocols.

The local and SFTP sources (``imports.sources``, ``imports.sftp``) implement ``Source``; the
import engine reads files through it and ``store.ledger`` records them by ``SourceFile``. Plain
values and protocols, no I/O, so that every layer can name a file without importing a source.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["Readable", "Source", "SourceFile"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file offered by a source; ``(source key, path, size, mtime)`` identifies an import."""

    path: str  # absolute: a local path, or a remote path on the SFTP server
    name: str  # the base name, for display
    size: int
    mtime: datetime  # aware, UTC


class Readable(Protocol):
    """A binary stream: ``read(n)`` returns up to ``n`` bytes (all of them unless at the end)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Source(Protocol):
    """A place files are imported from; also a context manager that closes it."""

    key: str  # "local" or "sftp://user@host:port": the source part of an import's identity

    def list_files(self) -> list[SourceFile]:
        """The matching files, sorted by name."""
        ...

    def open(self, f: SourceFile) -> AbstractContextManager[Readable]:
        """``f`` as a stream read in blocks; safe to call from several threads at once."""
        ...

    def finish(self, f: SourceFile) -> None:
        """Apply ``after_import`` to ``f``; called only once its data is committed."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...
