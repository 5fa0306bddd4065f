"""The daemon's Prometheus metrics and the readiness it reports, in one object per process.

``serving`` creates one ``Metrics`` and hands it to every part; ``http`` renders it at
``/metrics`` (Prometheus text, through ``prometheus-client``) and asks it for ``/readyz``. Each
instance has a registry of its own, so tests can run several daemons in one process.

Cardinality stays flat: counters and histograms carry no schedule label, and every label value
they have is known up front and exported at 0 from the start (``increase()`` then sees a
replica's first failure). What is per schedule is a few gauges read from the database at each
scrape (``collecting``), so every replica exports the same values. The process' memory, CPU and
open files come from prometheus-client's ``ProcessCollector`` (Linux), on the same registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from reconciler.daemon.collecting import ScheduleCollector
from reconciler.model.results import JobStatus

__all__ = ["RESULTS", "TRIGGERS", "Metrics", "Readiness"]

TRIGGERS = ("schedule", "manual")
# How a run counted here ended (``abandoned`` is recorded by whichever replica finds the dead
# run; the schedule's ``reconcile_last_run_status`` shows it).
RESULTS = tuple(s for s in get_args(JobStatus) if s not in ("running", "abandoned"))

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
    """Every metric the daemon exports, named ``reconcile_*``, plus the process' ``process_*``."""

    def __init__(self) -> None:
        self.readiness = Readiness()
        self.leading = False  # set by daemon.leading; followers take config_ok from the leader
        # Everything but the schedules' gauges, which render themselves (``collecting``);
        # ``registry`` holds both, for whoever collects the families.
        self._fixed = r = CollectorRegistry()
        self._schedules = ScheduleCollector()  # without a database until ``watch_schedules``
        self.registry = CollectorRegistry()
        self.registry.register(self._fixed)
        self.registry.register(self._schedules)
        ProcessCollector(registry=r)  # process_*: a no-op where /proc is missing
        self.runs = Counter(
            "reconcile_runs", "Runs by trigger and result", ["trigger", "result"], registry=r
        )
        for trigger in TRIGGERS:
            for result in RESULTS:
                if (trigger, result) != ("manual", "missed"):  # only an occurrence is missed
                    self.runs.labels(trigger, result)
        self.rows = Counter("reconcile_rows_imported", "Rows imported", registry=r)
        self.bytes = Counter("reconcile_bytes_read", "Bytes read", registry=r)
        self.duration = Histogram(
            "reconcile_run_duration_seconds", "Durations of runs that succeeded or failed",
            buckets=_DURATIONS, registry=r,
        )  # fmt: skip
        self.lateness = Histogram(
            "reconcile_occurrence_lateness_seconds",
            "From an occurrence's scheduled time to its job's start",
            buckets=_LATENESS, registry=r,
        )  # fmt: skip
        self.passes = Counter(
            "reconcile_reconcile_passes", "Folder loads by result", ["result"], registry=r
        )
        for result in ("succeeded", "failed"):
            self.passes.labels(result)
        self.config_ok = Gauge(
            "reconcile_config_load_ok", "1 if the last folder load applied, else 0", registry=r
        )
        self.leader = Gauge(
            "reconcile_leader", "1 while this replica watches and applies", registry=r
        )
        self.database_up = Gauge(
            "reconcile_database_up", "1 while the management database answers", registry=r
        )
        self.slots = Gauge("reconcile_run_slots", "Runs this replica runs at once", registry=r)
        self.slots_busy = Gauge(
            "reconcile_run_slots_busy", "Run slots running a run now", registry=r
        )
        self.queued = Gauge("reconcile_runs_queued", "Runs waiting for a free run slot", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._fixed) + self._schedules.exposition()

    def watch_schedules(self, *, url: str, owner: str) -> None:
        """Export ``owner``'s schedules from the database at ``url`` from the next scrape on."""
        old, self._schedules = self._schedules, ScheduleCollector(url, owner)
        self.registry.unregister(old)
        self.registry.register(self._schedules)
        old.close()

    def close(self) -> None:
        """Close the session the schedules' gauges are read over."""
        self._schedules.close()

    def run_pool(self, slots: int, *, busy: Callable[[], int], queued: Callable[[], int]) -> None:
        """The run pool's size, and how to count its busy slots and queued runs at a scrape."""
        self.slots.set(slots)
        self.slots_busy.set_function(busy)
        self.queued.set_function(queued)
