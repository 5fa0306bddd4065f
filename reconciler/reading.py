"""Reading the schedules folder from disk: the thin shell around ``model.loading``.

``reconcile validate`` and ``reconcile next`` call ``load_folder``; the plan and apply commands
call ``load_desired`` for the rows the folder asks for; the daemon's leader reads the bytes itself
(``read_folder``), to see whether they have settled, and takes its rows from them
(``desired_from``). It finds every ``*.yaml``/``*.yml`` file under the folder, recursively and in a
stable order, and hands the bytes to the pure loader. Names beginning with ``.`` are skipped, files
and folders alike: Kubernetes mounts a ConfigMap as visible symlinks into a hidden ``..data``
folder (itself a symlink to a ``..2024_01_01_...`` folder), so following visible symlinks and
skipping hidden names reads each file exactly once. A folder reached twice (a symlink loop, or two
links to one folder) is read only the first time. A file larger than ``MAX_FILE_BYTES`` is read
only far enough to know it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from reconciler.errors import GuardRefused, UsageError
from reconciler.model.loading import MAX_FILE_BYTES, Loaded, load_files
from reconciler.model.plans import Desired, desired_rows

__all__ = ["SUFFIXES", "desired_from", "load_desired", "load_folder", "read_folder"]

SUFFIXES = (".yaml", ".yml")


def load_folder(folder: Path) -> Loaded:
    """Read and validate every document under ``folder``; findings name files under it."""
    return load_files(read_folder(folder), display_root=folder.as_posix())


def load_desired(folder: Path, *, owner: str) -> Desired:
    """The folder's rows, owned by ``owner``; a missing folder or any finding refuses the whole
    apply (``GuardRefused``, exit 3)."""
    try:
        files = read_folder(folder)
    except UsageError as exc:
        raise GuardRefused(f"{exc.message}; nothing was applied") from exc
    return desired_from(files, folder, owner=owner)


def desired_from(files: list[tuple[str, bytes]], folder: Path, *, owner: str) -> Desired:
    """The rows of files already read from ``folder`` (``read_folder``), as ``load_desired``
    returns them: the daemon plans exactly the bytes it has seen settle."""
    loaded = load_files(files, display_root=folder.as_posix())
    if not loaded.ok:
        findings = "\n".join(str(f) for f in loaded.findings)
        raise GuardRefused(
            f"{findings}\n{len(loaded.findings)} problem(s) in {folder}; nothing was applied "
            "(fix them, `reconcile validate` lists them)"
        )
    return Desired(desired_rows(loaded.documents, owner=owner))


def read_folder(folder: Path) -> list[tuple[str, bytes]]:
    """Every YAML file under ``folder`` as (relative posix path, bytes), sorted by path.

    Raises ``UsageError`` when the folder is missing, not a folder, or anything in it cannot be
    read: applying from a folder read only in part could delete what the unread part declares.
    """
    try:
        info = folder.stat()
    except FileNotFoundError:
        raise UsageError(
            f"schedules folder {folder} does not exist: create it, or name another with "
            "--dir or RECONCILER_SCHEDULES_DIR"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read schedules folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"schedules folder {folder} is not a folder")
    files: list[tuple[str, bytes]] = []
    seen = {(info.st_dev, info.st_ino)}
    pending: list[tuple[Path, str]] = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        for entry in _entries(directory):
            relative = prefix + entry.name
            if _is_dir(entry):
                identity = _identity(entry)
                if identity not in seen:
                    seen.add(identity)
                    pending.append((Path(entry.path), relative + "/"))
            elif entry.name.endswith(SUFFIXES):
                files.append((relative, _read(entry)))
    files.sort(key=lambda item: item[0])
    return files


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            return sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise UsageError(f"cannot read folder {directory}: {exc.strerror}") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError as exc:
        raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from None


def _identity(entry: os.DirEntry[str]) -> tuple[int, int]:
    try:
        info = entry.stat()  # follows symlinks: the folder itself, however it was reached
    except OSError as exc:
        raise UsageError(f"cannot read folder {entry.path}: {exc.strerror}") from None
    return info.st_dev, info.st_ino


def _read(entry: os.DirEntry[str]) -> bytes:
    """At most one byte more than the limit, so the loader can tell an oversized file."""
    try:
        if not stat.S_ISREG(entry.stat().st_mode):  # a FIFO would block the open below
            raise UsageError(f"{entry.path} is not a regular file")
        with open(entry.path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        what = "is a broken symbolic link" if entry.is_symlink() else "disappeared while reading"
        raise UsageError(f"{entry.path} {what}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from None
