"""File-system events on the schedules folder, through watchfiles: any change asks for a reload.

``daemon.leading`` runs one ``Watcher`` while its replica leads. Changes are debounced (a
``git pull`` or a kubelet ConfigMap update arrives as a burst) and never inspected: any change
reloads the whole folder, so the kubelet's swap of the ``..data`` symlink counts like an edit.
``changed_at`` says when a change was last reported: the leader lets the folder settle after it
(``model.settling``).
A mount where inotify says nothing (some network file systems) is covered by the leader's
periodic resync. A folder that is deleted or replaced (``mv new schedules.d``) is noticed within a
second and the new one watched; one that cannot be watched is retried each second until it
exists, and at least on the resync period.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from reconciler.logs import get_logger

__all__ = ["Watcher"]

_log = get_logger("reconciler.daemon")
_STEP_MS = 100  # quiet time that ends a burst
_DEBOUNCE_MS = 1000  # the longest a burst is grouped before it is reported anyway
_CHECK_MS = 1000  # how often the folder itself is checked: deleted, or replaced by a rename


class Watcher:
    """A thread that sets ``changed`` whenever something under ``folder`` changes, and notes
    when in ``changed_at`` (``time.monotonic``)."""

    def __init__(self, folder: Path, changed: threading.Event, *, retry_seconds: float) -> None:
        self._folder, self._changed, self._retry = folder, changed, retry_seconds
        self.changed_at = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        from watchfiles import watch

        while not self._stop.is_set():
            identity = _identity(self._folder)
            try:
                for changes in watch(
                    self._folder, watch_filter=None, debounce=_DEBOUNCE_MS, step=_STEP_MS,
                    stop_event=self._stop, raise_interrupt=False, ignore_permission_denied=True,
                    rust_timeout=_CHECK_MS, yield_on_timeout=True,
                ):  # fmt: skip
                    if changes:
                        _log.debug("folder changed", changes=len(changes))
                        self._report()
                    if _identity(self._folder) != identity:  # deleted, or swapped for another
                        _log.info("the schedules folder was replaced; watching the new one")
                        self._report()
                        break
            except (OSError, RuntimeError) as exc:  # missing folder, inotify limits, ...
                _log.warning(
                    "cannot watch the schedules folder; the periodic resync picks up changes",
                    folder=str(self._folder), error=str(exc), retry_in=self._retry,
                )  # fmt: skip
                self._wait_for_folder()

    def _wait_for_folder(self) -> None:
        """Until the folder exists again (checked every second) or the resync period ends."""
        deadline = time.monotonic() + self._retry
        while not self._stop.wait(_CHECK_MS / 1000) and time.monotonic() < deadline:
            if _identity(self._folder) is not None:
                self._report()
                return

    def _report(self) -> None:
        self.changed_at = time.monotonic()  # first: the leader woken below must see it
        self._changed.set()


def _identity(folder: Path) -> tuple[int, int] | None:
    """The folder's device and inode (symlinks followed); ``None`` when it is missing."""
    try:
        info = folder.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
