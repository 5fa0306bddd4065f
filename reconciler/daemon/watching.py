"""File-system events on the schedules folder, through watchfiles: any change asks for a reload.

``daemon.leading`` runs one ``Watcher`` while its replica leads. Changes are debounced (a
``git pull`` or a kubelet ConfigMap update arrives as a burst) and never inspected: any change
reloads the whole folder, so the kubelet's swap of the ``..data`` symlink counts like an edit.
A mount where inotify says nothing (some network file systems) is covered by the leader's
periodic resync; a folder that cannot be watched is retried on the same period.
"""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler.logs import get_logger

__all__ = ["Watcher"]

_log = get_logger("reconciler.daemon")
_STEP_MS = 100  # quiet time that ends a burst
_DEBOUNCE_MS = 1000  # the longest a burst is grouped before it is reported anyway


class Watcher:
    """A thread that sets ``changed`` whenever something under ``folder`` changes."""

    def __init__(self, folder: Path, changed: threading.Event, *, retry_seconds: float) -> None:
        self._folder, self._changed, self._retry = folder, changed, retry_seconds
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
            try:
                for changes in watch(
                    self._folder, watch_filter=None, debounce=_DEBOUNCE_MS, step=_STEP_MS,
                    stop_event=self._stop, raise_interrupt=False, ignore_permission_denied=True,
                ):  # fmt: skip
                    _log.debug("folder changed", changes=len(changes))
                    self._changed.set()
            except (OSError, RuntimeError) as exc:  # missing folder, inotify limits, ...
                _log.warning(
                    "cannot watch the schedules folder; the periodic resync picks up changes",
                    folder=str(self._folder), error=str(exc), retry_in=self._retry,
                )  # fmt: skip
                self._stop.wait(self._retry)
