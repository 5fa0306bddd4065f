"""Which listed files a run takes, and in which order: pure decisions over listings.

``imports.runs.transferring`` lists a source, asks the ledger what it knows, then asks this module
which files are complete (``waiting``: settled by age, or marked ready by a marker file), drops the
markers themselves from the listing (``without_markers``), orders the rest (``ordered``), and
after each file's COPY asks whether an empty file may stand (``empty_refusal``) and whether an
append would load a grown file again in full (``growth_refusal``). No clock, no I/O: ``now`` and
what exists are passed in.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from reconciler.model.files import SourceFile
from reconciler.model.specs import Delivery

__all__ = [
    "empty_refusal",
    "growth_refusal",
    "marker_path",
    "ordered",
    "waiting",
    "without_markers",
]


def marker_path(f: SourceFile, marker: str) -> str:
    """The path of ``f``'s ready marker: ``marker`` with ``{name}`` as ``f``'s name, beside it."""
    folder = f.path[: len(f.path) - len(f.name)]
    return folder + marker.replace("{name}", f.name)


def without_markers(files: Sequence[SourceFile], delivery: Delivery) -> list[SourceFile]:
    """``files`` less the ready markers of the others (a pattern such as ``*`` lists them too)."""
    if delivery.ready_marker is None:
        return list(files)
    markers = {marker_path(f, delivery.ready_marker) for f in files}
    return [f for f in files if f.path not in markers]


def waiting(
    f: SourceFile,
    delivery: Delivery,
    *,
    now: datetime,
    modified: Callable[[str], datetime | None],
    settle: int,
) -> str | None:
    """Why ``f`` is not taken yet (a later run takes it), or None when it is complete.

    With a ready marker, the marker decides: it must exist and be no older than the file (a
    marker left from an earlier delivery does not vouch for a file written since). Otherwise
    the file must not have changed for the project's ``settle`` seconds (``settle`` when it
    gives none). A modification time in the future (the server's clock runs ahead) waits.
    """
    settle = settle if delivery.settle is None else delivery.settle
    if delivery.ready_marker is not None:
        marker = marker_path(f, delivery.ready_marker)
        name = posixpath.basename(marker)
        marked = modified(marker)
        if marked is None:
            return f"waiting for its ready marker {name}"
        if marked < f.mtime:
            return f"waiting for its ready marker {name} to be written again (it is older)"
        return None
    age = (now - f.mtime).total_seconds()
    if age >= settle:
        return None
    return (
        f"not settled: modified {max(age, 0):.0f} s ago, taken once unchanged for {settle} s "
        "(delivery.settle)"
    )


def ordered(files: Iterable[SourceFile], delivery: Delivery) -> list[SourceFile]:
    """The order a run commits ``files`` in: by name, or by modification time (then name)."""
    if delivery.order == "mtime":
        return sorted(files, key=lambda f: (f.mtime, f.name, f.path))
    return sorted(files, key=lambda f: (f.name, f.path))


def empty_refusal(
    *, rows: int, header_expected: bool, header_seen: bool, replace: bool, delivery: Delivery
) -> str | None:
    """Why a file that loaded ``rows`` rows must fail, or None.

    A file with no header where one is expected is malformed in every mode. A file with no rows
    would empty the table in a replace: refused unless ``allow_empty`` says it is meant.
    """
    if header_expected and not header_seen:
        return "empty file, a header was expected (csv.header is true)"
    if rows or not replace or delivery.allow_empty:
        return None
    what = "holds only its header" if header_seen else "is empty"
    return (
        f"the file {what}: a replace would empty the table; the table is kept (set "
        "delivery.allow_empty: true if an empty delivery is meant)"
    )


def growth_refusal(
    size: int, before: Sequence[tuple[int, bytes]], prefixes: dict[int, bytes]
) -> str | None:
    """In append mode: why a file must not load, when an earlier version of its path was
    imported and the file now merely extends it (its first ``size`` bytes are that version).

    ``before`` are the ``(size, digest)`` of the versions imported from this path; ``prefixes``
    the digests of this file's first ``n`` bytes, for each such smaller ``n``.
    """
    for old_size, digest in sorted(before, reverse=True):
        if old_size < size and prefixes.get(old_size) == digest:
            return (
                f"the file grew since it was imported (imported before with {old_size} bytes, "
                f"now {size}): loading it again would append its first rows twice; deliver new "
                "rows in a new file, or run `reconcile forget` on it to load it again in full"
            )
    return None
