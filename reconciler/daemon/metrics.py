"""The daemon's Prometheus metrics and the readiness it reports, in one object per process.

``serving`` creates one ``Metrics`` and hands it to every part; ``http`` renders it at
``/metrics`` (Prometheus text, through ``prometheus-client``) and asks it for ``/readyz``. Each
instance has a registry of its own, so tests can run several daemons in one process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "Readiness"]

_DURATIONS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
_LATENESS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300)


@dataclass
class Readiness:
    """What ``/readyz`` checks; each part sets its own flag."""

    database: bool = False
    scheduler: bool = False
    config_known: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def problems(self) -> list[str]:
        """What keeps the daemon from being ready, empty when it is."""
        with self._lock:
            return [
                text
                for ok, text in (
                    (self.database, "the management database is not reachable"),
                    (self.scheduler, "the scheduler has not loaded the schedules yet"),
                    (self.config_known, "no configuration has been loaded from the folder yet"),
                )
                if not ok
            ]

    def set(self, **flags: bool) -> None:
        with self._lock:
            for name, value in flags.items():
                setattr(self, name, value)


class Metrics:
    """Every metric the daemon exports, named ``reconcile_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.readiness = Readiness()
        self.leading = False  # set by daemon.leading; followers take config_ok from the leader
        self._armed: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        self.runs = Counter(
            "reconcile_runs", "Runs by schedule and result", ["schedule", "result"], registry=r
        )
        self.rows = Counter("reconcile_rows_imported", "Rows imported", ["schedule"], registry=r)
        self.bytes = Counter("reconcile_bytes_read", "Bytes read", ["schedule"], registry=r)
        self.duration = Histogram(
            "reconcile_run_duration_seconds", "Run durations", ["schedule"],
            buckets=_DURATIONS, registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "reconcile_last_success_timestamp_seconds", "When a run last succeeded",
            ["schedule"], registry=r,
        )  # fmt: skip
        self.next_run = Gauge(
            "reconcile_next_run_timestamp_seconds", "The next run armed", ["schedule"], registry=r
        )
        self.lateness = Histogram(
            "reconcile_occurrence_lateness_seconds",
            "From an occurrence's scheduled time to its job's start",
            buckets=_LATENESS, registry=r,
        )  # fmt: skip
        self.passes = Counter(
            "reconcile_reconcile_passes", "Folder loads by result", ["result"], registry=r
        )
        self.config_ok = Gauge(
            "reconcile_config_load_ok", "1 if the last folder load applied, else 0", registry=r
        )
        self.leader = Gauge(
            "reconcile_leader", "1 while this replica watches and applies", registry=r
        )
        self.database_up = Gauge(
            "reconcile_database_up", "1 while the management database answers", registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def armed(self, schedule: str, at: datetime | None) -> None:
        """The timer is set for ``schedule`` at ``at`` (``None``: it never fires again)."""
        if at is None:
            self.disarmed(schedule)
            return
        with self._lock:
            self.next_run.labels(schedule).set(at.timestamp())
            self._armed.add(schedule)

    def disarmed(self, schedule: str) -> None:
        """``schedule`` is no longer on the timer (deleted or disabled)."""
        with self._lock:
            if schedule in self._armed:
                self._armed.discard(schedule)
                self.next_run.remove(schedule)
