"""The local source: files on this machine matched by a schedule's ``local_files`` globs.

Registered for ``LocalFiles`` with ``imports.sources``; the import engine lists the files, opens
each as a byte stream for ``COPY ... FROM STDIN`` (never loading a whole file). Local paths are
confined to ``RECONCILER_LOCAL_ROOTS``: the check is on the real path, so neither ``..`` nor a
symlink leads out, and it is repeated when a file is opened. A glob is refused from its text
when its fixed part lies outside the roots, and is otherwise walked only inside them.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from reconciler.errors import SourceError
from reconciler.imports.sources import implementation_for
from reconciler.logs import get_logger
from reconciler.model.files import LocalFiles, Opened, Source, SourceFile

if TYPE_CHECKING:
    from reconciler.settings import Settings

__all__ = ["LocalSource", "local_source"]

_ROOTS_SETTING = "RECONCILER_LOCAL_ROOTS"
_log = get_logger("reconciler.imports")


_MAGIC = re.compile(r"[*?[]")  # what makes a path component a glob, as for the glob module


def _inside(real: str, roots: Sequence[str]) -> bool:
    return any(os.path.commonpath([real, root]) == root for root in roots)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # through a symlink too: where it leads is checked before listing
    except OSError:
        return False


def _mtime(st: os.stat_result) -> datetime:
    ns = st.st_mtime_ns
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=ns // 1000 % 1_000_000
    )


class _LocalFile:
    """An open local file: its bytes, and ``stat`` from the handle."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.read = stream.read

    def stat(self) -> tuple[int, datetime]:
        st = os.fstat(self._stream.fileno())
        return st.st_size, _mtime(st)


class LocalSource:
    """Files on this machine matched by globs; they are always kept after import.

    A glob is matched by walking down from its fixed prefix (the folders before the first
    component with ``*``, ``?`` or ``[``), which must lie inside a root; every folder is checked
    before it is listed, so nothing outside the roots is ever listed, even through a symlink."""

    key = "local"

    def __init__(self, patterns: Sequence[str], *, base_dir: Path, roots: Sequence[Path]) -> None:
        self.base = os.path.abspath(base_dir)
        self._patterns = tuple(patterns)
        self._roots = tuple(os.path.realpath(root) for root in roots)
        # The roots as written too: a root given through a symlink is inside itself.
        self._named_roots = (*self._roots, *(os.path.abspath(root) for root in roots))

    def _refuse(self, shown: str) -> SourceError:
        roots = os.pathsep.join(self._roots) or "none"
        return SourceError(
            f"{shown} is outside the local roots ({roots}); "
            f"add its folder to {_ROOTS_SETTING} to allow imports from it"
        )

    def _confined(self, path: str) -> str:
        """The real path of ``path``; ``SourceError`` unless it lies inside a local root."""
        real = os.path.realpath(path)
        if not _inside(real, self._roots):
            raise self._refuse(path if real == path else f"{path} (really {real})")
        return real

    def _listed(
        self, folder: str, ancestors: frozenset[str]
    ) -> tuple[frozenset[str], list[os.DirEntry[str]]]:
        """The entries of ``folder`` once its real path is known to lie inside a root (none if
        it is not a readable folder, or is among the real ``ancestors``: a symlink loop), and
        the ancestors of those entries."""
        real = self._confined(folder)
        if real in ancestors:
            return ancestors, []
        try:
            with os.scandir(folder) as entries:
                return ancestors | {real}, list(entries)
        except OSError:
            return ancestors, []  # as glob does: a missing or unreadable folder matches nothing

    def _walk(
        self, folder: str, parts: tuple[str, ...], ancestors: frozenset[str]
    ) -> Iterator[str]:
        """The paths below ``folder`` matching the glob components ``parts`` as ``glob.glob(...,
        recursive=True)`` finds them: '*' skips hidden names, '**' is any number of folders."""
        if not parts:
            if os.path.lexists(folder):
                yield folder
            return
        part, rest = parts[0], parts[1:]
        if not _MAGIC.search(part):
            yield from self._walk(os.path.join(folder, part), rest, ancestors)
            return
        below, entries = self._listed(folder, ancestors)
        if part == "**":
            yield from self._walk(folder, rest, ancestors)  # '**' as no folder at all
        for entry in entries:
            if entry.name.startswith(".") and not part.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            if part == "**":
                if _is_dir(entry):
                    yield from self._walk(path, parts, below)
                elif not rest:
                    yield path
            elif fnmatchcase(entry.name, part):
                if not rest:
                    yield path
                elif _is_dir(entry):
                    yield from self._walk(path, rest, below)

    def matches(self, pattern: str) -> list[str]:
        """The paths ``pattern`` matches, never looking outside the roots: ``SourceError`` if
        its fixed part lies outside them (saying nothing of what exists there), or if it is a
        plain path to nothing."""
        full = os.path.normpath(os.path.join(self.base, pattern))
        parts = full.split(os.sep)
        fixed = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), len(parts))
        prefix = os.sep.join(parts[:fixed]) or os.sep
        if not _inside(prefix, self._named_roots):
            raise self._refuse(full)  # decided on the text alone: nothing there is looked at
        self._confined(prefix)  # a symlink inside a root may lead out of it
        if fixed == len(parts):
            if not os.path.lexists(full):
                raise SourceError(f"{full}: no such file (local_files entry {pattern!r})")
            return [full]
        return list(self._walk(prefix, tuple(parts[fixed:]), frozenset()))

    def list_files(self) -> list[SourceFile]:
        """Every regular file the patterns match, once, sorted by name then path."""
        files: dict[str, SourceFile] = {}
        for pattern in self._patterns:
            for path in self.matches(pattern):
                real = self._confined(path)
                try:
                    st = os.stat(real)
                except OSError as exc:
                    raise SourceError(f"{path}: {exc.strerror or exc}") from exc
                if not stat.S_ISREG(st.st_mode):
                    if path == os.path.normpath(os.path.join(self.base, pattern)):
                        raise SourceError(f"{path} is not a regular file")
                    continue  # a glob that also matches folders: take the files only
                files.setdefault(
                    real, SourceFile(path, os.path.basename(path), st.st_size, _mtime(st))
                )
        return sorted(files.values(), key=lambda f: (f.name, f.path))

    @contextmanager
    def _open(self, f: SourceFile) -> Iterator[Opened]:
        real = self._confined(f.path)  # again: a symlink may have changed since the listing
        try:
            # Non-blocking: a FIFO swapped in since the listing would block a plain open forever.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError(f"cannot open {f.path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(
                    f"{f.path} is no longer a regular file (a FIFO, device or folder was put "
                    "there after it was listed); it is not read"
                )
            os.set_blocking(fd, True)
            stream = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with stream:
            yield _LocalFile(stream)

    def open(self, f: SourceFile) -> AbstractContextManager[Opened]:
        """``f`` opened for reading in binary mode, after checking its real path again."""
        return self._open(f)

    def modified(self, path: str) -> datetime | None:
        """When ``path`` (inside the roots) was last modified; None if it does not exist."""
        try:
            return _mtime(os.stat(self._confined(path)))
        except (SourceError, OSError):
            return None

    def finish(self, f: SourceFile) -> str | None:
        """Nothing: reconcile never deletes or moves local files."""
        return None

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_source(patterns: Sequence[str], *, base_dir: Path, roots: Sequence[Path]) -> Source:
    """Local files matching ``patterns`` (globs relative to ``base_dir``), inside ``roots``."""
    return LocalSource(patterns, base_dir=base_dir, roots=roots)


@implementation_for(LocalFiles)
def _open_local(spec: LocalFiles, settings: Settings) -> Source:
    local = LocalSource(spec.patterns, base_dir=settings.schedules_dir, roots=settings.local_roots)
    _warn_unmatched(spec, local)
    return local


def _warn_unmatched(spec: LocalFiles, local: LocalSource) -> None:
    """Log each glob that matches nothing, resolved: a run that reads no file is never silent.

    Matching never looks outside the roots; a refused pattern is reported by the listing instead.
    """
    for pattern in spec.patterns:
        full = os.path.normpath(os.path.join(local.base, pattern))
        if glob.escape(full) == full:
            continue  # a plain path: the listing reports a missing one as an error
        try:
            found = local.matches(pattern)
        except SourceError:
            continue
        if not found:
            _log.warning(
                "local_files pattern matches no file",
                schedule=spec.schedule,
                pattern=full,
                stored=pattern,
                declared_in=spec.declared_in,
            )
