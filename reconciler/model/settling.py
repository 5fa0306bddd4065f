"""When the daemon may act on what it read from the folder: the settle. Pure.

Editors and copies leave a folder half-written for a moment: vim renames ``a.yaml`` to
``a.yaml~`` before it writes the new ``a.yaml``, a writer truncates a file and then fills it, a
folder is re-created file by file. Applied at such a moment, the plan would delete schedules and
create them again, losing their ids, anchors and run statistics. So ``daemon.leading`` reads the
folder on every change and asks ``settle`` what to do with each read:

- A read counts once the folder has read the same (``digest``) for ``SETTLE_SECONDS`` with no
  change reported in between: a parse error is not reported, nor anything applied, before then.
- A plan that deletes, or a folder that is missing, unreadable or declares nothing, waits longer:
  until the folder has read the same for the delete settle. At that time the folder is read and
  planned again, so the delete is applied only if it is still asked for.
- Otherwise: apply now.

The leader passes the clock's reading in (``now``, ``changed_at``), so tests drive it with any
times they like.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SETTLE_SECONDS", "Read", "digest", "observe", "settle"]

SETTLE_SECONDS = 1.0  # an editor's save or a checkout is over well within this


@dataclass(frozen=True, slots=True)
class Read:
    """The folder as last read: a digest of what it held, and since when it has read so."""

    digest: str
    since: float


def digest(files: Sequence[tuple[str, bytes]] | str) -> str:
    """A digest of every file's path and bytes, or of the reason the folder could not be read."""
    h = hashlib.sha256()
    if isinstance(files, str):
        h.update(b"unreadable\0" + files.encode())
        return h.hexdigest()
    for path, data in files:
        h.update(b"%d:%s\0%d:" % (len(path.encode()), path.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


def observe(last: Read | None, read: str, *, now: float, changed_at: float) -> Read:
    """The new ``Read`` after reading ``read`` at ``now``; the last change was reported at
    ``changed_at``. A change reported after the last read restarts the count even when the
    folder reads as before (it may have changed and changed back in between)."""
    if last is None or last.digest != read:
        return Read(read, now)
    return Read(read, max(last.since, min(changed_at, now)))


def settle(
    read: Read, *, now: float, deletes: bool, settle_seconds: float, delete_seconds: float
) -> float | None:
    """``None`` to act on ``read`` now; else the time to read the folder again (and plan it
    again) before acting. ``deletes``: the plan deletes something, or the folder is missing,
    unreadable or empty."""
    wait = max(settle_seconds, delete_seconds) if deletes else settle_seconds
    due = read.since + wait
    return None if now >= due else due
